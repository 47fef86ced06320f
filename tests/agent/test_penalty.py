"""The KL-penalty agent: π = softmax(z + log β) with no budget, paying λ·est in its reward or
its loss; λ fixed or adapted; saved, resumed and evaluated like a budget agent."""

from __future__ import annotations

import json
import math

import pytest
import torch

from klbudget.agent.policy import Actor, Critic
from klbudget.agent.ppo import Batch, KLPenaltyLoss, ppo_update
from klbudget.agent.rollout import run_episode
from klbudget.agent.trainer import Trainer
from klbudget.config import PPOConfig, from_dict
from klbudget.core.kl import estimate, kl_exact
from klbudget.envs.wrappers import PlantedTokenReward
from tests.envs.test_chat_env import SHORT, beta_agent_tokens, make_env, rare_token


def random_actor(d: int, v: int, scale: float, mixture: bool = False, seed: int = 0) -> Actor:
    torch.manual_seed(seed)
    actor = Actor(d, v, mixture=mixture)
    with torch.no_grad():
        actor.z.weight.normal_(0.0, scale)
        actor.z.bias.normal_(0.0, scale)
        actor.s.bias.fill_(3.0)
    return actor


def test_penalty_actor_plays_the_proposal():
    m, d, v = 32, 6, 11
    actor = random_actor(d, v, 0.5)
    obs = torch.randn(m, d)
    base = torch.log_softmax(torch.randn(m, v), -1)
    played = actor(obs, base, torch.full((m,), math.inf))
    expected = torch.log_softmax(actor.z(obs) + base, -1)
    torch.testing.assert_close(played.log_x, expected)
    torch.testing.assert_close(played.kl, kl_exact(expected, base))
    assert torch.equal(played.k, torch.zeros(m)) and torch.equal(played.alpha, torch.ones(m))
    again = actor(obs, base, torch.zeros(m))  # the budget plays no part
    assert torch.equal(again.log_x, played.log_x)
    played.log_x.sum().backward()
    assert actor.s.weight.grad is None and actor.z.weight.grad is not None


def step_batch(actor: Actor, m: int = 64, d: int = 6, v: int = 12) -> Batch:
    obs = torch.randn(m, d)
    base = torch.log_softmax(torch.randn(m, v) * 2, -1)
    with torch.no_grad():
        played = actor(obs, base, torch.zeros(m))
    actions = torch.multinomial(played.log_x.exp(), 1).squeeze(-1)
    return Batch(
        obs=obs, base_logp=base, budget_left=torch.zeros(m), actions=actions,
        logp_old=played.log_x.gather(-1, actions[:, None]).squeeze(-1),
        values_old=torch.zeros(m), returns=torch.zeros(m),  # no advantage at all
    )  # fmt: skip


def exact_kl(actor: Actor, batch: Batch) -> float:
    with torch.no_grad():
        return actor(batch.obs, batch.base_logp, batch.budget_left).kl.mean().item()


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "exact"])
def test_loss_penalty_is_lambda_times_mean_estimate(estimator):
    actor = random_actor(6, 12, 0.4)
    batch = step_batch(actor)
    idx = torch.arange(0, 64, 2)
    played = actor(batch.obs[idx], batch.base_logp[idx], batch.budget_left[idx])
    a = batch.actions[idx, None]
    rho = (played.log_x.gather(-1, a) - batch.base_logp[idx].gather(-1, a)).squeeze(-1)
    loss = KLPenaltyLoss(estimator, 0.7)
    value = loss(played, batch, idx)
    torch.testing.assert_close(value, 0.7 * estimate(estimator, rho, played.kl).mean())
    assert loss.values == [pytest.approx(value.item() / 0.7)]


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "exact"])
def test_loss_penalty_pulls_the_policy_toward_base(estimator):
    """With no advantage, 8 steps on λ·mean(est) alone: k2, k3 and exact move π toward β;
    k1 (zero expected gradient at π_old, klbudget.core.kl.estimate) pushes it away."""
    torch.manual_seed(1)
    actor = random_actor(6, 12, 0.4, seed=1)
    critic = Critic(6, 8)
    batch = step_batch(actor)
    before = exact_kl(actor, batch)
    cfg = PPOConfig(epochs=8, minibatch=64, ent_coef=0.0, max_grad_norm=1e9)
    s_before = actor.s.bias.clone()
    stats = ppo_update(
        actor, critic, torch.optim.SGD(actor.parameters(), lr=1.0),
        torch.optim.SGD(critic.parameters(), lr=0.0), batch, cfg, kl_target_coef=1.0,
        generator=torch.Generator().manual_seed(0), extra_loss=KLPenaltyLoss(estimator, 1.0),
    )  # fmt: skip
    assert "losses/kl_target" not in stats  # no (KL − k)² term without a mixture
    assert torch.equal(actor.s.bias, s_before)  # the scalar head is unused
    after = exact_kl(actor, batch)
    if estimator == "k1":
        assert after > 1.2 * before, (before, after)
    else:
        assert after < 0.75 * before, (before, after)


def estimates_from_record(record: dict, estimator: str) -> list[float]:
    out = []
    for tok in record["tokens"]:
        if tok["speaker"] == "agent":
            rho = torch.tensor(tok["log_ratio"], dtype=torch.float64)
            out.append(float(estimate(estimator, rho, torch.tensor(tok["kl"]))))
    return out


def episode_player(tiny_model):
    """play(**kw): one episode of 3 short conversations with a fixed random actor and critic,
    the same seeds every call, `run_episode`'s keywords passed through."""
    env = make_env(tiny_model, n=3, length=40, max_reply_tokens=4)
    d, v = env.base.feature_dim + 2, env.base.num_actions
    actor, critic = random_actor(d, v, 0.05), Critic(d, 8)

    def play(**kw):
        g = torch.Generator().manual_seed(7)
        return run_episode(env, actor, critic, budget_scale=10.0, generator=g, seed=3, **kw)

    return play


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "exact"])
def test_reward_penalty_enters_the_returns_not_the_records(tiny_model, estimator):
    episode = episode_player(tiny_model)

    def play(coef: float):
        return episode(budget=math.inf, mode="realized", penalty_coef=coef, estimator=estimator)

    plain, paid = play(0.0), play(0.7)
    assert plain.records == paid.records  # the penalty changes no token and no record
    for rec in paid.records:
        assert rec["budget"] == math.inf
        assert all(t["budget_left"] == math.inf for t in rec["tokens"])  # nothing spent
    assert torch.equal(paid.batch.budget_left, torch.zeros(len(paid.batch)))  # observation
    torch.testing.assert_close(paid.penalty, 0.7 * paid.kl_estimate)
    assert torch.equal(plain.penalty, torch.zeros(3))
    # returns-to-go lose λ·Σ_{s ≥ t} est_s, conversation by conversation (rows, then time)
    suffix = []
    for rec in paid.records:
        est = estimates_from_record(rec, estimator)
        suffix += [sum(est[i:]) for i in range(len(est))]
    assert len(suffix) == len(paid.batch) > 0
    torch.testing.assert_close(
        plain.batch.returns - paid.batch.returns,
        0.7 * torch.tensor(suffix, dtype=torch.float32), rtol=1e-4, atol=1e-4,
    )  # fmt: skip
    if estimator != "k1":  # these are never negative, so the penalty only takes away
        assert (paid.batch.returns <= plain.batch.returns + 1e-6).all()


def test_gae_lambda_returns_use_the_rollout_critic(tiny_model):
    """ppo.gae_lambda < 1: the batch's returns are the λ-returns of the episode's rewards (here
    the KL penalty's, which every agent step carries) under the critic's values at the
    rollout, checked by hand conversation by conversation; λ = 1 leaves the Monte-Carlo
    returns, and no token or record changes."""
    episode = episode_player(tiny_model)

    def play(lam: float):
        return episode(budget=5.0, mode="expected", penalty_coef=0.7, gae_lambda=lam)

    mc, gae = play(1.0), play(0.8)
    assert mc.records == gae.records
    assert torch.equal(mc.batch.values_old, gae.batch.values_old)
    expect, start = [], 0
    for rec in gae.records:
        rewards = [-0.7 * e for e in estimates_from_record(rec, "k1")]
        n = len(rewards)
        pos = [i for i, tok in enumerate(rec["tokens"]) if tok["speaker"] == "agent"]
        for where, value in rec["rewards"]:
            rewards[max(k for k, p in enumerate(pos) if p <= where)] += value
        vals = gae.batch.values_old[start : start + n].tolist()
        g_next, v_next, out = 0.0, 0.0, []
        for k in range(n - 1, -1, -1):
            g_next = rewards[k] + 0.2 * v_next + 0.8 * g_next
            v_next = vals[k]
            out.append(g_next)
        expect += out[::-1]
        start += n
    assert start == len(gae.batch) > 0
    torch.testing.assert_close(gae.batch.returns, torch.tensor(expect), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(gae.batch.returns, mc.batch.returns)


def planted_runs(fitted_tiny_model, tmp_path, runs):
    torch.set_num_threads(1)
    env = make_env(fitted_tiny_model, n=16, length=60)
    target = rare_token(beta_agent_tokens(env), share=0.02)
    out = {}
    for name, penalty in runs.items():
        cfg = from_dict({
            "agent": {"kind": "penalty"},
            "penalty": penalty,
            "ppo": {"actor_lr": 0.005, "critic_lr": 1e-2, "adam_eps": 1e-4, "clip": 0.2,
                    "tokens_per_update": 768, "minibatch": 256, "epochs": 4,
                    "max_grad_norm": 1.0},
            "train": {"total_agent_steps": 5000, "seed": 1},
        })  # fmt: skip
        planted = PlantedTokenReward(env, target, bonus=1.0)
        trainer = Trainer(cfg, tmp_path / name, env=planted, progress=False)
        trainer.learn()
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().split()]
        out[name] = rows
    return out


def test_penalty_keeps_kl_down(fitted_tiny_model, tmp_path):
    """A planted reward pulls the agent away from β; a large λ keeps it much closer."""
    runs = planted_runs(fitted_tiny_model, tmp_path, {
        "free": {"where": "reward", "estimator": "k1", "coef": 0.0},
        "reward_k1": {"where": "reward", "estimator": "k1", "coef": 1.0},
        "loss_exact": {"where": "loss", "estimator": "exact", "coef": 1.0},
    })  # fmt: skip

    def late_kl(name: str) -> float:  # mean exact KL per episode over the last two updates
        return sum(m["kl/episode_mean"] for m in runs[name][-2:]) / 2

    free, reward_k1, loss_exact = late_kl("free"), late_kl("reward_k1"), late_kl("loss_exact")
    assert free > 8.0, free  # the free agent learned to chase the planted token (β: 0)
    assert reward_k1 < 0.5 * free, (reward_k1, free)
    assert loss_exact < 0.5 * free, (loss_exact, free)
    last = runs["reward_k1"][-1]
    assert last["penalty/coef"] == 1.0 == last["penalty/coef_next"]  # fixed λ
    assert last["penalty/mean_episode"] == pytest.approx(last["penalty/estimate_mean"])
    assert "budget/spent" not in last and "losses/kl_target" not in last
    assert "losses/kl_penalty" in runs["loss_exact"][-1]
    assert "losses/kl_penalty" not in last


def penalty_config(model, total: int):
    return from_dict({
        "model": {"path": str(model)},
        "env": {"prompt": SHORT.prompt, "n_envs": 4, "length": 40},
        "agent": {"kind": "penalty", "critic_hidden": 16},
        "penalty": {"where": "reward", "estimator": "k3", "coef": 0.1, "target": 0.5,
                    "horizon": 40.0},
        "ppo": {"tokens_per_update": 64, "minibatch": 32, "epochs": 2, "actor_lr": 0.05},
        "train": {"total_agent_steps": total, "seed": 3},
    }).validate()  # fmt: skip


def read_jsonl(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_penalty_run_saves_resumes_and_evaluates(tiny_model, tmp_path):
    from klbudget.pipelines.evaluate import evaluate_run
    from klbudget.runs import folder as rf

    torch.set_num_threads(1)
    run = tmp_path / "run"
    first = Trainer(penalty_config(tiny_model, 200), run, progress=False)
    first.learn()
    metrics = read_jsonl(run / "metrics.jsonl")
    coefs = [m["penalty/coef"] for m in metrics]
    assert coefs[0] == 0.1 and len(set(coefs)) > 1  # the adaptive controller moved λ
    for m0, m1 in zip(metrics, metrics[1:], strict=False):
        assert m1["penalty/coef"] == m0["penalty/coef_next"]
    stem = rf.latest_checkpoint(run)
    saved = json.loads((run / "checkpoints" / f"{stem}.json").read_text())["counters"]
    assert saved["penalty_coef"] == metrics[-1]["penalty/coef_next"] == first.kl.coef.value
    episodes = read_jsonl(run / "episodes.jsonl")
    assert all(e["budget"] == "inf" for e in episodes)

    resumed = Trainer(penalty_config(tiny_model, 400), run, resume=True, progress=False)
    assert resumed.kl.coef.value == saved["penalty_coef"]
    assert not resumed.actor.mixture
    for key, val in first.actor.state_dict().items():
        assert torch.equal(resumed.actor.state_dict()[key], val)
    resumed.learn()
    after = read_jsonl(run / "metrics.jsonl")
    assert [m["time/update"] for m in after] == list(range(1, len(after) + 1))
    assert after[len(metrics)]["penalty/coef"] == saved["penalty_coef"]

    result = evaluate_run(run, episodes=4, lengths=[40], progress=False)
    agent = read_jsonl(run / "eval" / "episodes_agent_L40.jsonl")
    base = read_jsonl(run / "eval" / "episodes_base_L40.jsonl")
    assert len(agent) == len(base) == 4
    assert all(r["budget"] == "inf" for r in agent)
    assert all(t["kl"] == 0.0 for r in base for t in r["tokens"])  # β exactly
    agent_kl = [sum(t["kl"] for t in r["tokens"]) for r in agent]
    assert min(agent_kl) > 0.0  # the trained penalty agent is not β
    kl = result["eval"]["agent_L40"]["kl_to_base"]
    assert kl["over_budget_frac"] == 0.0 and kl["exact_max"] == pytest.approx(max(agent_kl))


def test_the_update_replays_each_step_from_the_rollouts_alpha(tiny_model, monkeypatch):
    """The rollout keeps each step's mixture weight, and PPO's replay of the step starts
    the mixture's solve there (`alpha0`), row for row."""
    import klbudget.agent.policy as policy

    env = make_env(tiny_model, n=3, length=40, max_reply_tokens=4)
    d, v = env.base.feature_dim + 2, env.base.num_actions
    actor, critic = random_actor(d, v, 0.5, mixture=True), Critic(d, 8)
    g = torch.Generator().manual_seed(7)
    ep = run_episode(env, actor, critic, budget=5.0, mode="expected", budget_scale=10.0,
                     generator=g, seed=3)  # fmt: skip
    batch = ep.batch
    assert batch.alpha_old is not None and batch.alpha_old.shape == (len(batch),)
    assert ((batch.alpha_old > 0) & (batch.alpha_old < 1)).any()  # some steps were solved
    seen = []
    real = policy.fixed_kl_mixture

    def spy(*args, alpha0=None, **kw):
        seen.append(alpha0)
        return real(*args, alpha0=alpha0, **kw)

    monkeypatch.setattr(policy, "fixed_kl_mixture", spy)
    cfg = PPOConfig(epochs=1, minibatch=len(batch))
    opts = [torch.optim.SGD(m.parameters(), lr=0.0) for m in (actor, critic)]
    ppo_update(actor, critic, *opts, batch, cfg, kl_target_coef=0.0,
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert len(seen) == 1 and seen[0] is not None
    assert torch.equal(seen[0].sort().values, batch.alpha_old.sort().values)
    # With unchanged parameters the replay finds the rollout's own α.
    replay = actor(batch.obs, batch.base_logp[:], batch.budget_left, alpha0=batch.alpha_old)
    torch.testing.assert_close(replay.alpha, batch.alpha_old, rtol=1e-5, atol=0)
