"""The Bayesian imitator ξ and the pessimistic imitator ν_α, exactly, over a ``ModelClass``.

* Bayesian imitator (paper §3): ξ(x | h) = Σ_ν w(ν | h) ν(x | h), the posterior predictive.
  It conditions on everything it sees, the agent's own symbols included (as a language model
  conditions on the whole transcript).
* Pessimistic imitator (paper §5; Cohen, Hutter, Nanda, "Fully General Online Imitation
  Learning", JMLR 2022): ν_α(a | x) = min_{ν ∈ M^α} ν(a | h·x), and the leftover mass
  1 - Σ_a ν_α(a | x) is the *help* action: ask the demonstrator to act.

Plausibility rule
-----------------
M^α = {ν : w(ν | h) ≥ α}: α is a threshold on the **posterior weight** (not on the
posterior-to-prior ratio). Consequences: at most 1/α models are plausible, so the help mass
stays bounded; and by Ville's inequality applied to the τ-martingale ξ(h)/τ(h),
Pr[τ ever leaves M^α] ≤ α / w(τ), so with that probability ν_α ≤ τ pointwise and a KL budget
against ν_α is a budget against τ. M^α is fixed by the demonstrations h for a whole episode:
the agent's own symbols never vote a model out (otherwise the agent could steer τ out of the
set), while each plausible model's *prediction* does condition on the full history h·x.

Trees
-----
For an episode of H steps after h, continuations x ∈ A^H are the leaves of a tree (rows of
``all_sequences``). ξ is computed on the leaves and marginalised to the inner nodes; ν_α is
computed node by node. Both use ``episode_offsets`` J[x, e] and aggregate the (b, E, c)
models by where their event fires, so the cost is O(|A|^H · (|E| + H·B·|A|)), not O(#models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from klbudget.theory.models import ModelClass, Posterior, episode_offsets

# ----------------------------------------------------------------------------- one history


def mixture_next(weights: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """ξ(a | h) = Σ_ν w(ν | h) ν(a | h) / Σ_ν w(ν | h); predictions is (M, A)."""
    weights = np.asarray(weights, dtype=np.float64)
    return weights @ predictions / weights.sum()


def plausible_mask(weights: np.ndarray, alpha: float) -> np.ndarray:
    """M^α as a mask: posterior weight w(ν | h) ≥ α."""
    return np.asarray(weights) >= alpha


def pessimistic_next(predictions: np.ndarray, plausible: np.ndarray) -> tuple[np.ndarray, float]:
    """ν_α(a | h) = min over plausible ν of ν(a | h), and the help mass 1 - Σ_a ν_α(a | h)."""
    if not np.any(plausible):
        raise ValueError("no plausible model: alpha exceeds every posterior weight")
    nu = np.min(np.asarray(predictions)[np.asarray(plausible)], axis=0)
    return nu, float(max(0.0, 1.0 - nu.sum()))


# ----------------------------------------------------------------------------- trees


def _prefix_probs(bases: np.ndarray, continuations: np.ndarray) -> np.ndarray:
    """Pb[x, j, b] = b(x_{1:j}) for j = 0..H."""
    with np.errstate(divide="ignore"):
        steps = np.log(bases)[:, continuations].transpose(1, 2, 0)  # (L, H, B)
    logs = np.concatenate([np.zeros_like(steps[:, :1]), np.cumsum(steps, axis=1)], axis=1)
    return np.exp(logs)


def _suffix_constant(continuations: np.ndarray, alphabet_size: int) -> np.ndarray:
    """Ic[x, j, c] = 1 if x_{j+1:H} is all c (true for the empty suffix j = H)."""
    n_seq, horizon = continuations.shape
    out = np.ones((n_seq, horizon + 1, alphabet_size))
    for c in range(alphabet_size):
        eq = (continuations == c)[:, ::-1]
        out[:, :horizon, c] = np.cumprod(eq, axis=1)[:, ::-1]
    return out


def bayes_leaf_probs(
    cls: ModelClass,
    post: Posterior,
    history: np.ndarray,
    continuations: np.ndarray,
    offsets: np.ndarray | None = None,
) -> np.ndarray:
    """ξ(x | h) = Σ_ν w(ν | h) ν(x | h) for every continuation x (rows of ``continuations``).

    A switch model whose event fires at offset j has ν(x | h) = b(x_{1:j}) · 1[x_{j+1:H} ≡ c],
    so ξ(x | h) = Σ_b w_b b(x) + Σ_{j,b,c} b(x_{1:j}) 1[x_{j+1:H} ≡ c] Ω[x, j, b, c] with
    Ω[x, j, b, c] = Σ_{E : J[x, E] = j} w(b, E, c | h).
    """
    x = np.asarray(continuations, dtype=np.int64)
    n_seq, horizon = x.shape
    if offsets is None:
        offsets = episode_offsets(cls.events, history, x, cls.alphabet_size, post.trigger)
    Pb = _prefix_probs(cls.bases, x)  # (L, H+1, B)
    Ic = _suffix_constant(x, cls.alphabet_size)  # (L, H+1, C)
    probs = Pb[:, horizon, :] @ post.bare
    if len(cls.events) == 0:
        return probs
    w = post.switch  # (B, E, C)
    B, E, C = w.shape
    # most events fire at the same offset on every leaf (times, and events already seen or out
    # of reach): sum their weights once per offset instead of once per leaf
    static = np.all(offsets == offsets[:1], axis=0)
    omega_static = np.zeros((horizon + 1, B, C))
    np.add.at(omega_static, offsets[0, static], w[:, static, :].transpose(1, 0, 2))
    probs = probs + np.einsum("ljb,ljc,jbc->l", Pb, Ic, omega_static)
    dynamic = np.flatnonzero(~static)
    if dynamic.size:
        wd = w[:, dynamic, :].transpose(1, 0, 2).reshape(dynamic.size, B * C)
        Jd = offsets[:, dynamic]
        # einsum rather than @: small matrix products are faster without BLAS threading
        omega = np.stack(
            [np.einsum("le,ek->lk", (Jd == j).astype(np.float64), wd) for j in range(horizon + 1)],
            axis=1,
        )
        probs = probs + np.einsum("ljb,ljc,ljbc->l", Pb, Ic, omega.reshape(n_seq, -1, B, C))
    return probs


def pessimistic_tree(
    cls: ModelClass,
    post: Posterior,
    offsets: np.ndarray,
    alpha: float,
    horizon: int,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """ν_α(· | x) and the help mass at every inner node x of the continuation tree.

    A plausible switch model predicts its constant c at x if its event has fired by x, and its
    base b otherwise; so ν_α(a | x) = min(min over bases b of a plausible model that has not
    switched at x of b(a), min over constants c of a plausible model that has of 1[c = a]).

    Args:
        offsets: ``episode_offsets`` on the full tree's leaves (lexicographic, |A|^H rows).
        horizon: H, the depth of the tree.
    Returns:
        (nu, help): nu[d] is (|A|^d, |A|) and help[d] is (|A|^d,) for d = 0..H-1.
    """
    A = cls.alphabet_size
    bare_ok = post.bare >= alpha  # (B,)
    switch_ok = post.switch >= alpha  # (B, E, C)
    if not (bare_ok.any() or switch_ok.any()):
        raise ValueError("no plausible model: alpha exceeds every posterior weight")
    events = np.flatnonzero(switch_ok.any(axis=(0, 2)))
    by_base = switch_ok[:, events, :].any(axis=2).T.astype(np.float64)  # (Ep, B)
    by_const = switch_ok[:, events, :].any(axis=0).astype(np.float64)  # (Ep, C)
    eye = np.eye(A)
    nus, helps = [], []
    for d in range(horizon):
        first_leaf = np.arange(A**d) * A ** (horizon - d)
        fired = (offsets[first_leaf][:, events] <= d).astype(np.float64)  # (n_d, Ep)
        on_base = bare_ok[None, :] | (np.einsum("ne,eb->nb", 1.0 - fired, by_base) > 0)
        on_const = np.einsum("ne,ec->nc", fired, by_const) > 0
        nu_b = np.where(on_base[:, :, None], cls.bases[None], np.inf).min(axis=1)
        nu_c = np.where(on_const[:, :, None], eye[None], np.inf).min(axis=1)
        nu = np.minimum(nu_b, nu_c)
        nus.append(nu)
        helps.append(np.clip(1.0 - nu.sum(axis=1), 0.0, 1.0))
    return nus, helps


# ----------------------------------------------------------------------------- the bound


@dataclass(frozen=True, eq=False)
class SwitchBound:
    """Per continuation x: the theorem-style bound -ln ξ(x | h) ≤ ``nats`` and its parts.

    nats = ln2·(K(E) + K(c)) + [-ln w(b | h)] + [-ln b(x_{1:j})] for the best switch model
    (b, E, c) with E unprecedented in h, firing at offset j, and x_{j+1:H} ≡ c.
    """

    nats: np.ndarray  # (L,) the bound (inf if no such model explains x)
    event: np.ndarray  # (L,) index of the event E achieving it (-1 if none)
    base: np.ndarray  # (L,) index of the base b
    offset: np.ndarray  # (L,) offset j where E fires
    event_bits: np.ndarray  # (L,) K(E)
    posterior_nats: np.ndarray  # (L,) -ln w(b | h), the stationary model's posterior
    trigger_nats: np.ndarray  # (L,) -ln b(x_{1:j}), the price of reaching E


def switch_bound(
    cls: ModelClass,
    post: Posterior,
    history_length: int,
    continuations: np.ndarray,
    offsets: np.ndarray,
    behaviour: int,
) -> SwitchBound:
    """The paper's construction as an explicit bound on -ln ξ(x | h), for each x.

    For E unprecedented in h (tp_E(h) ≥ k), ν′ = (b, E, c) has ν′(h) = b(h), hence
    w(ν′ | h) = 2^-(K(E)+K(c)) w(b | h) and ξ(x | h) ≥ w(ν′ | h) ν′(x | h)
    = 2^-(K(E)+K(c)) w(b | h) b(x_{1:j}) 1[x_{j+1:H} ≡ c]. The deterministic policy that plays
    x therefore has KL(π‖ξ) = -ln ξ(x | h) ≤ ln2·(K(E) + K(U)) + [-ln w(b|h)] + [-ln b(x_{1:j})],
    with K(U) = K(c) the complexity of the utility-maximising behaviour "always c".
    """
    x = np.asarray(continuations, dtype=np.int64)
    n_seq, horizon = x.shape
    fresh = np.flatnonzero(post.trigger >= history_length)  # unprecedented events
    bits = cls.events.bits[fresh]
    off = offsets[:, fresh]
    # cheapest event per (leaf, offset); events and bases separate because the bound is a sum.
    # Events firing at the same offset on every leaf are reduced once, the others per leaf.
    static = np.all(off == off[:1], axis=0) if fresh.size else np.zeros(0, dtype=bool)
    event_bits = np.full((n_seq, horizon + 1), np.inf)
    event_arg = np.full((n_seq, horizon + 1), -1, dtype=np.int64)
    dynamic = np.flatnonzero(~static)
    for j in range(horizon + 1):
        same = np.flatnonzero(static & (off[0] == j))
        if same.size:
            event_bits[:, j] = bits[same].min()
            event_arg[:, j] = fresh[same[np.argmin(bits[same])]]
        if dynamic.size:
            masked = np.where(off[:, dynamic] == j, bits[dynamic][None, :], np.inf)
            arg = np.argmin(masked, axis=1)
            cand = masked[np.arange(n_seq), arg]
            better = cand < event_bits[:, j]
            event_bits[:, j] = np.where(better, cand, event_bits[:, j])
            event_arg[:, j] = np.where(better, fresh[dynamic][arg], event_arg[:, j])
    with np.errstate(divide="ignore"):
        base_nats = -np.log(_prefix_probs(cls.bases, x)) - post.log_bare[None, None, :]
    base_arg = np.argmin(base_nats, axis=2)  # (L, H+1)
    base_best = np.take_along_axis(base_nats, base_arg[:, :, None], axis=2)[:, :, 0]
    valid = _suffix_constant(x, cls.alphabet_size)[:, :, behaviour] > 0
    total = math.log(2.0) * (event_bits + cls.behaviour_bits) + base_best
    total = np.where(valid & np.isfinite(event_bits), total, np.inf)
    j_best = np.argmin(total, axis=1)
    rows = np.arange(n_seq)
    b_best = base_arg[rows, j_best]
    with np.errstate(divide="ignore"):
        trigger = -np.log(_prefix_probs(cls.bases, x)[rows, j_best, b_best])
    nats = total[rows, j_best]
    ok = np.isfinite(nats)
    return SwitchBound(
        nats=nats,
        event=np.where(ok, event_arg[rows, j_best], -1),
        base=b_best,
        offset=j_best,
        event_bits=event_bits[rows, j_best],
        posterior_nats=-post.log_bare[b_best],
        trigger_nats=trigger,
    )
