r"""Best-of-n at the episode level: play β n times, keep the episode with the highest return.

The best-of-n policy π_n needs no training; its KL to β is what it costs. When β's episode
return takes values r with CDF F, π_n picks an episode whose return is at level r with
probability F(r)^n − F(r−)^n (the largest of n draws lands there), and every episode at
that level is equally likely, so the likelihood ratio π_n/β on the level is
(F(r)^n − F(r−)^n) / (F(r) − F(r−)). Summing over levels,

    KL(π_n‖β) = Σ_r (b^n − a^n)·log((b^n − a^n)/(b − a)),     a = F(r−), b = F(r).

For a continuous return (no ties) this is log n − (n − 1)/n, and that is an upper bound for
every return distribution: merging returns into coarser levels can only lower a KL. Here
β's return distribution is the empirical one of a pool of N β episodes; with N distinct
returns the KL is below the bound by a gap that vanishes as N grows (about 1e-4 nats at
n = 4, N = 100), ties lower it further, and n = 1 gives 0.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["kl_best_of_n", "kl_bound", "select"]


def select(returns: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Index of the best episode of each group of n.

    The pool is cut in order into ⌊len/n⌋ disjoint groups [0, n), [n, 2n), ... (a leftover
    of fewer than n episodes is not used); within a group the highest return wins, ties
    broken uniformly at random with `rng`. Returns int64 indices into `returns`.
    """
    r = np.asarray(returns, dtype=np.float64).reshape(-1)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if np.isnan(r).any():
        raise ValueError("returns must not be NaN")
    groups = r.size // n
    if groups == 0:
        raise ValueError(f"a pool of {r.size} episodes has no group of {n}")
    block = r[: groups * n].reshape(groups, n)
    best = block == block.max(axis=1, keepdims=True)
    # A uniform random key per candidate; the largest key among the tied best wins.
    keys = np.where(best, rng.random(block.shape), -1.0)
    return np.arange(groups) * n + keys.argmax(axis=1)


def kl_best_of_n(returns_pool: np.ndarray, n: int) -> float:
    """Exact KL(π_n‖β) of best-of-n when β's return is the pool's empirical distribution."""
    r = np.asarray(returns_pool, dtype=np.float64).reshape(-1)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if r.size == 0:
        raise ValueError("the pool is empty")
    if np.isnan(r).any():
        raise ValueError("returns must not be NaN")
    if n == 1:
        return 0.0
    _, counts = np.unique(r, return_counts=True)  # levels in increasing order
    b = np.cumsum(counts) / r.size  # F(r)
    a = b - counts / r.size  # F(r−)
    b[-1] = 1.0  # exact, whatever the rounding of the sum
    # b^n − a^n = b^n·(1 − (a/b)^n), without cancellation when a is close to b.
    with np.errstate(divide="ignore"):
        log_ab = np.where(a > 0, np.log(a) - np.log(b), -np.inf)
    pick = b**n * -np.expm1(n * log_ab)
    mass = counts / r.size
    kl = float(np.sum(np.where(pick > 0, pick * np.log(pick / mass), 0.0)))
    return max(kl, 0.0)


def kl_bound(n: int) -> float:
    """log n − (n − 1)/n: KL(π_n‖β) when β's return has no ties; an upper bound otherwise."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n
