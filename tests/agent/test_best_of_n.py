"""Best-of-n episodes of the base policy on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from klbudget.agent.best_of_n_episodes import best_of_n_episodes
from klbudget.core.best_of_n import kl_best_of_n, kl_bound
from klbudget.envs.wrappers import PlantedTokenReward
from tests.envs.test_chat_env import beta_agent_tokens, make_env


def test_best_of_n_keeps_the_best_beta_episode_of_each_group(fitted_tiny_model):
    torch.set_num_threads(1)
    env = make_env(fitted_tiny_model, n=4, length=40)
    # Reward the base's most common agent token, so that episode returns differ.
    common = beta_agent_tokens(env, seed=99).most_common(1)[0][0]
    planted = PlantedTokenReward(env, common, bonus=1.0)

    n, episodes = 4, 3
    out = best_of_n_episodes(planted, n, episodes, seed=11)
    assert len(out.records) == episodes and out.pool_returns.shape == (n * episodes,)
    assert len(set(out.pool_returns.tolist())) > 1  # the selection has something to choose
    groups = out.pool_returns.reshape(episodes, n)
    for j, rec in enumerate(out.records):
        assert rec["episode"] == j and rec["policy"] == "best_of_4"
        assert rec["return"] == groups[j].max()
        assert out.chosen[j] // n == j
        assert all(t["kl"] == 0.0 for t in rec["tokens"])  # β's own tokens
    assert out.kl == pytest.approx(kl_best_of_n(out.pool_returns, n))
    assert 0.0 < out.kl <= kl_bound(n) == out.kl_bound
    assert np.mean([r["return"] for r in out.records]) > out.pool_returns.mean()
    again = best_of_n_episodes(planted, n, episodes, seed=11)
    assert again.records == out.records  # reproducible from the seed
    smaller = best_of_n_episodes(planted, 2, 2, seed=11)  # the pool grows by extension
    assert np.array_equal(smaller.pool_returns, out.pool_returns[:4])
