"""Categorical sampling by inverse CDF: one uniform per row, one cumsum, one search.

On CPU this is an order of magnitude faster than `torch.multinomial` for vocabulary-sized
rows, and it never returns an outcome of probability 0: it returns the first i with
CDF_i > u, so CDF_i > CDF_{i-1}.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sample_categorical(
    log_p: Tensor, generator: torch.Generator | None = None, u: Tensor | None = None
) -> Tensor:
    """One sample per row of `log_p` (B, V) (unnormalised allowed); returns (B,) int64.
    `u`: the (B, 1) uniforms in [0, 1) to use, instead of drawing them from `generator`."""
    cdf = torch.cumsum(log_p.exp(), -1)  # (B, V)
    if u is None:
        u = torch.rand(cdf.shape[:-1] + (1,), generator=generator, dtype=cdf.dtype)
    idx = torch.searchsorted(cdf, u.to(cdf.dtype) * cdf[..., -1:], right=True).squeeze(-1)
    return idx.clamp(max=log_p.shape[-1] - 1)
