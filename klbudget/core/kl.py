r"""KL divergences and their per-sample estimators.

For a token t ~ π with log-ratio ρ = log π(t) − log β(t):

- exact:  KL(π‖β) = Σ_t π(t)·(log π(t) − log β(t))
- k1:     ρ                       (unbiased, can be negative)
- k3:     (e^{−ρ} − 1) + ρ        (unbiased, always ≥ 0; Schulman, "Approximating KL
          divergence", 2020)
"""

from __future__ import annotations

import torch
from torch import Tensor

from klbudget.core.mixture import kl_to_base

__all__ = ["kl_exact", "kl_k1", "kl_k3"]


def kl_exact(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Exact KL(p‖q) over the last axis; +inf where p has mass outside supp(q)."""
    return kl_to_base(log_p, log_q)


def kl_k1(log_ratio: Tensor) -> Tensor:
    """k1 estimator of KL(π‖β) from sampled log-ratios ρ = log π − log β."""
    return log_ratio


def kl_k3(log_ratio: Tensor) -> Tensor:
    """k3 estimator (e^{−ρ} − 1) + ρ ≥ 0 of KL(π‖β) from sampled log-ratios."""
    return torch.expm1(-log_ratio) + log_ratio
