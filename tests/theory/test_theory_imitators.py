"""ξ, ν_α and the construction's bound, against hand values and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest

from klbudget.theory.imitators import (
    bayes_leaf_probs,
    mixture_next,
    pessimistic_next,
    pessimistic_tree,
    plausible_mask,
    switch_bound,
)
from klbudget.theory.models import (
    ModelClass,
    all_sequences,
    build_class,
    episode_offsets,
    grid_distributions,
    make_events,
    model_next_probs,
    posterior,
)

TAU = np.array([0.75, 0.25, 0.0])


def tiny_class() -> ModelClass:
    """See test_theory_models.tiny_class: posterior after "0" is 64, 32, 0 | 2, 2, 1, 1 /102."""
    return ModelClass(
        bases=grid_distributions(2, 2), events=make_events(2, times=[1]), base_bits=math.log2(3)
    )


def test_mixture_and_pessimistic_next_by_hand() -> None:
    preds = np.array([[0.75, 0.25, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    w = np.array([0.6, 0.3, 0.1])
    np.testing.assert_allclose(mixture_next(w, preds), [0.6, 0.3, 0.1])
    nu, help_mass = pessimistic_next(preds, plausible_mask(w, 0.2))
    np.testing.assert_allclose(nu, [0.5, 0.25, 0.0])
    assert help_mass == pytest.approx(0.25)
    nu, help_mass = pessimistic_next(preds, plausible_mask(w, 0.05))
    np.testing.assert_allclose(nu, [0.0, 0.0, 0.0])
    assert help_mass == 1.0
    with pytest.raises(ValueError):
        pessimistic_next(preds, plausible_mask(w, 0.9))


def test_tiny_case_xi_and_nu_alpha_by_hand() -> None:
    cls, h = tiny_class(), np.array([0])
    post = posterior(cls, h)
    leaves = all_sequences(2, 1)
    # ξ(1 | "0") = (1/2)·32/102 + 2/102 + 1/102 (the switch models emitting 1 after time(1))
    np.testing.assert_allclose(bayes_leaf_probs(cls, post, h, leaves), [83 / 102, 19 / 102])
    offsets = episode_offsets(cls.events, h, leaves, 2)
    # α = 0.05: only the bases (1,0) and (1/2,1/2) are plausible -> ν = (1/2, 0), help 1/2
    nu, helps = pessimistic_tree(cls, post, offsets, alpha=0.05, horizon=1)
    np.testing.assert_allclose(nu[0], [[0.5, 0.0]])
    np.testing.assert_allclose(helps[0], [0.5])
    # α = 0.015 also admits "(1,0) until time(1), then c" for c = 0, 1: every symbol has a
    # plausible model that gives it probability 0 -> all mass goes to help
    nu, helps = pessimistic_tree(cls, post, offsets, alpha=0.015, horizon=1)
    np.testing.assert_allclose(nu[0], [[0.0, 0.0]])
    np.testing.assert_allclose(helps[0], [1.0])


def test_switch_bound_tiny_case_by_hand() -> None:
    cls, h = tiny_class(), np.array([0])
    post = posterior(cls, h)
    leaves = all_sequences(2, 1)
    offsets = episode_offsets(cls.events, h, leaves, 2)
    bound = switch_bound(cls, post, 1, leaves, offsets, behaviour=1)
    # x = "1" via (b, time(1), 1): ln2·(K(E) + K(c)) - ln w(b|h) = 5 ln 2 + ln(102/64)
    assert bound.nats[1] == pytest.approx(5 * math.log(2) + math.log(102 / 64))
    assert -math.log(19 / 102) <= bound.nats[1]
    assert bound.event_bits[1] == 4 and bound.offset[1] == 0 and bound.base[1] == 0
    assert math.isinf(bound.nats[0])  # "0" is not "always 1" after any offset


@pytest.fixture(scope="module")
def small_world() -> dict:
    cls = build_class(max_event_bits=11.0, max_count=40, max_substring_len=2)
    h = np.random.default_rng(5).choice(3, size=16, p=TAU)
    post = posterior(cls, h)
    models = [(b,) for b in range(len(cls.bases))] + [
        (b, e, c) for b in range(len(cls.bases)) for e in range(len(cls.events)) for c in range(3)
    ]
    weights = np.concatenate([post.bare, post.switch.ravel()])
    return {"cls": cls, "h": h, "post": post, "models": models, "w": weights}


def _chain_prob(cls: ModelClass, model: tuple[int, ...], h: np.ndarray, x: np.ndarray) -> float:
    prob, y = 1.0, list(h)
    for s in x:
        prob *= float(model_next_probs(cls, model, np.asarray(y))[s])
        y.append(int(s))
    return prob


def test_bayes_leaf_probs_equal_brute_force(small_world: dict) -> None:
    cls, h, post = small_world["cls"], small_world["h"], small_world["post"]
    leaves = all_sequences(3, 3)
    fast = bayes_leaf_probs(cls, post, h, leaves)
    slow = [
        sum(
            w * _chain_prob(cls, m, h, x)
            for m, w in zip(small_world["models"], small_world["w"], strict=True)
            if w > 0
        )
        for x in leaves
    ]
    np.testing.assert_allclose(fast, slow, atol=1e-14)
    assert fast.sum() == pytest.approx(1.0)


def test_pessimistic_tree_equals_brute_force(small_world: dict) -> None:
    cls, h, post = small_world["cls"], small_world["h"], small_world["post"]
    horizon, alpha = 3, 1e-3
    leaves = all_sequences(3, horizon)
    nu, helps = pessimistic_tree(
        cls, post, episode_offsets(cls.events, h, leaves, 3), alpha, horizon
    )
    plausible = plausible_mask(small_world["w"], alpha)
    assert 1 < plausible.sum() < len(plausible)
    for d in range(horizon):
        for i, x in enumerate(all_sequences(3, d)):
            y = np.concatenate([h, x]).astype(np.int64)
            preds = np.array([model_next_probs(cls, m, y) for m in small_world["models"]])
            ref_nu, ref_help = pessimistic_next(preds, plausible)
            np.testing.assert_allclose(nu[d][i], ref_nu)
            assert helps[d][i] == pytest.approx(ref_help)


def test_nu_alpha_below_tau_while_tau_is_plausible() -> None:
    cls = build_class(max_event_bits=12.0, max_count=64, max_substring_len=2)
    tau_index = int(np.flatnonzero(np.all(cls.bases == TAU, axis=1))[0])
    rng = np.random.default_rng(0)
    for _ in range(5):
        h = rng.choice(3, size=int(rng.integers(5, 60)), p=TAU)
        post = posterior(cls, h)
        assert post.bare[tau_index] >= 2.0**-10
        leaves = all_sequences(3, 3)
        nu, _ = pessimistic_tree(cls, post, episode_offsets(cls.events, h, leaves, 3), 2.0**-10, 3)
        for level in nu:
            assert np.all(level <= TAU[None, :] + 1e-15)


def test_switch_bound_dominates_xi_everywhere(small_world: dict) -> None:
    cls, h, post = small_world["cls"], small_world["h"], small_world["post"]
    leaves = all_sequences(3, 4)
    offsets = episode_offsets(cls.events, h, leaves, 3)
    xi = bayes_leaf_probs(cls, post, h, leaves, offsets)
    bound = switch_bound(cls, post, h.size, leaves, offsets, behaviour=2)
    finite = np.isfinite(bound.nats)
    assert finite.sum() > 0
    assert np.all(-np.log(xi[finite]) <= bound.nats[finite] + 1e-12)
    # the bound's parts add up
    parts = (
        math.log(2) * (bound.event_bits + cls.behaviour_bits)
        + bound.posterior_nats
        + bound.trigger_nats
    )
    np.testing.assert_allclose(bound.nats[finite], parts[finite])
