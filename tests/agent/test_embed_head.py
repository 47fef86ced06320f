"""The actor head through the base model's output embedding (agent.head = "embed")."""

from __future__ import annotations

import pytest
import torch

from klbudget.agent.actors import make_actor
from klbudget.agent.policy import Actor, observation
from klbudget.agent.rollout import run_episode
from klbudget.agent.trainer import Trainer
from klbudget.config import from_dict
from klbudget.envs.wrappers import PlantedTokenReward
from tests.envs.test_chat_env import SHORT, beta_agent_tokens, make_env, rare_token


def test_embed_head_is_the_output_layer_of_a_small_map(tiny_model):
    env = make_env(tiny_model, n=2, length=30)
    base = env.base
    d, a = base.feature_dim + 2, base.num_actions
    actor = make_actor(d, base, "embed")
    assert actor.head == "embed" and make_actor(d, base, "full").head == "full"
    emb = base.output_embedding()
    width = emb.shape[1]
    n_embed = sum(p.numel() for p in actor.parameters())
    n_full = sum(p.numel() for p in Actor(d, a).parameters())
    assert n_embed == d * width + a + d + 1  # proj, per-action bias, the scalar head s
    assert n_embed < n_full / 3
    assert "out_embed" not in actor.state_dict()  # the base's own weights are not saved
    obs, _ = env.reset(seed=0)
    o = observation(obs["features"], obs["position"], torch.full((2,), 5.0), 5.0)
    assert torch.equal(actor.logits(o), torch.zeros(2, a))  # a fresh agent proposes β
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        actor.proj.weight.normal_(0, 0.1, generator=g)
        actor.z_bias.normal_(0, 0.1, generator=g)
    want = o @ actor.proj.weight.T @ emb.T + actor.z_bias
    torch.testing.assert_close(actor.logits(o), want)


def test_embed_head_needs_an_output_embedding():
    class NoEmbedding:
        num_actions = 10

    with pytest.raises(ValueError, match="no output embedding"):
        make_actor(4, NoEmbedding(), "embed")
    with pytest.raises(ValueError, match="unknown actor head"):
        make_actor(4, NoEmbedding(), "wide")


def test_embed_head_learns_a_planted_token_within_budget(fitted_tiny_model, tmp_path):
    torch.set_num_threads(1)
    env = make_env(fitted_tiny_model, n=16, length=60)

    def agent_ids(episode) -> list[int]:
        return [t["id"] for r in episode.records for t in r["tokens"] if t["speaker"] == "agent"]

    counts = beta_agent_tokens(env)
    n = sum(counts.values())
    target = rare_token(counts)
    budget = 8.0
    cfg = from_dict({
        "agent": {"head": "embed"},
        "budget": {"total": budget, "mode": "expected", "ramp_fraction": 0.0},
        "ppo": {"actor_lr": 0.03, "critic_lr": 1e-2, "adam_eps": 1e-4, "clip": 0.2,
                "tokens_per_update": 768, "minibatch": 256, "epochs": 4, "max_grad_norm": 1.0},
        "train": {"total_agent_steps": 5000, "seed": 0},
    }).validate()  # fmt: skip
    trainer = Trainer(cfg, tmp_path / "embed", env=PlantedTokenReward(env, target, bonus=1.0),
                      progress=False)  # fmt: skip
    assert trainer.actor.head == "embed"
    trainer.learn()
    g = torch.Generator().manual_seed(123)
    ids, kl_max = [], 0.0
    for s in range(3):
        ep = run_episode(env, trainer.actor, trainer.critic, budget=budget, mode="expected",
                         budget_scale=budget, generator=g, seed=1000 + s)  # fmt: skip
        ids += agent_ids(ep)
        kl_max = max(kl_max, ep.kl.max().item())
    rate = sum(i == target for i in ids) / len(ids)
    assert rate > 3 * counts[target] / n, (rate, counts[target] / n)  # learning happened
    assert kl_max <= budget + 1e-4  # and the budget held


def test_embed_head_run_resumes_and_evaluates(tiny_model, tmp_path):
    from klbudget.pipelines.evaluate import evaluate_run, load_agent

    torch.set_num_threads(1)
    cfg = from_dict({
        "model": {"path": str(tiny_model)},
        "env": {"prompt": SHORT.prompt, "n_envs": 4, "length": 40},
        "agent": {"head": "embed", "critic_hidden": 16},
        "budget": {"total": 3.0, "mode": "expected", "ramp_fraction": 0.0},
        "ppo": {"tokens_per_update": 64, "minibatch": 32, "epochs": 2, "actor_lr": 0.05},
        "train": {"total_agent_steps": 128, "seed": 3},
    }).validate()  # fmt: skip
    run = tmp_path / "run"
    trainer = Trainer(cfg, run, progress=False)
    trainer.learn()
    actor, _ = load_agent(run, cfg, trainer.env.base)
    assert actor.head == "embed"
    for key, val in trainer.actor.state_dict().items():
        assert torch.equal(actor.state_dict()[key], val)
    torch.testing.assert_close(actor.out_embed, trainer.env.base.output_embedding())
    result = evaluate_run(run, episodes=4, lengths=[40], progress=False)
    kl = result["eval"]["agent_L40"]["kl_to_base"]
    assert kl["exact"]["mean"] > 0.0 and kl["exact_max"] <= 3.0 + 1e-4


def test_embed_head_gives_help_its_own_logit():
    emb = torch.randn(7, 3)
    actor = Actor(5, 8, out_embed=emb)  # 7 tokens + help
    o = torch.randn(4, 5)
    assert actor.logits(o).shape == (4, 8) and torch.equal(actor.logits(o), torch.zeros(4, 8))
    with torch.no_grad():
        actor.extra.bias.fill_(2.0)
    assert torch.equal(actor.logits(o)[:, 7], torch.full((4,), 2.0))
    with pytest.raises(ValueError, match="rows"):
        Actor(5, 6, out_embed=emb)
