"""The theory lab's four experiments: pure computations that return numbers, no I/O.

World: alphabet A = {0, 1, 2}. The demonstrator τ draws i.i.d. from (3/4, 1/4, 0), so it
never emits the *silent* symbol 2 — the analogue of the paper's empty teacher turn. The
utility U_silent counts silent steps in an episode of H steps (U_ones counts 1s, a behaviour
τ does have). The imitators see a demonstration h = y_{1:k} ~ τ and the agent then acts for H
steps under a KL budget against ξ, ν_α or τ (see ``planning``).

1. ``counterexample``: no triangle inequality for KL (paper §2).
2. ``kl_versus_data``: the KL that a near-optimal silent policy needs against ξ, next to the
   theorem's bound ln2·(K(U) + K(E)) + ..., and against ν_α and τ, as k grows.
3. ``event_complexity``: K of the simplest unprecedented event as k grows.
4. ``utility_versus_budget``: achieved utility against budget for ξ, ν_α and τ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from klbudget.theory.imitators import (
    bayes_leaf_probs,
    pessimistic_tree,
    switch_bound,
)
from klbudget.theory.models import (
    NEVER,
    ModelClass,
    Posterior,
    all_sequences,
    build_class,
    elias_delta_bits,
    episode_offsets,
    number_bits,
    posterior,
)
from klbudget.theory.planning import (
    Tree,
    conditionals,
    iid_tree_base,
    kl_divergence,
    max_utility,
    solve_budget,
    solve_target,
)

LN2 = math.log(2.0)


@dataclass(frozen=True)
class LabConfig:
    """Settings of the theory lab; the defaults are the published run (< 1 minute)."""

    demonstrator: tuple[float, ...] = (0.75, 0.25, 0.0)  # τ(a), i.i.d.; last symbol = silent
    grid: int = 4  # stationary models have probabilities in multiples of 1/grid
    max_event_bits: float = 20.0  # the class holds every event with K(E) ≤ this ...
    max_count: int = 2048  # ... whose count n (run length, time) is ≤ this ...
    max_substring_len: int = 3  # ... and substrings up to this length
    horizon: int = 6  # H, agent steps per episode (trees have |A|^H leaves)
    slack: int = 1  # "near-optimal" = at least H - slack silent steps
    alpha: float = 2.0**-10  # ν_α keeps models with posterior weight ≥ alpha
    ks: tuple[int, ...] = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
    seeds: int = 3  # demonstrations per k (nested prefixes of one sample per seed)
    budget_ks: tuple[int, ...] = (48, 64)  # demonstration lengths, utility-versus-budget
    budgets: tuple[float, ...] = tuple(0.5 * b for b in range(0, 33))  # nats
    event_max_k: int = 2**16  # longest demonstration in the event-complexity experiment
    epsilon: float = 0.1  # ε of the counterexample's table row

    @property
    def alphabet_size(self) -> int:
        return len(self.demonstrator)

    @property
    def silent(self) -> int:
        """The symbol τ never emits and U_silent rewards."""
        return self.alphabet_size - 1

    @property
    def target(self) -> float:
        """Utility a near-optimal silent policy must reach."""
        return float(self.horizon - self.slack)

    @classmethod
    def small(cls) -> LabConfig:
        """A reduced setting for tests (seconds)."""
        return cls(
            max_event_bits=14.0,
            max_count=128,
            max_substring_len=2,
            horizon=4,
            ks=(16, 32, 48),
            seeds=1,
            budget_ks=(32,),
            budgets=(0.0, 2.0, 5.0, 10.0),
            event_max_k=2**10,
        )

    def model_class(self, switches: bool = True) -> ModelClass:
        return build_class(
            alphabet_size=self.alphabet_size,
            grid=self.grid,
            max_event_bits=self.max_event_bits,
            max_count=self.max_count,
            max_substring_len=self.max_substring_len,
            switches=switches,
        )


def demonstration(config: LabConfig, seed: int, length: int) -> np.ndarray:
    """y_{1:length} ~ τ, reproducible from the seed."""
    rng = np.random.default_rng(seed)
    return rng.choice(config.alphabet_size, size=length, p=np.asarray(config.demonstrator))


# ----------------------------------------------------------------------------- one history


@dataclass(frozen=True, eq=False)
class Situation:
    """Everything exact about the episode that follows one demonstration h."""

    history: np.ndarray  # h, length k
    leaves: np.ndarray  # (|A|^H, H) continuations
    post: Posterior  # w(ν | h)
    offsets: np.ndarray  # (|A|^H, E) where each event fires
    xi: np.ndarray  # (|A|^H,) ξ(x | h)
    xi_base: list[np.ndarray]  # ξ(a | h·x) per depth
    nu_base: list[np.ndarray]  # ν_α(a | h·x) per depth
    nu_help: list[np.ndarray]  # help mass per depth
    tau_base: list[np.ndarray]  # τ(a) per depth, for help and for planning against τ


def analyse(cls: ModelClass, history: np.ndarray, config: LabConfig) -> Situation:
    """Posterior, ξ on the episode tree, and ν_α with its help mass."""
    A, H = config.alphabet_size, config.horizon
    leaves = all_sequences(A, H)
    post = posterior(cls, history)
    offsets = episode_offsets(cls.events, history, leaves, A, post.trigger)
    xi = bayes_leaf_probs(cls, post, history, leaves, offsets)
    nu, helps = pessimistic_tree(cls, post, offsets, config.alpha, H)
    tau = np.asarray(config.demonstrator)
    return Situation(
        history=np.asarray(history),
        leaves=leaves,
        post=post,
        offsets=offsets,
        xi=xi,
        xi_base=conditionals(xi, A),
        nu_base=nu,
        nu_help=helps,
        tau_base=iid_tree_base(tau, H),
    )


def trees(sit: Situation, utility: np.ndarray) -> dict[str, Tree]:
    """The three base policies of the lab on one tree: ξ, ν_α (with help) and τ."""
    return {
        "xi": Tree(base=sit.xi_base, utility=utility),
        "nu": Tree(base=sit.nu_base, utility=utility, help=sit.nu_help, demonstrator=sit.tau_base),
        "tau": Tree(base=sit.tau_base, utility=utility),
    }


def path_nodes(path: np.ndarray, alphabet_size: int) -> list[int]:
    """Index of the node x_{<t} at each depth t = 0..H-1 along a path (lexicographic)."""
    nodes, node = [], 0
    for a in path:
        nodes.append(node)
        node = node * alphabet_size + int(a)
    return nodes


def path_costs(base: list[np.ndarray], path: np.ndarray) -> np.ndarray:
    """-ln β(x_t | x_{<t}) along one path: the KL a deterministic policy pays per step."""
    nodes = path_nodes(path, base[0].shape[1])
    probs = np.array([base[d][n, int(a)] for d, (n, a) in enumerate(zip(nodes, path, strict=True))])
    with np.errstate(divide="ignore"):
        return -np.log(probs)


# ----------------------------------------------------------------------------- experiment 1


def counterexample(epsilons: np.ndarray, epsilon: float) -> dict:
    """τ = Bernoulli(0), β = π = Bernoulli(ε/2): KL(π‖β) = 0 and KL(τ‖β) = -ln(1 - ε/2) ≤ ε,
    yet KL(π‖τ) = ∞ (paper §2, "no triangle inequality").

    Also the smoothed τ_δ = Bernoulli(δ): KL(π‖τ_δ) → ∞ as δ → 0, so no finite bound exists.
    """

    def bern(p: float) -> np.ndarray:
        return np.array([1.0 - p, p])

    tau = bern(0.0)
    kl_pi_beta = [kl_divergence(bern(e / 2), bern(e / 2)) for e in epsilons]
    kl_tau_beta = [kl_divergence(tau, bern(e / 2)) for e in epsilons]
    kl_pi_tau = [kl_divergence(bern(e / 2), tau) for e in epsilons]
    deltas = np.logspace(-300, -1, 61)
    kl_pi_smooth = [kl_divergence(bern(epsilon / 2), bern(d)) for d in deltas]
    row = {
        "epsilon": epsilon,
        "kl_pi_beta": kl_divergence(bern(epsilon / 2), bern(epsilon / 2)),
        "kl_tau_beta": kl_divergence(tau, bern(epsilon / 2)),
        "kl_pi_tau": kl_divergence(bern(epsilon / 2), tau),
    }
    return {
        "row": row,
        "epsilons": np.asarray(epsilons),
        "kl_pi_beta": np.asarray(kl_pi_beta),
        "kl_tau_beta": np.asarray(kl_tau_beta),
        "kl_pi_tau": np.asarray(kl_pi_tau),
        "deltas": deltas,
        "kl_pi_smooth": np.asarray(kl_pi_smooth),
    }


# ----------------------------------------------------------------------------- experiment 2


def kl_versus_data(config: LabConfig, seed: int) -> dict:
    """Least KL for E[U_silent] ≥ H - slack against ξ, ν_α, τ and a switch-free ξ, per k.

    Next to it, the construction's bound (``switch_bound``) and the best deterministic policy:
    exactly, KL* ≤ KL_det ≤ bound at every (k, seed); all three are recorded.
    """
    A, H = config.alphabet_size, config.horizon
    cls = config.model_class()
    stationary = config.model_class(switches=False)
    leaves = all_sequences(A, H)
    silent = (leaves == config.silent).sum(axis=1).astype(np.float64)
    near_optimal = silent >= config.target
    records = []
    for s in range(config.seeds):
        demo = demonstration(config, seed * 1000 + s, max(config.ks))
        for k in config.ks:
            h = demo[:k]
            sit = analyse(cls, h, config)
            tr = trees(sit, silent)
            post_st = posterior(stationary, h)
            xi_st = bayes_leaf_probs(stationary, post_st, h, leaves)
            plans = {name: solve_target(tree, config.target) for name, tree in tr.items()}
            plan_st = solve_target(Tree(base=conditionals(xi_st, A), utility=silent), config.target)
            with np.errstate(divide="ignore"):
                det_costs = np.where(near_optimal, -np.log(sit.xi), np.inf)
            best_leaf = int(np.argmin(det_costs))
            nodes = path_nodes(leaves[best_leaf], A)
            bound = switch_bound(cls, sit.post, k, leaves, sit.offsets, config.silent)
            bound_leaf = int(np.argmin(np.where(near_optimal, bound.nats, np.inf)))
            e = int(bound.event[bound_leaf])
            records.append(
                {
                    "seed": s,
                    "k": k,
                    "kl_xi": plans["xi"].kl,
                    "kl_det": float(det_costs[best_leaf]),
                    "bound": float(bound.nats[bound_leaf]),
                    "bound_event": cls.events.describe(e) if e >= 0 else "none",
                    "bound_event_bits": float(bound.event_bits[bound_leaf]),
                    "bound_posterior_nats": float(bound.posterior_nats[bound_leaf]),
                    "bound_trigger_nats": float(bound.trigger_nats[bound_leaf]),
                    "kl_stationary": plan_st.kl,
                    "kl_nu": plans["nu"].kl,
                    "kl_tau": plans["tau"].kl,
                    "max_silent_nu": max_utility(tr["nu"]),
                    "max_silent_tau": max_utility(tr["tau"]),
                    "help_first_step": float(sit.nu_help[0][0]),
                    "best_path": leaves[best_leaf].tolist(),
                    "path_cost_xi": path_costs(sit.xi_base, leaves[best_leaf]).tolist(),
                    "path_nu": [
                        float(sit.nu_base[d][n, a])
                        for d, (n, a) in enumerate(zip(nodes, leaves[best_leaf], strict=True))
                    ],
                }
            )
    ks = np.asarray(config.ks)
    by_k = {
        key: np.array([[r[key] for r in records if r["k"] == k] for k in ks])
        for key in (
            "kl_xi",
            "kl_det",
            "bound",
            "kl_stationary",
            "bound_event_bits",
            "help_first_step",
            "kl_nu",
            "kl_tau",
        )
    }
    holds = all(
        r["kl_xi"] <= r["kl_det"] + 1e-6 and r["kl_det"] <= r["bound"] + 1e-9 for r in records
    )
    med = {key: np.median(v, axis=1) for key, v in by_k.items()}
    row = {
        "k_first": int(ks[0]),
        "k_last": int(ks[-1]),
        "horizon": H,
        "target": config.target,
        "kl_xi_median_first": float(med["kl_xi"][0]),
        "kl_xi_median_last": float(med["kl_xi"][-1]),
        "kl_xi_median_max": float(med["kl_xi"].max()),
        "bound_median_first": float(med["bound"][0]),
        "bound_median_last": float(med["bound"][-1]),
        "kl_stationary_median_first": float(med["kl_stationary"][0]),
        "kl_stationary_median_last": float(med["kl_stationary"][-1]),
        "kl_nu_all_inf": bool(np.all(np.isinf(by_k["kl_nu"]))),
        "kl_tau_all_inf": bool(np.all(np.isinf(by_k["kl_tau"]))),
        "ordering_holds": holds,
        "event_last": [r["bound_event"] for r in records if r["k"] == ks[-1]],
    }
    return {"row": row, "records": records, "ks": ks, "by_k": by_k}


# ----------------------------------------------------------------------------- experiment 3


def _suffix_min(values: np.ndarray) -> np.ndarray:
    """out[i] = min(values[i:])."""
    return np.minimum.accumulate(values[::-1])[::-1]


def event_complexity(config: LabConfig, seed: int) -> dict:
    """K(E*) of the simplest unprecedented event E* as the demonstration grows, per family.

    Only events the demonstrator can bring about count (strings and runs over supp τ): an
    event made of the silent symbol is always unprecedented and cheap, but only because it
    *is* the undesired behaviour. E is unprecedented in y_{1:k} when tp_E ≥ k.
    """
    N = config.event_max_k
    A = config.alphabet_size
    log_a = math.log2(A)
    demo = demonstration(config, seed * 1000 + 7, N)
    ks = np.arange(1, N + 1)
    support = [a for a in range(A) if config.demonstrator[a] > 0]
    # numbers: min over n ≥ m of N(n); computed far enough beyond N to include the next 2^j
    counts = np.arange(1, 4 * N + 2)
    best_number_from = _suffix_min(number_bits(counts).astype(np.float64))  # index n-1
    time_bits = 2 + best_number_from[ks - 1]  # untested time(n): n ≥ k
    now_bits = 2 + number_bits(ks).astype(np.float64)  # time(k): the event "now"
    run_bits = np.full(N, np.inf)
    for a in support:
        is_a = demo == a
        idx = np.arange(1, N + 1)
        run = idx - np.maximum.accumulate(np.where(is_a, 0, idx))
        longest = np.maximum.accumulate(run)  # longest[i] = longest a-run in y_{1:i+1}
        before = np.concatenate([[0], longest[:-1]])  # in y_{1:k-1}
        run_bits = np.minimum(run_bits, 2 + log_a + best_number_from[before])  # n ≥ before+1
    # substrings over supp τ: the smallest L such that some such string has not occurred by
    # y_{1:k-1}; all_seen[L] = the first k at which every one of them has
    sub_bits = np.full(N, np.inf)
    length = 1
    while True:
        windows = np.lib.stride_tricks.sliding_window_view(demo, length)
        codes = windows @ (A ** np.arange(length - 1, -1, -1))
        _, first = np.unique(codes, return_index=True)
        complete = first.size == len(support) ** length
        # tp of the last of them to appear, plus one: from there on, none is unprecedented
        all_seen = int(first.max()) + length + 1 if complete else NEVER
        bits = 2 + float(elias_delta_bits(length)) + length * log_a
        fresh = ks < all_seen
        sub_bits = np.where(fresh & np.isinf(sub_bits), bits, sub_bits)
        if all_seen == NEVER:
            break
        length += 1
    overall = np.minimum(np.minimum(time_bits, run_bits), sub_bits)
    marks = [k for k in (2**4, 2**8, 2**12, 2**16) if k <= N]
    family = {"time": time_bits, "run": run_bits, "substring": sub_bits}
    row = {
        "k": marks,
        "overall_bits": [float(overall[k - 1]) for k in marks],
        "time_bits": [float(time_bits[k - 1]) for k in marks],
        "run_bits": [float(run_bits[k - 1]) for k in marks],
        "substring_bits": [float(sub_bits[k - 1]) for k in marks],
        "now_bits": [float(now_bits[k - 1]) for k in marks],
        "now_bits_median_last_octave": float(np.median(now_bits[N // 2 :])),
        "silent_substring_bits": 2 + float(elias_delta_bits(1)) + log_a,
        "log2_k": [math.log2(k) for k in marks],
    }
    return {"row": row, "ks": ks, "family": family, "overall": overall, "now": now_bits}


# ----------------------------------------------------------------------------- experiment 4


def utility_versus_budget(config: LabConfig, seed: int) -> dict:
    """max E_π[U] s.t. KL(π‖β) ≤ B for β ∈ {ξ, ν_α, τ} and U ∈ {silent, ones}, per history.

    One history per k in ``config.budget_ks`` (prefixes of one demonstration), so that a
    length at which nothing simple is new can be set beside one at which something is.
    """
    cls = config.model_class()
    demo = demonstration(config, seed * 1000, max(config.budget_ks))
    budgets = np.asarray(config.budgets)
    panels = []
    for k in config.budget_ks:
        sit = analyse(cls, demo[:k], config)
        utilities = {
            "silent": (sit.leaves == config.silent).sum(axis=1).astype(np.float64),
            "ones": (sit.leaves == 1).sum(axis=1).astype(np.float64),
        }
        curves: dict[str, dict[str, np.ndarray]] = {}
        for uname, u in utilities.items():
            curves[uname] = {
                bname: np.array([solve_budget(tree, b).utility for b in budgets])
                for bname, tree in trees(sit, u).items()
            }
        panels.append({"k": k, "help_first_step": float(sit.nu_help[0][0]), "curves": curves})
    marks = [b for b in (2.0, 5.0, 10.0) if b in config.budgets]
    row = {
        "horizon": config.horizon,
        "budgets_reported": marks,
        "panels": [
            {
                "k": p["k"],
                "help_first_step": p["help_first_step"],
                **{
                    f"{u}_{b}": [float(p["curves"][u][b][list(budgets).index(m)]) for m in marks]
                    for u in p["curves"]
                    for b in p["curves"][u]
                },
            }
            for p in panels
        ],
    }
    return {"row": row, "budgets": budgets, "panels": panels}
