"""The base-policy protocol (docs/design.md, "Observation", "Pessimistic bases").

A base policy advances N aligned conversations one token per call and reports, for the
next position of each: the environment model's raw logits (the student is sampled from
them), the base policy's log-probabilities over the agent's actions, and features for the
agent. Actions are token ids; a base policy may add extra actions after the vocabulary
(a pessimistic imitator adds *help* as action V), which is why `num_actions` and
`vocab_size` are separate. Mixtures and ensembles compose implementations of this
protocol; the agent only ever sees `BaseStep`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

# Who wrote a token, as the environment reports it to a base policy's optional
# `observe(writers)` before each `step` (ensembles update their posterior with it).
WRITER_AGENT, WRITER_ENV, WRITER_DEMONSTRATOR = 1, 2, 3


@dataclass(frozen=True)
class BaseStep:
    """What the base policy says about the next position of every conversation."""

    env_logits: Tensor  # (B, V) raw next-token logits of the environment (student) model
    logp: Tensor  # (B, A) log β(action) at the base temperature; A = num_actions ≥ V
    features: Tensor  # (B, F) agent observation: last-3-layer hidden states, concatenated


def help_action(base: BasePolicy) -> int | None:
    """Index of the help action (V) when the base policy has one, else None."""
    return base.vocab_size if base.num_actions > base.vocab_size else None


@runtime_checkable
class BasePolicy(Protocol):
    """Batched next-token model with an incremental cache over aligned conversations."""

    vocab_size: int  # V, the tokenizer's vocabulary
    num_actions: int  # A, actions the agent may take (V, or V + 1 with help)
    feature_dim: int  # F
    max_length: int  # longest transcript the model can hold, in tokens

    def reset(self, input_ids: Tensor, capacity: int | None = None) -> BaseStep:
        """Start N conversations from `input_ids` (N, T0) and describe position T0.

        `capacity` is the longest the conversations will grow (lets the cache be
        preallocated); None means unknown.
        """
        ...

    def step(self, tokens: Tensor) -> BaseStep:
        """Append one token (N,) to every conversation and describe the next position."""
        ...

    def score(self, input_ids: Tensor) -> Tensor:
        """Teacher-forced log β(x_t | x_<t) of every token after the first, shape (N, T−1)."""
        ...
