r"""The KL penalty coefficient λ: fixed, or adapted toward a per-episode KL target.

The adaptive rule is the proportional controller of Ziegler et al. (2019), "Fine-Tuning
Language Models from Human Preferences": after an update over n episodes whose mean
per-episode KL(π‖β) is K,

    e = clip(K / target − 1, −clip, clip),      λ ← λ·(1 + e·n / horizon).

λ grows while the policy spends more than the target and shrinks while it spends less, by
at most a factor (1 ± clip) every `horizon` episodes.
"""

from __future__ import annotations

import math


class FixedKL:
    """A constant coefficient; `update` leaves it alone."""

    def __init__(self, coef: float) -> None:
        if not (math.isfinite(coef) and coef >= 0):
            raise ValueError(f"coef must be finite and >= 0, got {coef}")
        self.value = float(coef)

    def update(self, kl: float, n: int) -> float:  # noqa: ARG002
        """Returns λ unchanged."""
        return self.value


class AdaptiveKL:
    """λ ← λ·(1 + clip(K/target − 1, ±clip)·n/horizon) after each update."""

    def __init__(self, coef: float, target: float, horizon: float, clip: float = 0.2) -> None:
        if not (math.isfinite(coef) and coef >= 0):
            raise ValueError(f"coef must be finite and >= 0, got {coef}")
        if not (math.isfinite(target) and target > 0):
            raise ValueError(f"target must be finite and > 0, got {target}")
        if not (math.isfinite(horizon) and horizon > 0):
            raise ValueError(f"horizon must be finite and > 0, got {horizon}")
        if not (math.isfinite(clip) and clip > 0):
            raise ValueError(f"clip must be finite and > 0, got {clip}")
        self.value = float(coef)
        self.target = float(target)
        self.horizon = float(horizon)
        self.clip = float(clip)

    def update(self, kl: float, n: int) -> float:
        """Move λ after an update of `n` episodes with mean per-episode KL `kl`; returns λ."""
        if not math.isfinite(kl):  # an infinite KL asks for the largest step up
            error = self.clip
        else:
            error = min(max(kl / self.target - 1.0, -self.clip), self.clip)
        # A batch of more than horizon/clip episodes would flip λ's sign: stop at 0 instead.
        self.value *= max(0.0, 1.0 + error * n / self.horizon)
        return self.value


def controller(coef: float, target: float, horizon: float, clip: float) -> FixedKL | AdaptiveKL:
    """AdaptiveKL when `target` > 0, else FixedKL (the `[penalty]` config's rule)."""
    if target > 0:
        return AdaptiveKL(coef, target, horizon, clip)
    return FixedKL(coef)
