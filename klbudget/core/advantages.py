r"""Returns and advantages for undiscounted episodic PPO (docs/design.md, "PPO").

G_t = Σ_{s ≥ t} r_s (Monte-Carlo return, γ = 1, no bootstrap), A_t = G_t − V(s_t), then
normalised to zero mean and unit variance over the batch.

The option ``ppo.gae_lambda`` = λ < 1 replaces G_t by the λ-return (GAE with γ = 1):

    G^λ_t = r_t + (1 − λ)·V(s_t') + λ·G^λ_t'

with t' the next agent step of the same conversation (G^λ and V are 0 after its last one),
so A_t = G^λ_t − V(s_t) = Σ_k λ^k δ_{t_k}, δ_t = r_t + V(s_t') − V(s_t). λ = 1 is the
Monte-Carlo return exactly; smaller λ trades the variance of the rewards far ahead for the
critic's bias.
"""

from __future__ import annotations

import torch
from torch import Tensor


def reward_to_go(rewards: Tensor, mask: Tensor) -> Tensor:
    """G_t = Σ_{s ≥ t, mask_s} r_s along the last axis; 0 where mask is False.

    Args:
        rewards: (B, T) reward of each step.
        mask: (B, T) bool, True on the agent's own steps (others carry no reward).
    """
    r = torch.where(mask, rewards, torch.zeros_like(rewards))
    g = torch.flip(torch.cumsum(torch.flip(r, (-1,)), -1), (-1,))
    return torch.where(mask, g, torch.zeros_like(g))


def normalize(x: Tensor, eps: float = 1e-8) -> Tensor:
    """(x − mean) / (std + eps) over all elements; a single element maps to 0."""
    if x.numel() < 2:
        return torch.zeros_like(x)
    return (x - x.mean()) / (x.std() + eps)


def lambda_return(rewards: Tensor, values: Tensor, mask: Tensor, lam: float) -> Tensor:
    """G^λ_t (module docstring) along the last axis, over the steps where `mask` holds; 0
    elsewhere. λ = 1 gives :func:`reward_to_go` exactly.

    Args:
        rewards: (B, T) reward of each step (only masked steps carry reward).
        values: (B, T) V(s_t) on the masked steps (other entries are ignored).
        mask: (B, T) bool, True on the agent's own steps.
        lam: λ in [0, 1].
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must lie in [0, 1], got {lam}")
    if lam == 1.0:
        return reward_to_go(rewards, mask)
    values = values.to(rewards.dtype)
    g_next = torch.zeros(rewards.shape[:-1], dtype=rewards.dtype)
    v_next = torch.zeros_like(g_next)
    out = torch.zeros_like(rewards)
    for t in range(rewards.shape[-1] - 1, -1, -1):
        m = mask[..., t]
        g = rewards[..., t] + (1.0 - lam) * v_next + lam * g_next
        g_next = torch.where(m, g, g_next)
        v_next = torch.where(m, values[..., t], v_next)
        out[..., t] = torch.where(m, g, torch.zeros_like(g))
    return out
