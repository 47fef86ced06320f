r"""Per-episode KL budget accounting (docs/design.md, "Budget accounting").

Two modes, both clamped at 0, after which the agent must play β exactly:

- ``realized`` (the paper's): budget_left ← max(0, budget_left − (log x(a) − log β(a))).
  The realized log-ratio has expectation KL(x‖β) but any single episode may overspend.
- ``expected``: budget_left ← max(0, budget_left − KL(x‖β)). The per-step target satisfies
  KL_t ≤ budget_left_t, so Σ_t KL_t ≤ B on every episode, and by the chain rule of KL the
  episode-level KL(π‖β) ≤ B exactly.

The budget ramps linearly from 0 to its full value over the first phase of training.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

BudgetMode = Literal["realized", "expected"]
BUDGET_MODES: tuple[str, ...] = ("realized", "expected")

# ln 16: at scalar 0 the head asks for 1/17 of what is left, so a fresh agent spreads its
# budget over many steps instead of spending it on the first token.
_LOG16 = float(torch.log(torch.tensor(16.0)))


def step_target(scalar: Tensor, budget_left: Tensor) -> Tensor:
    """Per-step KL target k = sigmoid(scalar − ln 16) · budget_left."""
    return torch.sigmoid(scalar - _LOG16) * budget_left


def spend(
    budget_left: Tensor, *, mode: BudgetMode, log_ratio: Tensor, kl: Tensor, active: Tensor
) -> Tensor:
    """Budget after one step. Rows where `active` is False (not the agent's turn) keep theirs."""
    if mode == "realized":
        cost = log_ratio
    elif mode == "expected":
        cost = kl
    else:
        raise ValueError(f"unknown budget mode {mode!r}; expected one of {BUDGET_MODES}")
    new = (budget_left - cost).clamp(min=0.0)
    return torch.where(active, new, budget_left)


def ramp(full_budget: float, progress: float, ramp_fraction: float) -> float:
    """Budget at training progress in [0, 1]: linear from 0 to full over `ramp_fraction`."""
    if ramp_fraction <= 0:
        return full_budget
    return full_budget * min(1.0, max(0.0, progress) / ramp_fraction)
