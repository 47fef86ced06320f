"""The LoRA policy (agent.head = "lora"): the base LM itself with adapters, under the budget."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from klbudget.agent.actors import make_actor
from klbudget.agent.lora import LoraActor
from klbudget.agent.policy import Actor
from klbudget.agent.rollout import run_episode
from klbudget.agent.trainer import Trainer
from klbudget.config import from_dict
from klbudget.envs.wrappers import PlantedTokenReward
from tests.envs.test_chat_env import beta_agent_tokens, make_env, rare_token

pytest.importorskip("peft")


def _episode(env, actor, seed, budget=6.0):
    critic = torch.nn.Linear(env.base.feature_dim + 2, 1)
    g = torch.Generator().manual_seed(seed)
    return run_episode(env, actor, lambda o: critic(o).squeeze(-1), budget=budget,
                       mode="expected", budget_scale=budget, generator=g, seed=seed)  # fmt: skip


def _perturb(actor: LoraActor, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in actor.named_parameters():
            if p.requires_grad and "lora" in name:
                p.normal_(0, scale, generator=g)


def test_a_fresh_lora_agent_plays_what_a_fresh_head_plays(tiny_model):
    """Adapters start at zero: the proposal is β, so the episode is the zero head's, token
    for token, with the same KL spent."""
    env = make_env(tiny_model, n=4, length=60)
    d = env.base.feature_dim + 2
    lora = make_actor(d, env.base, "lora")
    assert isinstance(lora, LoraActor) and lora.head == "lora"
    head = Actor(d, env.base.num_actions)
    a, b = _episode(env, lora, 3), _episode(env, head, 3)
    ids = [[t["id"] for t in r["tokens"]] for r in a.records]
    assert ids == [[t["id"] for t in r["tokens"]] for r in b.records]
    torch.testing.assert_close(a.kl, b.kl, atol=1e-5, rtol=0)


def test_replayed_log_probs_equal_the_rollouts(tiny_model):
    """What the update recomputes teacher-forced over whole conversations is what the
    rollout played, step by step: PPO's first ratio is 1."""
    env = make_env(tiny_model, n=3, length=50)
    actor = make_actor(env.base.feature_dim + 2, env.base, "lora")
    _perturb(actor)
    ep = _episode(env, actor, 11)
    batch = ep.batch
    assert batch.seq is not None and len(batch.seq.conv) == len(batch)
    every = torch.arange(len(batch))
    with torch.no_grad():
        log_a = actor.lm.logp_steps(batch.seq, every)
        played = actor(batch.obs, batch.base_logp[every], batch.budget_left, log_a=log_a)
    logp = played.log_x.gather(-1, batch.actions[:, None]).squeeze(-1)
    torch.testing.assert_close(logp, batch.logp_old, atol=2e-4, rtol=0)
    assert not torch.allclose(log_a, batch.base_logp[every], atol=1e-3)  # the adapters did move a


def test_lora_agent_learns_a_planted_token_within_budget(fitted_tiny_model, tmp_path):
    torch.set_num_threads(1)
    env = make_env(fitted_tiny_model, n=16, length=60)
    counts = beta_agent_tokens(env)
    target = rare_token(counts)
    budget = 8.0
    cfg = from_dict({
        "agent": {"head": "lora", "lora_rank": 4, "lora_alpha": 8.0},
        "budget": {"total": budget, "mode": "expected", "ramp_fraction": 0.0},
        "ppo": {"actor_lr": 0.01, "critic_lr": 1e-2, "adam_eps": 1e-4, "clip": 0.2,
                "tokens_per_update": 768, "minibatch": 256, "epochs": 4, "max_grad_norm": 1.0},
        "train": {"total_agent_steps": 8000, "seed": 0},
    }).validate()  # fmt: skip
    run = tmp_path / "lora"
    trainer = Trainer(cfg, run, env=PlantedTokenReward(env, target, bonus=1.0), progress=False)
    trainer.learn()
    ids, kl_max = [], 0.0
    for s in range(3):
        ep = _episode(env, trainer.actor, 1000 + s, budget)
        ids += [t["id"] for r in ep.records for t in r["tokens"] if t["speaker"] == "agent"]
        kl_max = max(kl_max, ep.kl.max().item())
    rate = sum(i == target for i in ids) / len(ids)
    base_rate = counts[target] / sum(counts.values())
    assert rate > 3 * base_rate, (rate, base_rate)  # learning happened
    assert kl_max <= budget + 1e-4  # and stayed within budget
    # The checkpoint holds the adapters and s, not the base model's weights.
    stem = json.loads((run / "checkpoints" / "latest.json").read_text())["checkpoint"]
    saved = load_file(str(run / "checkpoints" / f"{stem}.safetensors"))
    actor_keys = [k for k in saved if k.startswith("actor.")]
    assert actor_keys and all("lora" in k or k.startswith("actor.s.") for k in actor_keys)
    # and a second trainer resumes from it to the same adapters
    again = Trainer(cfg, run, env=PlantedTokenReward(env, target, bonus=1.0), progress=False,
                    resume=True)  # fmt: skip
    for (n1, p1), (n2, p2) in zip(trainer.actor.state_dict().items(),
                                  again.actor.state_dict().items(), strict=True):  # fmt: skip
        assert n1 == n2 and torch.equal(p1, p2)


def test_lora_needs_a_single_model_folder():
    class Ensemble:
        num_actions = 10

    with pytest.raises(ValueError, match="own model folder"):
        make_actor(4, Ensemble(), "lora")
