"""How a run keeps the agent near its base: one object per kind, one interface.

- :class:`HardBudget` (``agent.kind = "budget"``): the actor plays the fixed-KL mixture and
  every episode carries a budget, ramped from 0 to ``budget.total`` over the first
  ``budget.ramp_fraction`` of training (docs/design.md, "Budget accounting").
- :class:`Penalty` (``agent.kind = "penalty"``): the actor plays π = softmax(z + log β) with
  no budget and pays λ·estimate per agent token, in its reward (``where = "reward"``) or in
  its loss (``"loss"``); λ is fixed or adapted toward a per-episode KL target
  (:mod:`klbudget.core.penalty`).

The trainer asks the control, never the config, what an episode's budget is, what λ the
rollout pays, what loss term the update adds, and what to log and checkpoint.
"""

from __future__ import annotations

import math

import torch

from klbudget.agent.ppo import KLPenaltyLoss
from klbudget.agent.rollout import Rollout
from klbudget.config import Config
from klbudget.core.budget import ramp
from klbudget.core.penalty import controller


class KLControl:
    """The interface; the defaults are a control with nothing to pay, log or save."""

    mixture = True  # the actor plays the fixed-KL mixture (else softmax(z + log β))

    def episode_budget(self, progress: float) -> float:
        """The budget of an episode played at training progress in [0, 1]."""
        raise NotImplementedError

    def reward_coef(self) -> float:
        """λ taken off each agent step's reward at rollout time (0: none)."""
        return 0.0

    def loss(self) -> KLPenaltyLoss | None:
        """A term this update's PPO loss adds (None: none)."""
        return None

    def loss_stats(self) -> dict[str, float]:
        """Statistics of the loss term over the update just made."""
        return {}

    def after_update(self, episodes: list[Rollout]) -> dict[str, float]:
        """Step any controller on the update's episodes (every process's); what to log."""
        return {}

    def logs_budget(self) -> bool:
        """Whether the update's budget metrics (full, spent, left) mean anything."""
        return True

    def postfix(self, metrics: dict[str, float], budget: float) -> dict[str, str]:
        """What the progress bar shows of this control."""
        return {"budget": f"{budget:.1f}"}

    def state(self) -> dict[str, float]:
        """Checkpointed with the counters."""
        return {}

    def load_state(self, counters: dict) -> None:
        """Restore from a checkpoint's counters."""


class HardBudget(KLControl):
    """A per-episode budget B, ramped linearly from 0 over the first `ramp_fraction`."""

    def __init__(self, total: float, ramp_fraction: float) -> None:
        self.total = float(total)
        self.ramp_fraction = float(ramp_fraction)

    def episode_budget(self, progress: float) -> float:
        return ramp(self.total, progress, self.ramp_fraction)


class Penalty(KLControl):
    """A KL penalty λ·estimate per agent token, paid in the reward or in the loss."""

    mixture = False

    def __init__(self, coef: float, target: float, horizon: float, clip: float, *,
                 where: str, estimator: str) -> None:  # fmt: skip
        self.coef = controller(coef, target, horizon, clip)
        self.where = where
        self.estimator = estimator
        self._loss: KLPenaltyLoss | None = None

    def episode_budget(self, progress: float) -> float:  # noqa: ARG002
        return math.inf  # a penalty agent has no budget

    def reward_coef(self) -> float:
        return self.coef.value if self.where == "reward" else 0.0

    def loss(self) -> KLPenaltyLoss | None:
        self._loss = (
            KLPenaltyLoss(self.estimator, self.coef.value) if self.where == "loss" else None
        )
        return self._loss

    def loss_stats(self) -> dict[str, float]:
        if self._loss is None or not self._loss.values:
            return {}
        return {"losses/kl_penalty": sum(self._loss.values) / len(self._loss.values)}

    def after_update(self, episodes: list[Rollout]) -> dict[str, float]:
        used = self.coef.value
        kl = torch.cat([e.kl for e in episodes])
        est = torch.cat([e.kl_estimate for e in episodes])
        self.coef.update(kl.mean().item(), int(kl.numel()))
        objective = torch.cat([e.returns for e in episodes]) - used * est
        return {
            "penalty/coef": used,
            "penalty/coef_next": self.coef.value,
            "penalty/estimate_mean": est.mean().item(),
            "penalty/mean_episode": used * est.mean().item(),
            "penalty/objective_mean": objective.mean().item(),
        }

    def logs_budget(self) -> bool:
        return False

    def postfix(self, metrics: dict[str, float], budget: float) -> dict[str, str]:  # noqa: ARG002
        return {"coef": f"{metrics['penalty/coef']:.3g}"}

    def state(self) -> dict[str, float]:
        return {"penalty_coef": self.coef.value}

    def load_state(self, counters: dict) -> None:
        if "penalty_coef" in counters:
            self.coef.value = float(counters["penalty_coef"])


def make_kl_control(cfg: Config) -> KLControl:
    """The control a config's `agent.kind` names."""
    if cfg.agent.kind == "penalty":
        p = cfg.penalty
        return Penalty(p.coef, p.target, p.horizon, p.clip, where=p.where, estimator=p.estimator)
    return HardBudget(cfg.budget.total, cfg.budget.ramp_fraction)
