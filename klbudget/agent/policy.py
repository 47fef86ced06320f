"""The agent: a linear actor head with the fixed-KL mixture, and a critic (docs/design.md,
"Mechanics").

Observation o = [LayerNorm(features), position, budget_left / budget_scale]. The actor
outputs logits z (one per action) and a scalar s; the proposal is a = softmax(z + log β),
the per-step KL target k = sigmoid(s − ln 16)·budget_left, and the played distribution is
x = α·a + (1 − α)·β with KL(x‖β) = k (`klbudget.core.mixture`). z starts at 0, so a fresh
agent proposes β itself and spends nothing.

Two heads give z. "full" (the paper's) maps the observation to every action: a (F + 2) × A
matrix, three times the base model's own output layer. "embed" maps it to the model width d
and through the base model's frozen output embedding E (V × d): z = E·(P·o) + b, one extra
output-layer product per step and (F + 2)·d + A parameters instead of (F + 2)·A; actions
beyond the vocabulary (help) get a small linear map of their own.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from klbudget.core.budget import step_target
from klbudget.core.kl import kl_exact
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
    """Linear head: obs → (z, s).

    With `mixture` (the budget agent) it plays the fixed-KL mixture; without it (the
    KL-penalty agent) it plays π = softmax(z + log β) with k = 0 and α = 1, whatever
    `budget_left` says. Both have the same parameters, so checkpoints look alike.
    """

    def __init__(
        self,
        obs_dim: int,
        num_actions: int,
        mixture: bool = True,
        out_embed: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.mixture = mixture
        if out_embed is None:  # the paper's head: one linear map to every action
            self.z = nn.Linear(obs_dim, num_actions)
            nn.init.zeros_(self.z.weight)
            nn.init.zeros_(self.z.bias)
        else:  # through the base model's frozen output embedding (V, d)
            vocab, width = out_embed.shape
            if vocab > num_actions:
                raise ValueError(f"output embedding has {vocab} rows for {num_actions} actions")
            # Not saved with the agent: it is the base model's, rebuilt from it on load.
            self.register_buffer("out_embed", out_embed.detach().float(), persistent=False)
            self.proj = nn.Linear(obs_dim, width, bias=False)
            nn.init.zeros_(self.proj.weight)
            self.z_bias = nn.Parameter(torch.zeros(num_actions))
            self.extra = None  # actions beyond the vocabulary (help) get their own map
            if num_actions > vocab:
                self.extra = nn.Linear(obs_dim, num_actions - vocab)
                nn.init.zeros_(self.extra.weight)
                nn.init.zeros_(self.extra.bias)
        self.s = nn.Linear(obs_dim, 1)
        nn.init.zeros_(self.s.weight)
        nn.init.zeros_(self.s.bias)

    @property
    def head(self) -> str:
        """ "full" (obs → every action) or "embed" (obs → width → the output embedding)."""
        return "full" if hasattr(self, "z") else "embed"

    def logits(self, obs: Tensor) -> Tensor:
        """z, (B, A): the proposal's offset from log β."""
        if hasattr(self, "z"):
            return self.z(obs)
        z = self.proj(obs) @ self.out_embed.T  # (B, V): one output-layer product
        if self.extra is not None:
            z = torch.cat([z, self.extra(obs)], -1)
        return z + self.z_bias

    def forward(
        self,
        obs: Tensor,
        base_logp: Tensor,
        budget_left: Tensor,
        alpha0: Tensor | None = None,
        log_a: Tensor | None = None,
    ) -> Played:
        """The played distribution; `alpha0` (B,), a guess of α where the mixture's solve
        starts (the rollout's α when PPO replays its steps): the same root to the solver's
        tolerance (1e-5 relative in float32), so only rounding changes. `log_a` (B, A), a
        proposal computed elsewhere (the LoRA actor's LM, `klbudget.agent.lora`), instead
        of softmax(z + log β)."""
        if log_a is None:
            log_a = torch.log_softmax(self.logits(obs) + base_logp, -1)  # z: (B, A)
        if not self.mixture:
            zeros = torch.zeros(log_a.shape[:-1], dtype=log_a.dtype, device=log_a.device)
            return Played(log_a, kl_exact(log_a, base_logp), zeros, torch.ones_like(zeros))
        s = self.s(obs).squeeze(-1)  # (B,)
        k = step_target(s, budget_left)
        out = fixed_kl_mixture(log_a, base_logp, k, alpha0=alpha0)
        return Played(out.log_x, out.kl, k, out.alpha)


def budget_input(actor: Actor, budget_left: Tensor) -> Tensor:
    """What the actor's observation sees as budget_left: the budget itself for the budget
    agent, 0 for a KL-penalty agent (it has no budget; its budget may be +inf)."""
    return budget_left if actor.mixture else torch.zeros_like(budget_left)


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
