"""Best-of-n at the episode level: the selection and its exact KL to β."""

from __future__ import annotations

import math

import numpy as np
import pytest

from klbudget.core.best_of_n import kl_best_of_n, kl_bound, select


def test_bound_formula():
    assert kl_bound(1) == 0.0
    assert kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    assert kl_bound(16) == pytest.approx(math.log(16) - 15 / 16)


@pytest.mark.parametrize("n", [2, 4, 16, 64])
def test_tie_free_pool_reaches_the_bound(n):
    pool = np.random.default_rng(n).normal(size=100_000)
    kl = kl_best_of_n(pool, n)
    assert kl == pytest.approx(kl_bound(n), rel=1e-6)
    assert kl <= kl_bound(n)
    # A small tie-free pool is a coarser distribution: strictly below the bound.
    assert kl_best_of_n(pool[:20], n) < kl_bound(n) - 1e-6


def test_small_pool_by_hand():
    # Two episodes, n = 2: the better one is picked w.p. 3/4 (ratio 3/2), the worse 1/4.
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert kl_best_of_n(np.array([3.0, -1.0]), 2) == pytest.approx(expected, rel=1e-12)
    # Ties: levels {0 (mass 1/2), 1 (mass 1/2)} with n = 3.
    pool = np.array([0.0, 1.0, 0.0, 1.0])
    expected = 0.125 * math.log(0.125 / 0.5) + 0.875 * math.log(0.875 / 0.5)
    assert kl_best_of_n(pool, 3) == pytest.approx(expected, rel=1e-12)


def test_ties_lower_the_kl():
    rng = np.random.default_rng(0)
    distinct = rng.normal(size=1000)
    tied = np.round(distinct)  # a handful of levels
    for n in (2, 4, 8):
        assert kl_best_of_n(tied, n) < kl_best_of_n(distinct, n) - 1e-3
    assert kl_best_of_n(np.full(50, 0.7), 8) == 0.0  # one level: π_n = β


def test_n_one_is_free():
    pool = np.random.default_rng(1).normal(size=37)
    assert kl_best_of_n(pool, 1) == 0.0
    assert kl_best_of_n(np.round(pool), 1) == 0.0


def test_select_picks_the_max_of_each_group():
    rng = np.random.default_rng(2)
    returns = rng.integers(0, 5, size=103).astype(float)
    idx = select(returns, 10, rng)
    assert idx.shape == (10,)
    groups = returns[:100].reshape(10, 10)
    assert np.array_equal(idx // 10, np.arange(10))  # one index inside each group
    assert np.array_equal(returns[idx], groups.max(axis=1))
    assert np.array_equal(select(returns, 1, rng), np.arange(103))


def test_select_breaks_ties_uniformly():
    rng = np.random.default_rng(3)
    n, groups = 4, 40_000
    returns = np.zeros(n * groups)
    returns[1::n] = -1.0  # position 1 of every group is never best; 0, 2 and 3 tie
    pos = select(returns, n, rng) % n
    freq = np.bincount(pos, minlength=n) / groups
    assert freq[1] == 0.0
    np.testing.assert_allclose(freq[[0, 2, 3]], 1 / 3, atol=0.01)


def test_selected_levels_follow_the_formula():
    """Best-of-n by `select` on a large pool picks each return level with probability
    F(r)^n − F(r−)^n: the quantities inside kl_best_of_n."""
    rng = np.random.default_rng(4)
    levels, probs, n = np.array([0.0, 1.0, 2.5]), np.array([0.5, 0.3, 0.2]), 3
    pool = rng.choice(levels, p=probs, size=3 * 60_000)
    picked = pool[select(pool, n, rng)]
    freq = np.array([(picked == v).mean() for v in levels])
    b = np.cumsum(probs)
    a = b - probs
    np.testing.assert_allclose(freq, b**n - a**n, atol=0.01)
    # and the KL of those level probabilities is what kl_best_of_n reports for the pool
    mass = np.array([(pool == v).mean() for v in levels])
    bb = np.cumsum(mass)
    aa = bb - mass
    pick = bb**n - aa**n
    assert kl_best_of_n(pool, n) == pytest.approx(float(np.sum(pick * np.log(pick / mass))))


def test_bad_input():
    with pytest.raises(ValueError):
        select(np.zeros(3), 4, np.random.default_rng(0))
    with pytest.raises(ValueError):
        select(np.zeros(3), 0, np.random.default_rng(0))
    with pytest.raises(ValueError):
        kl_best_of_n(np.array([]), 2)
    with pytest.raises(ValueError):
        kl_best_of_n(np.array([0.0, np.nan]), 2)
