r"""Clipped PPO on the fixed-KL mixture policy (docs/design.md, "PPO").

One update reads top to bottom:
  1. advantages  A = normalise(G − V_old), G the undiscounted Monte-Carlo return;
  2. for each epoch and minibatch: re-play the mixture, log x(a) and the ratio
     ρ = x(a)/x_old(a);
  3. actor loss  −min(ρA, clip(ρ, 1 ± ε)A) − c_ent·H(x) + c_k·(KL(x‖β) − k)² (+ extra),
     the last term with KL(x‖β) held constant (it trains the scalar only, as in the paper)
     unless kl_target_grad = "both"; a KL-penalty actor (no mixture, no k) skips it;
  4. critic loss  ½(V − G)²;
  5. Adam steps with gradient-norm clipping.
Extra loss terms are plain functions passed in, not subclass hooks; :class:`KLPenaltyLoss`
is the KL-penalty agent's λ·mean(estimate) term (`penalty.where = "loss"`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from klbudget.agent.distributed import SINGLE, Group
from klbudget.agent.lora import SeqRef
from klbudget.agent.policy import Actor, Critic, Played, entropy
from klbudget.config import PPOConfig
from klbudget.core.advantages import normalize
from klbudget.core.kl import ESTIMATORS, estimate

# The update's (rows, actions) tensors are allocated and freed once per minibatch part. Up to
# 32 MB, glibc's malloc reuses freed memory; a (512, 49152) float32 tensor (100 MB) was fresh
# pages faulted in at every allocation, and the update spent most of its time in page
# faults. 24 MB is 128 rows of SmolLM2's 49,152 tokens (the fastest of 8 to 512 rows measured)
# and leaves the demo world (4,096 actions, 512 rows) one part per minibatch.
MICRO_BYTES = 24 << 20


@dataclass
class HiddenLogp:
    """log β at M agent steps kept as the base's last hidden state (M, d) instead of (M, A)
    log-probs; indexing recomputes the rows asked for (`HFBase.logp_head`)."""

    hidden: Tensor  # (M, d)
    head: Callable[[Tensor], Tensor]  # (m, d) → (m, A) log β

    def __getitem__(self, idx) -> Tensor:
        return self.head(self.hidden[idx])

    def __len__(self) -> int:
        return int(self.hidden.shape[0])

    @staticmethod
    def cat(parts: list[HiddenLogp]) -> HiddenLogp:
        return HiddenLogp(torch.cat([p.hidden for p in parts]), parts[0].head)


@dataclass
class Batch:
    """Agent steps of one rollout, flattened over conversations and time."""

    obs: Tensor  # (M, D) agent observation
    base_logp: Tensor | HiddenLogp  # (M, A) log β at each step, or what recomputes it
    budget_left: Tensor  # (M,) budget before the step
    actions: Tensor  # (M,) sampled action
    logp_old: Tensor  # (M,) log x_old(action)
    values_old: Tensor  # (M,) critic at rollout
    returns: Tensor  # (M,) Monte-Carlo return-to-go
    alpha_old: Tensor | None = None  # (M,) α at rollout: where the replay's solve starts
    seq: SeqRef | None = None  # the episodes' tokens, for a LoRA actor's replay

    def __len__(self) -> int:
        return int(self.actions.shape[0])


class NonFiniteError(RuntimeError):
    """A loss or gradient that is NaN or infinite; raised before any parameter moves."""

    def __init__(self, quantity: str) -> None:
        super().__init__(f"{quantity} is not finite")
        self.quantity = quantity


def _check(value: Tensor, quantity: str, group: Group = SINGLE) -> None:
    """Raise on every process when `value` is not finite on any (no process is left
    waiting for the others' gradients)."""
    if group.any(not bool(torch.isfinite(value).all())):
        raise NonFiniteError(quantity)


def _step(
    module: torch.nn.Module, opt: torch.optim.Optimizer, max_norm: float, group: Group, what: str
) -> None:
    """Average gradients across processes, clip their norm, check it, step."""
    params = [p for p in module.parameters() if p.requires_grad]
    if group.world > 1:  # every process averages the same list of buffers
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
    group.mean_grads(params)
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    _check(norm, what)  # the same averaged gradient on every process
    opt.step()


def _step_without_data(actor, critic, actor_opt, critic_opt, cfg: PPOConfig, group: Group):
    """A process with no steps in this minibatch still joins the others' averaging."""
    _check(torch.zeros(()), "the actor loss", group)
    actor_opt.zero_grad(set_to_none=True)
    _step(actor, actor_opt, cfg.max_grad_norm, group, "the actor gradient")
    _check(torch.zeros(()), "the critic loss", group)
    critic_opt.zero_grad(set_to_none=True)
    _step(critic, critic_opt, cfg.max_grad_norm, group, "the critic gradient")


def _normalize_across(x: Tensor, group: Group, eps: float = 1e-8) -> Tensor:
    """`normalize` over the union of every process's x."""
    s = group.sum(torch.stack([x.sum(), x.pow(2).sum(), torch.tensor(float(x.numel()))]))
    n = s[2].item()
    if n < 2:
        return torch.zeros_like(x)
    mean = s[0] / n
    var = ((s[1] - n * mean * mean) / (n - 1)).clamp(min=0.0)
    return ((x - mean) / (var.sqrt() + eps)).to(x.dtype)


ExtraLoss = Callable[[Played, Batch, Tensor], Tensor]  # (played, batch, minibatch idx) → scalar


class KLPenaltyLoss:
    """Extra loss λ·mean_i est_i over a minibatch, est recomputed from the current policy.

    est is `klbudget.core.kl.estimate(estimator, ρ, KL(π‖β))` with ρ = log π(a) − log β(a)
    at the stored action a and KL(π‖β) the current step's exact KL (``exact``). `coef` may
    be changed between updates; `values` collects mean(est) of every call.
    """

    def __init__(self, estimator: str, coef: float) -> None:
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {ESTIMATORS}")
        self.estimator = estimator
        self.coef = coef
        self.values: list[float] = []

    def __call__(self, played: Played, batch: Batch, idx: Tensor) -> Tensor:
        a = batch.actions[idx, None]
        log_ratio = (played.log_x.gather(-1, a) - batch.base_logp[idx].gather(-1, a)).squeeze(-1)
        est = estimate(self.estimator, log_ratio, played.kl).mean()
        self.values.append(est.item())
        return self.coef * est


def combine(*losses: ExtraLoss | None) -> ExtraLoss | None:
    """One extra loss that sums the given ones (None when none is given)."""
    parts = [f for f in losses if f is not None]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]

    def total(played: Played, batch: Batch, idx: Tensor) -> Tensor:
        return sum((f(played, batch, idx) for f in parts[1:]), parts[0](played, batch, idx))

    return total


def ppo_update(
    actor: Actor,
    critic: Critic,
    actor_opt: torch.optim.Optimizer,
    critic_opt: torch.optim.Optimizer,
    batch: Batch,
    cfg: PPOConfig,
    *,
    kl_target_coef: float,
    kl_target_grad: str = "scalar",
    generator: torch.Generator,
    extra_loss: ExtraLoss | None = None,
    group: Group = SINGLE,
) -> dict[str, float]:
    """Run `cfg.epochs` passes of clipped PPO over `batch`; returns namespaced statistics.

    With a process group (`klbudget.agent.distributed`), `batch` is this process's share:
    advantages are normalised over every process's steps, each epoch takes the same number
    of minibatches on every process (the steps of all of them over `cfg.minibatch`, each
    process's share cut into that many near-equal parts), and gradients are averaged.
    """
    m = len(batch)
    if group.world == 1:
        adv_all = normalize(batch.returns - batch.values_old)  # 1. advantages

        def parts(perm: Tensor) -> list[Tensor]:
            return [perm[i : i + cfg.minibatch] for i in range(0, m, cfg.minibatch)]
    else:
        adv_all = _normalize_across(batch.returns - batch.values_old, group)
        n_parts = max(1, math.ceil(group.sum(torch.tensor([float(m)])).item() / cfg.minibatch))

        def parts(perm: Tensor) -> list[Tensor]:
            return list(perm.tensor_split(n_parts))

    sums: dict[str, float] = {}
    n_steps = 0
    rows = micro_rows(cfg.microbatch, batch.base_logp)
    seq = batch.seq
    if seq is not None:  # a LoRA actor: whole conversations, each read once per pass

        def parts(perm: Tensor) -> list[Tensor]:
            del perm
            order = torch.randperm(int(seq.ids.shape[0]), generator=generator)
            groups = dict(zip(seq.conv.unique().tolist(), seq.groups(torch.arange(m)),
                              strict=True))  # fmt: skip
            return _packed([groups[c] for c in order.tolist() if c in groups], cfg.minibatch)

    for _ in range(cfg.epochs):
        for idx in parts(torch.randperm(m, generator=generator)):
            if idx.numel() == 0:  # this process has fewer steps than parts: zero gradients
                _step_without_data(actor, critic, actor_opt, critic_opt, cfg, group)
                continue
            # 2./3. re-play the mixture and back-propagate the actor loss a few rows at a
            # time: the gradient of the minibatch's mean loss, summed over its parts
            actor_opt.zero_grad(set_to_none=True)
            loss_sum = torch.zeros(())
            stats: dict[str, float] = {}
            subs = idx.split(rows) if seq is None else _packed(seq.groups(idx), rows)
            for sub in subs:
                share = sub.numel() / idx.numel()
                loss, part = _actor_loss(
                    actor, batch, sub, adv_all[sub], cfg, kl_target_coef, kl_target_grad,
                    extra_loss,
                )  # fmt: skip
                (share * loss).backward()
                loss_sum = loss_sum + share * loss.detach()
                for key, val in part.items():
                    stats[key] = stats.get(key, 0.0) + share * val
            # 5. actor step
            _check(loss_sum, "the actor loss", group)
            _step(actor, actor_opt, cfg.max_grad_norm, group, "the actor gradient")
            # 4./5. critic
            v_loss = 0.5 * (critic(batch.obs[idx]) - batch.returns[idx]).pow(2).mean()
            _check(v_loss, "the critic loss", group)
            critic_opt.zero_grad(set_to_none=True)
            v_loss.backward()
            _step(critic, critic_opt, cfg.max_grad_norm, group, "the critic gradient")
            stats["losses/value"] = v_loss.item()
            for key, val in stats.items():
                sums[key] = sums.get(key, 0.0) + val
            n_steps += 1
    return {key: val / max(n_steps, 1) for key, val in sums.items()}


def _packed(groups: list[Tensor], size: int) -> list[Tensor]:
    """Consecutive groups joined into parts of at most `size` rows, or one group where a
    group alone is larger (a group is never split: one conversation's steps are read in one
    forward pass)."""
    out, cur, n = [], [], 0
    for g in groups:
        if cur and n + g.numel() > size:
            out.append(torch.cat(cur))
            cur, n = [], 0
        cur.append(g)
        n += g.numel()
    if cur:
        out.append(torch.cat(cur))
    return out


def micro_rows(microbatch: int, base_logp: Tensor | HiddenLogp) -> int:
    """Rows per forward/backward pass in the update: `microbatch`, or with 0 as many as keep
    one (rows, actions) float32 tensor within MICRO_BYTES (and at least one row)."""
    if microbatch > 0:
        return microbatch
    n_act = base_logp[:1].shape[-1]  # (a HiddenLogp recomputes one row)
    return max(1, MICRO_BYTES // (4 * max(int(n_act), 1)))


def _actor_loss(
    actor: Actor,
    batch: Batch,
    idx: Tensor,
    adv: Tensor,
    cfg: PPOConfig,
    kl_target_coef: float,
    kl_target_grad: str,
    extra_loss: ExtraLoss | None,
) -> tuple[Tensor, dict[str, float]]:
    """The actor loss (mean over the rows `idx`) and its statistics."""
    start = None if batch.alpha_old is None else batch.alpha_old[idx]
    log_a = None if batch.seq is None else actor.lm.logp_steps(batch.seq, idx)
    played = actor(batch.obs[idx], batch.base_logp[idx], batch.budget_left[idx], alpha0=start,
                   log_a=log_a)  # fmt: skip
    logp = played.log_x.gather(-1, batch.actions[idx, None]).squeeze(-1)
    log_ratio = logp - batch.logp_old[idx]
    ratio = log_ratio.exp()
    pg = -torch.minimum(ratio * adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv)
    ent = entropy(played.log_x)
    loss = pg.mean() - cfg.ent_coef * ent.mean()
    if actor.mixture:
        # The paper's term trains only the scalar: KL(x‖β) enters as a constant, so the
        # gradient reaches k alone; "both" also pushes z toward KL(a‖β) = k.
        kl = played.kl.detach() if kl_target_grad == "scalar" else played.kl
        k_pen = (kl - played.k) ** 2
        loss = loss + kl_target_coef * k_pen.mean()
    if extra_loss is not None:
        loss = loss + extra_loss(played, batch, idx)
    with torch.no_grad():
        stats = {
            "losses/policy": pg.mean().item(),
            "policy/entropy": ent.mean().item(),
            "policy/approxkl": ((ratio - 1) - log_ratio).mean().item(),
            "policy/clipfrac": ((ratio - 1).abs() > cfg.clip).float().mean().item(),
        }
        if actor.mixture:
            stats["losses/kl_target"] = k_pen.mean().item()
    return loss, stats
