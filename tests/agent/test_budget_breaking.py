"""Try to break the KL budget with agents that want to spend as much as possible."""

from __future__ import annotations

import pytest
import torch

from klbudget.agent.policy import Actor, Critic, observation
from klbudget.agent.rollout import run_episode
from tests.envs.test_chat_env import make_env


def greedy_actor(obs_dim: int, num_actions: int, seed: int, scale: float) -> Actor:
    """Random large logits and a huge per-step target: spends as fast as it is allowed."""
    torch.manual_seed(seed)
    actor = Actor(obs_dim, num_actions)
    with torch.no_grad():
        actor.z.weight.normal_(0, scale)
        actor.z.bias.normal_(0, scale)
        actor.s.bias.fill_(30.0)
    return actor


def agent_budget_trace(record: dict, budget: float):
    """(budget before, kl, log_ratio) of each agent token."""
    before = budget
    out = []
    for tok in record["tokens"]:
        if tok["speaker"] == "agent":
            out.append((before, tok["kl"], tok["log_ratio"]))
            before = tok["budget_left"]
    return out


@pytest.mark.parametrize("mode", ["expected", "realized"])
def test_budget_cannot_be_broken(tiny_model, mode):
    env = make_env(tiny_model, n=8, length=70)
    obs_dim = env.base.feature_dim + 2
    critic = Critic(obs_dim, 16)
    g = torch.Generator().manual_seed(0)
    n_checked = 0
    exhausted = 0
    for seed, (budget, scale) in enumerate([(0.5, 3.0), (3.0, 10.0), (10.0, 30.0), (2.0, 1.0)]):
        actor = greedy_actor(obs_dim, env.base.num_actions, seed, scale)
        ep = run_episode(
            env, actor, critic, budget=budget, mode=mode, budget_scale=10.0, generator=g, seed=seed
        )
        for rec in ep.records:
            trace = agent_budget_trace(rec, budget)
            total_kl = sum(kl for _, kl, _ in trace)
            if mode == "expected":
                assert total_kl <= budget + 1e-4
            for before, kl, lr in trace:
                if before == 0.0:
                    exhausted += 1
                    assert kl <= 1e-6 and abs(lr) <= 1e-6
            n_checked += 1
        torch.testing.assert_close(
            ep.kl,
            torch.tensor(
                [sum(kl for _, kl, _ in agent_budget_trace(r, budget)) for r in ep.records]
            ),
        )
    assert n_checked == 32
    assert exhausted > 0, "the greedy agents never ran out of budget; the test proves nothing"


def test_zero_budget_plays_base_exactly(tiny_model):
    env = make_env(tiny_model, n=4, length=40)
    obs, _ = env.reset(seed=0)
    actor = greedy_actor(env.base.feature_dim + 2, env.base.num_actions, 0, 10.0)
    left = torch.zeros(4)
    o = observation(obs["features"], obs["position"], left, 10.0)
    played = actor(o, obs["base_logp"], left)
    assert torch.equal(played.log_x, obs["base_logp"])
    assert torch.equal(played.kl, torch.zeros(4))
