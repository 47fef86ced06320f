"""Learning happened: reward a token the base rarely writes; more budget, more of it."""

from __future__ import annotations

import torch

from klbudget.agent.rollout import run_episode
from klbudget.agent.trainer import Trainer
from klbudget.config import from_dict
from klbudget.envs.wrappers import PlantedTokenReward
from tests.envs.test_chat_env import beta_agent_tokens, make_env, rare_token

N_ENVS, LENGTH = 16, 60


def agent_tokens(episode) -> list[int]:
    return [t["id"] for r in episode.records for t in r["tokens"] if t["speaker"] == "agent"]


def evaluate(env, actor, critic, budget, target):
    g = torch.Generator().manual_seed(123)
    ids, kl_max = [], 0.0
    for s in range(3):
        ep = run_episode(env, actor, critic, budget=budget, mode="expected",
                         budget_scale=10.0, generator=g, seed=1000 + s)  # fmt: skip
        ids += agent_tokens(ep)
        kl_max = max(kl_max, ep.kl.max().item())
    return sum(i == target for i in ids) / len(ids), kl_max


def test_planted_token_rate_rises_with_budget(fitted_tiny_model, tmp_path):
    torch.set_num_threads(1)  # small matrices: threads only add overhead
    env = make_env(fitted_tiny_model, n=N_ENVS, length=LENGTH)
    # Pick a token the base writes rarely (about 1% of its teacher tokens).
    target = rare_token(beta_agent_tokens(env))
    rates, spent = {}, {}
    for budget in (0.0, 2.0, 8.0):
        cfg = from_dict({
            "budget": {"total": budget, "mode": "expected", "ramp_fraction": 0.0},
            "ppo": {"actor_lr": 0.03, "critic_lr": 1e-2, "adam_eps": 1e-4, "clip": 0.2,
                    "tokens_per_update": 768, "minibatch": 256, "epochs": 4,
                    "max_grad_norm": 1.0},
            "train": {"total_agent_steps": 5000, "seed": 0},
        })  # fmt: skip
        planted = PlantedTokenReward(env, target, bonus=1.0)
        trainer = Trainer(cfg, tmp_path / f"b{budget}", env=planted, progress=False)
        before = trainer.actor.z.bias.detach().clone()
        trainer.learn()
        if budget > 0:
            assert not torch.equal(before, trainer.actor.z.bias), "the actor did not change"
        rates[budget], spent[budget] = evaluate(env, trainer.actor, trainer.critic, budget, target)
        assert spent[budget] <= budget + 1e-4
    assert rates[0.0] < 0.03
    assert rates[2.0] > 1.5 * rates[0.0], rates
    assert rates[8.0] > 1.3 * rates[2.0], rates
