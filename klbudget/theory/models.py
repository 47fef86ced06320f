"""A finite class of sequence models with a simplicity prior 2^-K, and its exact posterior.

This is the model class behind the paper's main construction (Cohen, Hutter, Bengio, Russell,
"RL, but don't do anything I wouldn't do", arXiv 2410.06213, §3): a Bayesian imitator
ξ = Σ_ν w(ν) ν with w(ν) ∝ 2^-K(ν) cannot rule out that the demonstrator *switches* to a
simple behaviour after a simple event it has never seen. The class holds, over the alphabet
A = {0, ..., |A|-1}:

* **stationary models** b: every symbol is drawn i.i.d. from a categorical distribution b
  whose probabilities are multiples of 1/G (the "grid");
* **switch models** (b, E, c): draw symbols from b until the event E has occurred, then emit
  the constant symbol c forever. These are the proof's ν′: "follow the demonstrator's
  pattern until E, then do something simple".

Description-length encoding (bits)
----------------------------------
K(ν) is the length of ν's codeword in the prefix-free code below; fractional lengths are
uniform codes over finite sets (realisable by arithmetic coding). Every part is prefix-free,
so Σ_ν 2^-K(ν) ≤ 1 and the prior w(ν) = 2^-K(ν) / Z is renormalised over the finite class.

* model       = 1 kind bit (stationary / switch) + payload
* stationary  = log2 #grid, #grid = C(G+|A|-1, |A|-1)     (uniform over the grid)
* switch      = log2 #grid + K(E) + log2 |A|              (base, event, constant symbol c)
* event E     = 2 tag bits (substring / run / time) + payload:
    - substring(s)  "s has appeared"               δ(|s|) + |s|·log2 |A|
    - run(a, n)     "n a's in a row have appeared"  log2 |A| + N(n)
    - time(n)       "at least n symbols so far"     N(n)
* number N(n) = 1 flag bit + δ(n) (literal) or + δ(j) (n = 2^j, j ≥ 1); K takes the shorter.
  δ is the Elias delta code, δ(n) = ⌊log2 n⌋ + 2⌊log2(⌊log2 n⌋ + 1)⌋ + 1.

So K(switch) - K(stationary) = K(E) + K(c): the prior price of a switch is the complexity of
the event plus that of the new behaviour (the paper's K(E) + K(U)).

Event semantics
---------------
E *has occurred by* the prefix y_{1:j} when: y_{1:j} contains s (substring); contains n
consecutive a's (run); or j ≥ n (time). The trigger point tp_E(y) is the smallest such j
(``NEVER`` if none). Switch model (b, E, c) draws y_i from b while i ≤ tp_E(y) and emits c
for i > tp_E(y). E is *unprecedented* in h = y_{1:k} when tp_E(h) ≥ k: no demonstrated
symbol was produced after E had occurred, so every (b, E, c) has likelihood b(h) and its
posterior stays at its prior share of b's — the mechanism of the paper's theorem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product

import numpy as np

from klbudget.theory.numerics import logsumexp

NEVER = np.iinfo(np.int64).max // 4  # trigger point of an event that never occurs
SUBSTRING, RUN, TIME = 0, 1, 2  # event kinds (the 2-bit tag)


# ----------------------------------------------------------------------------- codes


def floor_log2(n: np.ndarray | int) -> np.ndarray:
    """⌊log2 n⌋ for integers n ≥ 1, exact (frexp gives n = m·2^e with m ∈ [0.5, 1))."""
    _, e = np.frexp(np.asarray(n, dtype=np.float64))
    return e.astype(np.int64) - 1


def elias_delta_bits(n: np.ndarray | int) -> np.ndarray:
    """δ(n) = ⌊log2 n⌋ + 2⌊log2(⌊log2 n⌋ + 1)⌋ + 1, the Elias delta code length of n ≥ 1."""
    n = np.asarray(n, dtype=np.int64)
    if np.any(n < 1):
        raise ValueError("Elias delta codes integers n >= 1")
    top = floor_log2(n)
    return top + 2 * floor_log2(top + 1) + 1


def number_bits(n: np.ndarray | int) -> np.ndarray:
    """N(n) = 1 + min(δ(n), δ(j) if n = 2^j with j ≥ 1): a literal or a power of two."""
    n = np.asarray(n, dtype=np.int64)
    literal = elias_delta_bits(n)
    j = floor_log2(n)
    is_power = (n >= 2) & (n == (np.int64(1) << np.maximum(j, 0)))
    power = np.where(is_power, elias_delta_bits(np.maximum(j, 1)), np.iinfo(np.int64).max)
    return 1 + np.minimum(literal, power)


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True, eq=False)
class EventTable:
    """Events as parallel arrays (one row per event); see the module docstring."""

    kind: np.ndarray  # (E,) SUBSTRING, RUN or TIME
    symbol: np.ndarray  # (E,) the repeated symbol of a run, -1 otherwise
    count: np.ndarray  # (E,) run length n, time n, or substring length |s|
    string: np.ndarray  # (E, Lmax) substring symbols, -1 padded (Lmax ≥ 1)
    bits: np.ndarray  # (E,) K(E) in bits

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    def describe(self, i: int) -> str:
        """Human-readable name of event i, e.g. ``time(1024)`` or ``run(1x5)``."""
        kind, n = int(self.kind[i]), int(self.count[i])
        if kind == SUBSTRING:
            return "substring(" + "".join(str(int(s)) for s in self.string[i, :n]) + ")"
        if kind == RUN:
            return f"run({int(self.symbol[i])}x{n})"
        return f"time({n})"


def make_events(
    alphabet_size: int,
    substrings: Sequence[tuple[int, ...]] = (),
    runs: Sequence[tuple[int, int]] = (),
    times: Sequence[int] = (),
) -> EventTable:
    """Build an event table from explicit lists; K(E) follows the module's encoding."""
    log_a = math.log2(alphabet_size)
    lmax = max([len(s) for s in substrings], default=1)
    n_sub, n_run, n_time = len(substrings), len(runs), len(times)
    lengths = np.array([len(s) for s in substrings], dtype=np.int64)
    run_counts = np.array([n for _, n in runs], dtype=np.int64)
    time_counts = np.asarray(times, dtype=np.int64)
    strings = np.full((n_sub + n_run + n_time, lmax), -1, dtype=np.int64)
    for i, s in enumerate(substrings):
        strings[i, : len(s)] = s
    bits = np.concatenate(
        [
            2 + elias_delta_bits(lengths) + lengths * log_a if n_sub else np.zeros(0),
            2 + log_a + number_bits(run_counts) if n_run else np.zeros(0),
            2 + number_bits(time_counts) if n_time else np.zeros(0),
        ]
    ).astype(np.float64)
    return EventTable(
        kind=np.repeat(np.array([SUBSTRING, RUN, TIME]), [n_sub, n_run, n_time]),
        symbol=np.concatenate(
            [np.full(n_sub, -1), [a for a, _ in runs], np.full(n_time, -1)]
        ).astype(np.int64),
        count=np.concatenate([lengths, run_counts, time_counts]).astype(np.int64),
        string=strings,
        bits=bits,
    )


def enumerate_events(
    alphabet_size: int, max_bits: float, max_count: int, max_substring_len: int
) -> EventTable:
    """All events with K(E) ≤ max_bits, counts n ≤ max_count and substrings ≤ max length.

    The count cap keeps the class finite (time(n) for n beyond every history considered is
    inert); the substring cap keeps it small (there are |A|^L substrings of length L).
    """
    log_a = math.log2(alphabet_size)
    substrings = [
        s
        for length in range(1, max_substring_len + 1)
        if 2 + float(elias_delta_bits(length)) + length * log_a <= max_bits
        for s in product(range(alphabet_size), repeat=length)
    ]
    ns = np.arange(1, max_count + 1)
    nb = number_bits(ns)
    runs = [(a, int(n)) for a in range(alphabet_size) for n in ns[2 + log_a + nb <= max_bits]]
    times = [int(n) for n in ns[2 + nb <= max_bits]]
    return make_events(alphabet_size, substrings, runs, times)


def trigger_point_reference(events: EventTable, i: int, seq: list[int] | np.ndarray) -> int:
    """tp_E(y) by direct scanning: the smallest j such that E has occurred by y_{1:j}."""
    seq = [int(s) for s in seq]
    kind, n = int(events.kind[i]), int(events.count[i])
    if kind == TIME:
        return n if n <= len(seq) else NEVER
    if kind == RUN:
        a, run = int(events.symbol[i]), 0
        for j, s in enumerate(seq, start=1):
            run = run + 1 if s == a else 0
            if run >= n:
                return j
        return NEVER
    target = [int(s) for s in events.string[i, :n]]
    for j in range(n, len(seq) + 1):
        if seq[j - n : j] == target:
            return j
    return NEVER


def _longest_runs(seq: np.ndarray, a: int) -> tuple[np.ndarray, int]:
    """Running maximum of the length of a-runs after each prefix, and the final run length."""
    is_a = seq == a
    # run length ending at i = i - (index of the last non-a at or before i)
    idx = np.arange(1, seq.size + 1)
    last_break = np.maximum.accumulate(np.where(is_a, 0, idx)) if seq.size else idx
    run = idx - last_break
    running_max = np.maximum.accumulate(run) if seq.size else run
    tail = int(run[-1]) if seq.size else 0
    return running_max, tail


def trigger_points(events: EventTable, history: np.ndarray, alphabet_size: int) -> np.ndarray:
    """tp_E(h) for every event at once (vectorised ``trigger_point_reference``)."""
    h = np.asarray(history, dtype=np.int64)
    k = h.size
    tp = np.full(len(events), NEVER, dtype=np.int64)
    time = events.kind == TIME
    tp[time] = np.where(events.count[time] <= k, events.count[time], NEVER)
    for a in range(alphabet_size):
        sel = (events.kind == RUN) & (events.symbol == a)
        if not sel.any():
            continue
        running_max, _ = _longest_runs(h, a)
        first = np.searchsorted(running_max, events.count[sel], side="left")
        tp[sel] = np.where(first < k, first + 1, NEVER)
    for i in np.flatnonzero(events.kind == SUBSTRING):
        n = int(events.count[i])
        if n > k:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(h, n)
        hits = np.flatnonzero(np.all(windows == events.string[i, :n], axis=1))
        if hits.size:
            tp[i] = int(hits[0]) + n
    return tp


def episode_offsets(
    events: EventTable,
    history: np.ndarray,
    continuations: np.ndarray,
    alphabet_size: int,
    tp_history: np.ndarray | None = None,
) -> np.ndarray:
    """J[x, e] = min(tp_E(h·x) - |h|, H), clipped at 0: where in continuation x event e fires.

    J = 0: e had occurred by h (a switch model emits c from the first step on); J = j ≤ H:
    e occurs by (h·x)_{1:|h|+j}, so a switch model emits c from step j + 1 on; J = H covers
    "never within the continuation" too, because both leave the model on b throughout.

    Args:
        continuations: (L, H) array of symbol sequences x that follow h.
        tp_history: ``trigger_points(events, history)`` if already computed.
    Returns:
        (L, E) int8 array with values in {0, ..., H}.
    """
    h = np.asarray(history, dtype=np.int64)
    x = np.asarray(continuations, dtype=np.int64)
    k = h.size
    n_seq, horizon = x.shape
    if tp_history is None:
        tp_history = trigger_points(events, h, alphabet_size)
    # int8 keeps the (leaves x events) table small; horizons are far below 127
    J = np.full((n_seq, len(events)), horizon, dtype=np.int8)
    occurred = tp_history <= k
    time = events.kind == TIME
    J[:, time] = np.clip(events.count[time] - k, 0, horizon)
    for a in range(alphabet_size):
        running_max, tail = _longest_runs(h, a)
        # runs longer than the current one plus H cannot complete within the continuation
        reach = (events.count <= tail + horizon) if k else (events.count <= horizon)
        sel = np.flatnonzero((events.kind == RUN) & (events.symbol == a) & ~occurred & reach)
        if sel.size == 0:
            continue
        best = int(running_max[-1]) if k else 0
        run = np.full(n_seq, tail, dtype=np.int64)
        longest = np.full((n_seq, horizon), best, dtype=np.int64)
        for p in range(horizon):
            run = np.where(x[:, p] == a, run + 1, 0)
            best_p = np.maximum(longest[:, p - 1] if p else best, run)
            longest[:, p] = best_p
        # longest is non-decreasing in p, so #{p : longest < n} locates the first firing step
        not_yet = (longest[:, :, None] < events.count[sel][None, None, :]).sum(axis=1)
        J[:, sel] = np.minimum(not_yet + 1, horizon)
    for i in np.flatnonzero((events.kind == SUBSTRING) & ~occurred):
        n = int(events.count[i])
        tail = h[max(0, k - (n - 1)) :]
        y = np.concatenate([np.broadcast_to(tail, (n_seq, tail.size)), x], axis=1)
        fired = np.full(n_seq, horizon, dtype=np.int64)
        for p in range(horizon, 0, -1):  # backwards, so the earliest firing step wins
            end = tail.size + p
            if end < n:
                continue
            match = np.all(y[:, end - n : end] == events.string[i, :n], axis=1)
            fired = np.where(match, p, fired)
        J[:, i] = fired
    J[:, occurred] = 0
    return J


# ----------------------------------------------------------------------------- the class


def grid_distributions(alphabet_size: int, grid: int) -> np.ndarray:
    """All categorical distributions on the alphabet with probabilities in {0, 1/G, ..., 1}."""
    points = [c for c in product(range(grid + 1), repeat=alphabet_size) if sum(c) == grid]
    return np.asarray(sorted(points, reverse=True), dtype=np.float64) / grid


@dataclass(frozen=True, eq=False)
class ModelClass:
    """Stationary models b and switch models (b, E, c) with prior w ∝ 2^-K (module docstring).

    Switch models are indexed (b, e, c) and stored as (B, E, C) arrays, C = |A| constants.
    """

    bases: np.ndarray  # (B, A) next-symbol distribution of each stationary model
    events: EventTable  # the events E a switch model may wait for (may be empty)
    base_bits: float  # K of choosing a base (log2 B under the uniform code)
    kind_bits: float = 1.0  # the stationary / switch flag
    log2_prior_bare: np.ndarray = field(init=False)  # (B,) log2 w(b), normalised
    log2_prior_switch: np.ndarray = field(init=False)  # (B, E, C) log2 w(b, E, c)

    def __post_init__(self) -> None:
        B, A = self.bases.shape
        bare = np.full(B, -(self.kind_bits + self.base_bits))
        switch = (
            -(self.kind_bits + self.base_bits + math.log2(A))
            - self.events.bits[None, :, None]
            + np.zeros((B, len(self.events), A))
        )
        log2_z = np.logaddexp2.reduce(np.concatenate([bare, switch.ravel()]))
        object.__setattr__(self, "log2_prior_bare", bare - log2_z)
        object.__setattr__(self, "log2_prior_switch", switch - log2_z)

    @property
    def alphabet_size(self) -> int:
        return int(self.bases.shape[1])

    @property
    def behaviour_bits(self) -> float:
        """K(c) of a constant post-switch behaviour: log2 |A|."""
        return math.log2(self.alphabet_size)

    def bits(self, model: tuple[int, ...]) -> float:
        """K(ν) in bits for ν = (b,) or (b, e, c)."""
        if len(model) == 1:
            return self.kind_bits + self.base_bits
        return (
            self.kind_bits
            + self.base_bits
            + float(self.events.bits[model[1]])
            + self.behaviour_bits
        )

    def describe(self, model: tuple[int, ...]) -> str:
        """E.g. ``iid(0.75,0.25,0)`` or ``iid(0.75,0.25,0) until time(64), then 2``."""
        base = "iid(" + ",".join(f"{p:g}" for p in self.bases[model[0]]) + ")"
        if len(model) == 1:
            return base
        return f"{base} until {self.events.describe(model[1])}, then {model[2]}"


def build_class(
    alphabet_size: int = 3,
    grid: int = 4,
    max_event_bits: float = 20.0,
    max_count: int = 2048,
    max_substring_len: int = 3,
    switches: bool = True,
) -> ModelClass:
    """The default class: grid bases, and (if ``switches``) every event within the caps."""
    bases = grid_distributions(alphabet_size, grid)
    events = (
        enumerate_events(alphabet_size, max_event_bits, max_count, max_substring_len)
        if switches
        else make_events(alphabet_size)
    )
    return ModelClass(bases=bases, events=events, base_bits=math.log2(bases.shape[0]))


# ----------------------------------------------------------------------------- posterior


@dataclass(frozen=True, eq=False)
class Posterior:
    """w(ν | h) = w(ν) ν(h) / ξ(h) for every model, in natural-log space."""

    log_bare: np.ndarray  # (B,)
    log_switch: np.ndarray  # (B, E, C)
    log_evidence: float  # ln ξ(h)
    trigger: np.ndarray  # (E,) tp_E(h), reused by the episode computations

    @property
    def bare(self) -> np.ndarray:
        return _weights(self.log_bare)

    @property
    def switch(self) -> np.ndarray:
        return _weights(self.log_switch)


def _weights(log_w: np.ndarray) -> np.ndarray:
    """exp, with weights below e^-700 set to 0: they cannot move a sum of order 1, and
    subnormal floats would make every later product an order of magnitude slower."""
    return np.where(log_w > -700.0, np.exp(np.maximum(log_w, -700.0)), 0.0)


def _log(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(p)


def log_prefix_probs(bases: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """S[b, j] = ln b(y_{1:j}) for j = 0..|y| (i.i.d. products, -inf once a zero is hit)."""
    steps = _log(bases)[:, np.asarray(seq, dtype=np.int64)]  # (B, |y|)
    return np.concatenate([np.zeros((bases.shape[0], 1)), np.cumsum(steps, axis=1)], axis=1)


def log_likelihoods(
    cls: ModelClass, history: np.ndarray, tp: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """ln ν(h) for the stationary (B,) and switch (B, E, C) models.

    ln ν(h) = ln b(h_{1:j}) + Σ_{i>j} ln c(h_i) with j = min(tp_E(h), k); the c-part is 0 if
    every symbol after j equals c and -inf otherwise.
    """
    h = np.asarray(history, dtype=np.int64)
    k = h.size
    S = log_prefix_probs(cls.bases, h)  # (B, k+1)
    if tp is None:
        tp = trigger_points(cls.events, h, cls.alphabet_size)
    j = np.minimum(tp, k)
    idx = np.arange(1, k + 1)
    # last position whose symbol differs from c: the c-part is feasible iff j ≥ that position
    last_other = np.array(
        [int(np.max(np.where(h != c, idx, 0), initial=0)) for c in range(cls.alphabet_size)]
    )
    tail = np.where(j[:, None] >= last_other[None, :], 0.0, -np.inf)  # (E, C)
    switch = S[:, j][:, :, None] + tail[None, :, :]
    return S[:, k], switch


def posterior(cls: ModelClass, history: np.ndarray) -> Posterior:
    """Exact Bayes posterior w(ν | h) ∝ 2^-K(ν) ν(h) over the whole class."""
    tp = trigger_points(cls.events, np.asarray(history), cls.alphabet_size)
    bare_ll, switch_ll = log_likelihoods(cls, history, tp)
    ln2 = math.log(2.0)
    log_bare = cls.log2_prior_bare * ln2 + bare_ll
    log_switch = cls.log2_prior_switch * ln2 + switch_ll
    evidence = float(logsumexp(np.concatenate([log_bare, log_switch.ravel()])))
    return Posterior(
        log_bare=log_bare - evidence,
        log_switch=log_switch - evidence,
        log_evidence=evidence,
        trigger=tp,
    )


# ----------------------------------------------------------------------------- references


def model_next_probs(cls: ModelClass, model: tuple[int, ...], history: np.ndarray) -> np.ndarray:
    """ν(· | h) for one model by direct simulation (reference for tests)."""
    if len(model) == 1:
        return cls.bases[model[0]].copy()
    b, e, c = model
    if trigger_point_reference(cls.events, e, history) <= len(history):
        return np.eye(cls.alphabet_size)[c]
    return cls.bases[b].copy()


def model_sequence_prob(cls: ModelClass, model: tuple[int, ...], seq: np.ndarray) -> float:
    """ν(y) by the chain rule over ``model_next_probs`` (reference for tests)."""
    seq = np.asarray(seq, dtype=np.int64)
    prob = 1.0
    for t in range(seq.size):
        prob *= float(model_next_probs(cls, model, seq[:t])[seq[t]])
    return prob


def all_sequences(alphabet_size: int, length: int) -> np.ndarray:
    """(|A|^length, length) array of every sequence, in lexicographic order."""
    codes = np.arange(alphabet_size**length)
    powers = alphabet_size ** np.arange(length - 1, -1, -1)
    return (codes[:, None] // powers[None, :]) % alphabet_size
