r"""Returns and advantages for undiscounted episodic PPO (SYSTEM.md §2, "PPO").

G_t = Σ_{s ≥ t} r_s (Monte-Carlo return, γ = 1, no bootstrap), A_t = G_t − V(s_t), then
normalised to zero mean and unit variance over the batch.
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
