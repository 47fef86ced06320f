"""Roll out one lockstep episode of N conversations with the budgeted agent.

Every env step appends one token to every conversation; on the rows whose turn it is, the
actor plays its fixed-KL mixture, samples a token, and pays for it from the budget
(`klbudget.core.budget`). A student reply's reward arrives while the student speaks; it is
credited to the agent step that handed the turn over (with γ = 1 and no agent action in
between, this is exactly the same return-to-go). The result carries the agent steps for
PPO and one record per conversation in the run-folder schema (docs/run-folder.md).

A KL-penalty actor (`Actor(..., mixture=False)`) has no budget: nothing is spent, its
observation sees budget_left = 0, and callers pass `budget=math.inf`, which is what the
records then carry. With `penalty_coef` = λ > 0 every agent step's reward for PPO gets
−λ·est_t (est_t the `estimator`'s per-token KL estimate, `klbudget.core.kl.estimate`), so
the returns-to-go include the penalty; the records keep the task reward alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from klbudget.agent.lora import SeqRef
from klbudget.agent.policy import Actor, Critic, budget_input, observation
from klbudget.agent.ppo import Batch, HiddenLogp
from klbudget.core.advantages import lambda_return, reward_to_go
from klbudget.core.budget import BudgetMode, spend
from klbudget.core.kl import estimate, kl_exact, kl_k3
from klbudget.core.sampling import sample_categorical
from klbudget.envs.chat import AGENT, SPEAKERS, ChatEnv

Oracle = Callable[[ChatEnv, Tensor], Tensor]  # (env, rows) → (R, A) log-probs


@dataclass
class Rollout:
    batch: Batch  # agent steps, flattened row-major (conversation, time)
    records: list[dict]  # one per conversation, docs/run-folder.md schema
    returns: Tensor  # (N,) episode return
    kl: Tensor  # (N,) Σ_t exact KL(x_t‖β_t)
    log_ratio: Tensor  # (N,) Σ_t log x_t(a_t) − log β_t(a_t)
    k3: Tensor  # (N,) Σ_t k3 estimate
    agent_steps: int
    kl_estimate: Tensor  # (N,) Σ_t est_t of run_episode's `estimator`
    penalty: Tensor  # (N,) λ·Σ_t est_t taken off the rewards PPO sees (0: none)


@torch.no_grad()
def run_episode(
    env: ChatEnv,
    actor: Actor,
    critic: Critic,
    *,
    budget: float,
    mode: BudgetMode,
    budget_scale: float,
    generator: torch.Generator,
    seed: int | None = None,
    policy: str = "agent",
    teacher: Oracle | None = None,
    reference: Oracle | None = None,
    penalty_coef: float = 0.0,
    estimator: str = "k1",
    gae_lambda: float = 1.0,
) -> Rollout:
    """Play one episode; `budget` = 0 makes a budget agent play the base policy exactly.

    A KL-penalty actor plays π whatever `budget` is (pass `math.inf`: it has none).
    `penalty_coef` = λ > 0 subtracts λ·est_t from each agent step's reward in the returns
    PPO learns from (not from the records), with est_t the `estimator`'s KL estimate for
    the sampled token ("k1", "k2", "k3" or "exact"). `gae_lambda` < 1 makes the batch's
    returns the λ-returns (`klbudget.core.advantages.lambda_return`) under the critic.

    `teacher`, when given, plays instead of the actor (e.g. τ itself: its KL to β is
    recorded, no budget is spent). `reference`, when given, annotates every agent token
    with :func:`kl_to_reference`: `kl_tau` (null where infinite), `kl_tau_in` and
    `tau_out` (docs/run-folder.md).
    """
    obs, _ = env.reset(seed=seed)
    n, length = env.n_envs, env.length
    # Keep d numbers per agent step instead of A log-probs where the base can recompute them.
    head = env.base.logp_head() if hasattr(env.base, "logp_head") else None
    width = getattr(env.base, "hidden_size", 0)
    budget_left = torch.full((n,), float(budget))
    kl_t = torch.zeros(n, length)
    lr_t = torch.zeros(n, length)
    left_t = torch.zeros(n, length)
    rewards_t = torch.zeros(n, length)  # reward credited to the step that earned it
    est_t = torch.zeros(n, length)  # per-token KL estimate of each agent step
    spends = teacher is None and actor.mixture  # a penalty actor or a teacher spends nothing
    # KL(π_t‖ref_t), KL(π̃_t‖ref_t) with π̃_t conditioned on ref's support, mass outside it
    ref_t = torch.zeros(3, n, length) if reference is not None else None
    # What PPO needs of each agent step, written in place into one buffer per quantity for
    # the whole episode (allocated at the first agent step): no per-step allocations that
    # outlive the step, which would pin the allocator's heap between large transient ones.
    store: dict[str, Tensor] = {}
    taken = torch.zeros(n, length, dtype=torch.bool)
    last_agent_t = torch.full((n,), -1, dtype=torch.long)
    left_t[:, : env.t] = float(budget)
    # A LoRA actor's LM reads the same tokens as the base, in its own cache.
    lm = getattr(actor, "lm", None) if teacher is None else None
    lm_logp = lm.start(env.ids[:, : env.t], env.length) if lm is not None else None
    while True:
        t = env.t
        mask = obs["agent_turn"]
        actions = torch.zeros(n, dtype=torch.long)
        if bool(mask.any()):
            rows = mask.nonzero().squeeze(-1)
            base_logp = obs["base_logp"][rows].float()
            seen_left = budget_input(actor, budget_left[rows])
            o = observation(obs["features"][rows], obs["position"][rows], seen_left, budget_scale)
            if teacher is None:
                log_a = lm_logp[rows] if lm_logp is not None else None
                played = actor(o, base_logp, seen_left, log_a=log_a)
                log_x, kl, alpha = played.log_x, played.kl, played.alpha
            else:
                log_x = teacher(env, rows)
                kl = kl_exact(log_x, base_logp)
                alpha = torch.full_like(kl, math.nan)  # no mixture was solved
            if reference is not None:
                for j, val in enumerate(
                    kl_to_reference(log_x, reference(env, rows), env.help_action)
                ):
                    ref_t[j, rows, t] = val.float()
            a = sample_categorical(log_x, generator)
            logp = log_x.gather(-1, a[:, None]).squeeze(-1)
            log_ratio = logp - base_logp.gather(-1, a[:, None]).squeeze(-1)
            new_left = spend(
                budget_left[rows],
                mode=mode,
                log_ratio=log_ratio,
                kl=kl,
                active=torch.full_like(rows, spends, dtype=torch.bool),
            )
            keep = {
                "o": o, "bl": seen_left, "a": a, "lp": logp, "al": alpha,
                "lb": base_logp if head is None else obs["features"][rows, -width:].float(),
            }  # fmt: skip
            if not store:
                store = {k: torch.empty((n, length, *v.shape[1:]), dtype=v.dtype)
                         for k, v in keep.items()}  # fmt: skip
            for key, val in keep.items():
                store[key][rows, t] = val
            taken[rows, t] = True
            kl_t[rows, t] = kl
            lr_t[rows, t] = log_ratio
            est_t[rows, t] = estimate(estimator, log_ratio, kl).float()
            budget_left[rows] = new_left
            last_agent_t[rows] = t
            actions[rows] = a
        obs, reward, _, truncated, _ = env.step(actions)
        left_t[:, t] = budget_left
        paid = reward != 0
        if bool(paid.any()):
            r_rows = paid.nonzero().squeeze(-1)
            rewards_t[r_rows, last_agent_t[r_rows]] += reward[r_rows]
        if bool(truncated.all()):
            break
        if lm is not None:
            lm_logp = lm.advance(env.ids[:, env.t - 1])

    agent_mask = env.speaker == AGENT  # (N, T)
    est_t = torch.where(agent_mask, est_t, torch.zeros_like(est_t))
    # (never 0·inf: a teacher outside β's support has an infinite estimate)
    penalty_t = penalty_coef * est_t if penalty_coef else torch.zeros_like(est_t)
    m = int(taken.sum())
    if m:  # boolean indexing reads them row-major: (conversation, time)
        cat = {k: v[taken] for k, v in store.items()}
        obs_dim, n_act = cat["o"].shape[-1], cat["lb"].shape[-1]
        # One batched critic pass here instead of one per step in the loop.
        values = critic(cat["o"].reshape(m, obs_dim))
    else:
        cat = {k: torch.empty(0) for k in ("o", "lb", "bl", "a", "lp", "al")}
        obs_dim, n_act = 0, 0
        values = torch.empty(0)
    task = rewards_t - penalty_t
    if gae_lambda < 1.0:  # every reward sits on a step the actor took (last_agent_t)
        v_grid = torch.zeros_like(rewards_t)
        v_grid[taken] = values.to(v_grid.dtype)
        rtg = lambda_return(task, v_grid, taken, gae_lambda)
    else:
        rtg = reward_to_go(task, agent_mask)
    returns = rtg[taken]
    lb = cat["lb"].reshape(m, n_act)
    batch = Batch(
        obs=cat["o"].reshape(m, obs_dim),
        base_logp=lb if head is None else HiddenLogp(lb, head),
        budget_left=cat["bl"],
        actions=cat["a"].long(),
        logp_old=cat["lp"],
        values_old=values,
        returns=returns,
        alpha_old=cat["al"],
        seq=_seq_ref(env, taken) if lm is not None else None,
    )
    k3_t = torch.where(agent_mask, kl_k3(lr_t), torch.zeros_like(lr_t))
    records = _records(env, kl_t, lr_t, left_t, rewards_t, budget, policy, ref_t)
    return Rollout(
        batch=batch,
        records=records,
        returns=rewards_t.sum(-1),
        kl=kl_t.sum(-1),
        log_ratio=lr_t.sum(-1),
        k3=k3_t.sum(-1),
        agent_steps=m,
        kl_estimate=est_t.sum(-1),
        penalty=penalty_t.sum(-1),
    )


def _seq_ref(env: ChatEnv, taken: Tensor) -> SeqRef:
    """The episode's tokens and each agent step's (conversation, position), in the batch's
    row-major order."""
    conv, t = taken.nonzero(as_tuple=True)
    return SeqRef(env.ids.clone(), conv, t)


def played_tokens(log_x: Tensor, log_ref: Tensor, help_action: int | None) -> Tensor:
    """log of the next-token distribution actually written: x itself, or with a help action
    (index V) x_v + x_help·r_v, since the demonstrator r writes the token on help."""
    if help_action is None:
        return log_x
    v = help_action
    return torch.logaddexp(log_x[:, :v], log_x[:, v : v + 1] + log_ref[:, :v])


def kl_to_reference(
    log_x: Tensor, log_ref: Tensor, help_action: int | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Exact comparison of the played next-token distribution p with a reference r (τ).

    Returns, per row, KL(p‖r) (inf when p has mass outside r's support), KL(p̃‖r) with
    p̃ = p conditioned on r's support (finite; nan when p has no mass there), and the mass p
    puts outside r's support. With a help action (index V), the token actually written is
    the demonstrator's draw with the help probability, so p_v = x_v + x_help·r_v (exact for
    the step's first token in either help mode).
    """
    played = played_tokens(log_x, log_ref, help_action)
    log_ref = log_ref[:, : played.shape[-1]]
    inside = torch.isfinite(log_ref)
    log_in = torch.logsumexp(played.masked_fill(~inside, -torch.inf), -1)  # log p(supp r)
    conditioned = (played - log_in[:, None]).masked_fill(~inside, -torch.inf)
    out_mass = (1.0 - log_in.exp()).clamp(min=0.0)
    return kl_exact(played, log_ref), kl_exact(conditioned, log_ref), out_mass


def _records(
    env: ChatEnv,
    kl_t: Tensor,
    lr_t: Tensor,
    left_t: Tensor,
    rewards_t: Tensor,
    budget: float,
    policy: str,
    ref_t: Tensor | None = None,
) -> list[dict]:
    """Per-conversation records in the docs/run-folder.md schema."""
    ids = env.ids.tolist()
    spk = env.speaker.tolist()
    kl, lr, left, rw = kl_t.tolist(), lr_t.tolist(), left_t.tolist(), rewards_t.tolist()
    out = []
    for i in range(env.n_envs):
        tokens = [
            {
                "id": ids[i][t],
                "text": env.text[ids[i][t]],
                "speaker": SPEAKERS[spk[i][t]],
                "kl": kl[i][t],
                "log_ratio": lr[i][t],
                "budget_left": left[i][t],
            }
            for t in range(env.length)
        ]
        if env.help_action is not None:
            helped = env.helped[i].tolist()
            for t, tok in enumerate(tokens):
                tok["help"] = bool(helped[t])
        if ref_t is not None:
            r_kl, r_in, r_out = (ref_t[j, i].tolist() for j in range(3))
            for t, tok in enumerate(tokens):
                if tok["speaker"] == "agent":
                    tok["kl_tau"] = r_kl[t] if math.isfinite(r_kl[t]) else None
                    tok["kl_tau_in"] = r_in[t] if math.isfinite(r_in[t]) else None
                    tok["tau_out"] = r_out[t]
        rewards = [[t, r] for t, r in enumerate(rw[i]) if r != 0.0]
        out.append(
            {
                "policy": policy,
                "length": env.length,
                "return": sum(r for _, r in rewards),
                "budget": budget,
                "rewards": rewards,
                "tokens": tokens,
            }
        )
    return out
