"""The agent: a linear actor head with the fixed-KL mixture, and a critic (SYSTEM.md §2).

Observation o = [LayerNorm(features), position, budget_left / budget_scale]. The actor
outputs logits z (one per action) and a scalar s; the proposal is a = softmax(z + log β),
the per-step KL target k = sigmoid(s − ln 16)·budget_left, and the played distribution is
x = α·a + (1 − α)·β with KL(x‖β) = k (`klbudget.core.mixture`). z starts at 0, so a fresh
agent proposes β itself and spends nothing.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from klbudget.core.budget import step_target
from klbudget.core.mixture import fixed_kl_mixture


def observation(features: Tensor, position: Tensor, budget_left: Tensor, scale: float) -> Tensor:
    """(B, F + 2) agent input; features are normalised without learned parameters."""
    f = F.layer_norm(features.float(), features.shape[-1:])
    extra = torch.stack([position.float(), budget_left.float() / scale], -1)
    return torch.cat([f, extra], -1)


class Played(NamedTuple):
    log_x: Tensor  # (B, A) played distribution
    kl: Tensor  # (B,) KL(x‖β)
    k: Tensor  # (B,) per-step target
    alpha: Tensor  # (B,) mixture weight


class Actor(nn.Module):
    """Linear head: obs → (z, s)."""

    def __init__(self, obs_dim: int, num_actions: int) -> None:
        super().__init__()
        self.z = nn.Linear(obs_dim, num_actions)
        self.s = nn.Linear(obs_dim, 1)
        nn.init.zeros_(self.z.weight)
        nn.init.zeros_(self.z.bias)
        nn.init.zeros_(self.s.weight)
        nn.init.zeros_(self.s.bias)

    def forward(self, obs: Tensor, base_logp: Tensor, budget_left: Tensor) -> Played:
        z = self.z(obs)  # (B, A)
        s = self.s(obs).squeeze(-1)  # (B,)
        log_a = torch.log_softmax(z + base_logp, -1)
        k = step_target(s, budget_left)
        out = fixed_kl_mixture(log_a, base_logp, k)
        return Played(out.log_x, out.kl, k, out.alpha)


class Critic(nn.Module):
    """V(o): an MLP on the observation (which includes budget_left)."""

    def __init__(self, obs_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 1),
        )

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs).squeeze(-1)


def entropy(log_p: Tensor) -> Tensor:
    """H(p) = −Σ p log p, with 0·log 0 = 0."""
    p = log_p.exp()
    return -(p * torch.where(p > 0, log_p, torch.zeros_like(log_p))).sum(-1)
