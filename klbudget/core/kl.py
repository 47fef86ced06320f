r"""KL divergences and their per-sample estimators.

For a token t ~ π with log-ratio ρ = log π(t) − log β(t):

- exact:  KL(π‖β) = Σ_t π(t)·(log π(t) − log β(t))
- k1:     ρ                       (unbiased, can be negative)
- k2:     ½ρ²                     (biased, ≥ 0, low variance)
- k3:     (e^{−ρ} − 1) + ρ        (unbiased, always ≥ 0; Schulman, "Approximating KL
          divergence", 2020)
"""

from __future__ import annotations

import torch
from torch import Tensor

from klbudget.core.mixture import kl_divergence

__all__ = ["ESTIMATORS", "estimate", "kl_exact", "kl_k1", "kl_k2", "kl_k3"]

ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3", "exact")


def kl_exact(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Exact KL(p‖q) over the last axis; +inf where p has mass outside supp(q)."""
    return kl_divergence(log_p, log_q)


def kl_k1(log_ratio: Tensor) -> Tensor:
    """k1 estimator of KL(π‖β) from sampled log-ratios ρ = log π − log β."""
    return log_ratio


def kl_k2(log_ratio: Tensor) -> Tensor:
    """k2 estimator ½ρ² ≥ 0 of KL(π‖β) from sampled log-ratios (biased)."""
    return 0.5 * log_ratio.square()


def kl_k3(log_ratio: Tensor) -> Tensor:
    """k3 estimator (e^{−ρ} − 1) + ρ ≥ 0 of KL(π‖β) from sampled log-ratios."""
    return torch.expm1(-log_ratio) + log_ratio


def estimate(name: str, log_ratio: Tensor, exact: Tensor | None = None) -> Tensor:
    r"""Per-token KL(π‖β) estimate `name` from ρ = log π(a) − log β(a), a ~ π.

    - ``k1`` = ρ. Unbiased for KL(π‖β) per token, but a single value can be negative.
    - ``k2`` = ½ρ². Never negative and of low variance, but biased (E_π[½ρ²] ≠ KL(π‖β)
      in general; the two agree to second order when π is close to β).
    - ``k3`` = (e^{−ρ} − 1) + ρ. Unbiased and never negative (E_π[e^{−ρ}] = 1).
    - ``exact`` = Σ_v π(v)(log π(v) − log β(v)), the full per-step KL, passed in as `exact`
      (it needs the whole distribution, not the sampled token).

    As a value (e.g. a reward penalty, where no gradient flows through it) k1 and k3 are
    unbiased. As a *loss* term differentiated through π at on-policy samples, the expected
    gradients are E_π[∇k1] = E_π[∇log π] = 0, E_π[∇k2] = E_π[ρ·∇log π] = ∇KL(π‖β) and
    E_π[∇k3] = E_π[(1 − e^{−ρ})∇log π] = −Σ_v β(v)∇log π(v) = ∇KL(β‖π): k3's gradient is
    that of the reverse divergence, a biased gradient of KL(π‖β) even though its value is
    unbiased. ``exact`` gives ∇KL(π‖β) itself. k1 as a loss is no KL penalty at all: over
    several PPO epochs on samples of π_old, minimising mean log π(a) pushes π's mass off the
    sampled actions, without bound.
    """
    if name == "k1":
        return kl_k1(log_ratio)
    if name == "k2":
        return kl_k2(log_ratio)
    if name == "k3":
        return kl_k3(log_ratio)
    if name == "exact":
        if exact is None:
            raise ValueError("the exact estimator needs the per-step KL(π‖β)")
        return exact
    raise ValueError(f"unknown KL estimator {name!r}; expected one of {ESTIMATORS}")
