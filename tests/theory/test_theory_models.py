"""Model class, description lengths and exact posteriors, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from klbudget.theory.models import (
    NEVER,
    ModelClass,
    all_sequences,
    build_class,
    elias_delta_bits,
    enumerate_events,
    episode_offsets,
    grid_distributions,
    make_events,
    model_sequence_prob,
    number_bits,
    posterior,
    trigger_point_reference,
    trigger_points,
)


def tiny_class() -> ModelClass:
    """A = {0, 1}; bases (1,0), (1/2,1/2), (0,1); one event time(1).

    K(bare) = 1 + log2 3, so 2^-K = 1/6; K(time(1)) = 2 + N(1) = 2 + 1 + δ(1) = 4 and
    K(c) = log2 2 = 1, so a switch model has 2^-K = 1/6 · 2^-5 = 1/192.
    """
    return ModelClass(
        bases=grid_distributions(2, 2),
        events=make_events(2, times=[1]),
        base_bits=math.log2(3),
    )


def test_elias_delta_and_number_codes_match_hand_values() -> None:
    # δ(n) = ⌊log2 n⌋ + 2⌊log2(⌊log2 n⌋+1)⌋ + 1
    assert elias_delta_bits([1, 2, 3, 4, 7, 8, 16, 1000]).tolist() == [1, 4, 4, 5, 5, 8, 9, 16]
    # N(n) = 1 + min(literal, power of two): 2 = 2^1 costs 1 + δ(1) = 2, 1024 = 2^10 costs 9
    assert number_bits([1, 2, 3, 1024, 1000]).tolist() == [2, 2, 5, 9, 17]
    with pytest.raises(ValueError):
        elias_delta_bits(0)


def test_codes_satisfy_kraft() -> None:
    ns = np.arange(1, 200_000)
    assert np.sum(2.0 ** -number_bits(ns)) <= 1.0
    events = enumerate_events(3, max_bits=30.0, max_count=4096, max_substring_len=6)
    assert np.sum(2.0**-events.bits) <= 1.0
    # the class prior is normalised over the finite class
    cls = build_class(max_event_bits=12.0, max_count=64, max_substring_len=2)
    total = np.sum(2.0**cls.log2_prior_bare) + np.sum(2.0**cls.log2_prior_switch)
    assert total == pytest.approx(1.0)


def test_switch_prior_costs_event_plus_behaviour_bits() -> None:
    cls = tiny_class()
    assert cls.bits((0,)) == pytest.approx(1 + math.log2(3))
    assert cls.bits((0, 0, 1)) - cls.bits((0,)) == pytest.approx(4 + 1)
    assert cls.describe((1, 0, 1)) == "iid(0.5,0.5) until time(1), then 1"


def test_posterior_weights_tiny_case_by_hand() -> None:
    # h = "0": likelihoods 1, 1/2, 0 for the bases; time(1) fires at the last demonstrated
    # symbol, so each switch model's likelihood is its base's. In units of 1/384:
    # bare 64, 32, 0; switch (b=(1,0), c) 2 each, (b=(1/2,1/2), c) 1 each; total 102.
    post = posterior(tiny_class(), np.array([0]))
    np.testing.assert_allclose(post.bare, [64 / 102, 32 / 102, 0.0])
    np.testing.assert_allclose(post.switch[:, 0, :], [[2 / 102] * 2, [1 / 102] * 2, [0, 0]])
    assert post.log_evidence == pytest.approx(math.log(102 / 384 / (1 / 6 * 3 + 6 / 192)))


def test_posterior_equals_brute_force_bayes() -> None:
    cls = build_class(max_event_bits=11.0, max_count=40, max_substring_len=2)
    h = np.random.default_rng(3).choice(3, size=14, p=[0.75, 0.25, 0.0])
    models = [(b,) for b in range(len(cls.bases))] + [
        (b, e, c) for b in range(len(cls.bases)) for e in range(len(cls.events)) for c in range(3)
    ]
    prior = np.array([2.0 ** -cls.bits(m) for m in models])
    joint = prior * np.array([model_sequence_prob(cls, m, h) for m in models])
    post = posterior(cls, h)
    np.testing.assert_allclose(
        np.concatenate([post.bare, post.switch.ravel()]), joint / joint.sum(), atol=1e-14
    )


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2), min_size=0, max_size=30))
def test_trigger_points_match_reference(seq: list[int]) -> None:
    events = enumerate_events(3, max_bits=12.0, max_count=40, max_substring_len=3)
    fast = trigger_points(events, np.asarray(seq, dtype=np.int64), 3)
    slow = [trigger_point_reference(events, i, seq) for i in range(len(events))]
    assert fast.tolist() == slow


def test_episode_offsets_match_reference() -> None:
    events = enumerate_events(3, max_bits=12.0, max_count=40, max_substring_len=3)
    h = np.array([0, 1, 1, 0, 0, 0, 1])
    leaves = all_sequences(3, 3)
    J = episode_offsets(events, h, leaves, 3)
    for x, row in zip(leaves, J, strict=True):
        for e in range(len(events)):
            tp = trigger_point_reference(events, e, np.concatenate([h, x]))
            expected = 0 if tp <= h.size else min(tp - h.size, 3)
            assert row[e] == expected, (x, events.describe(e))


def test_event_semantics_examples() -> None:
    events = make_events(3, substrings=[(1, 1)], runs=[(0, 3)], times=[4])
    seq = [0, 1, 1, 0, 0, 0]
    assert [trigger_point_reference(events, i, seq) for i in range(3)] == [3, 6, 4]
    assert trigger_point_reference(events, 2, seq[:3]) == NEVER
