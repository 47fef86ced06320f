r"""Clipped PPO on the fixed-KL mixture policy (SYSTEM.md §2, "PPO").

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

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from klbudget.agent.policy import Actor, Critic, Played, entropy
from klbudget.config import PPOConfig
from klbudget.core.advantages import normalize
from klbudget.core.kl import ESTIMATORS, estimate


@dataclass
class Batch:
    """Agent steps of one rollout, flattened over conversations and time."""

    obs: Tensor  # (M, D) agent observation
    base_logp: Tensor  # (M, A) log β at each step
    budget_left: Tensor  # (M,) budget before the step
    actions: Tensor  # (M,) sampled action
    logp_old: Tensor  # (M,) log x_old(action)
    values_old: Tensor  # (M,) critic at rollout
    returns: Tensor  # (M,) Monte-Carlo return-to-go

    def __len__(self) -> int:
        return int(self.actions.shape[0])


class NonFiniteError(RuntimeError):
    """A loss or gradient that is NaN or infinite; raised before any parameter moves."""

    def __init__(self, quantity: str) -> None:
        super().__init__(f"{quantity} is not finite")
        self.quantity = quantity


def _check(value: Tensor, quantity: str) -> None:
    if not bool(torch.isfinite(value).all()):
        raise NonFiniteError(quantity)


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
) -> dict[str, float]:
    """Run `cfg.epochs` passes of clipped PPO over `batch`; returns namespaced statistics."""
    adv_all = normalize(batch.returns - batch.values_old)  # 1. advantages
    m = len(batch)
    sums: dict[str, float] = {}
    n_steps = 0
    for _ in range(cfg.epochs):
        perm = torch.randperm(m, generator=generator)
        for start in range(0, m, cfg.minibatch):
            idx = perm[start : start + cfg.minibatch]
            obs, adv = batch.obs[idx], adv_all[idx]
            # 2. re-play the mixture
            played = actor(obs, batch.base_logp[idx], batch.budget_left[idx])
            logp = played.log_x.gather(-1, batch.actions[idx, None]).squeeze(-1)
            log_ratio = logp - batch.logp_old[idx]
            ratio = log_ratio.exp()
            # 3. actor loss
            pg = -torch.minimum(ratio * adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv)
            ent = entropy(played.log_x)
            loss = pg.mean() - cfg.ent_coef * ent.mean()
            if actor.mixture:
                # The paper's term trains only the scalar: KL(x‖β) enters as a constant, so
                # the gradient reaches k alone; "both" also pushes z toward KL(a‖β) = k.
                kl = played.kl.detach() if kl_target_grad == "scalar" else played.kl
                k_pen = (kl - played.k) ** 2
                loss = loss + kl_target_coef * k_pen.mean()
            if extra_loss is not None:
                loss = loss + extra_loss(played, batch, idx)
            # 5. actor step
            _check(loss, "the actor loss")
            actor_opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(actor.parameters(), cfg.max_grad_norm)
            _check(norm, "the actor gradient")
            actor_opt.step()
            # 4./5. critic
            v_loss = 0.5 * (critic(obs) - batch.returns[idx]).pow(2).mean()
            _check(v_loss, "the critic loss")
            critic_opt.zero_grad(set_to_none=True)
            v_loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.max_grad_norm)
            _check(norm, "the critic gradient")
            critic_opt.step()
            with torch.no_grad():
                stats = {
                    "losses/policy": pg.mean().item(),
                    "losses/value": v_loss.item(),
                    "policy/entropy": ent.mean().item(),
                    "policy/approxkl": ((ratio - 1) - log_ratio).mean().item(),
                    "policy/clipfrac": ((ratio - 1).abs() > cfg.clip).float().mean().item(),
                }
                if actor.mixture:
                    stats["losses/kl_target"] = k_pen.mean().item()
            for key, val in stats.items():
                sums[key] = sums.get(key, 0.0) + val
            n_steps += 1
    return {key: val / max(n_steps, 1) for key, val in sums.items()}
