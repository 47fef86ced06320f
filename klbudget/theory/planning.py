"""Exact KL-budgeted optimal policies on a finite-horizon tree (paper §2; Korbak et al. 2022).

Problem: maximise E_π[U(x_{1:H})] subject to KL(π‖β) ≤ B, where β is a base policy (ξ, ν_α
or τ) and the KL is over the agent's whole episode (chain rule: the sum of per-step KLs
weighted by how often π reaches each node). Its solution is the tilted policy

    V_H(x) = U(x),   Q(x, a) = V_{d+1}(x·a),   V_d(x) = λ ln Σ_a β(a | x) exp(Q(x, a) / λ),
    π_λ(a | x) = β(a | x) exp((Q(x, a) - V_d(x)) / λ)        (π* ∝ base · exp(Q/λ)),

which at the sequence level is π_λ(x) ∝ β(x) exp(U(x)/λ) (``tilt_enumeration`` checks this).
KL(π_λ‖β) and E_{π_λ}[U] both fall as λ grows, so λ is found by a bracketed root search on
ln λ (Brent's method: bisection with secant steps) to meet a budget or a utility target. By
convex duality (linear objective, convex KL, Slater point π = β) the budgeted optimum is π_λ
for that λ, and the least KL that reaches a utility target is attained by π_λ as well.

Help (pessimistic base). ν_α is a sub-probability; its leftover mass is the *help* action,
on which the demonstrator τ picks the symbol. Then the actions are A ∪ {help},
Q(x, help) = Σ_b τ(b | x) V_{d+1}(x·b), and the KL is measured against ν_α including the help
mass (a policy that puts mass on a symbol with ν_α = 0 has infinite KL).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from klbudget.theory.numerics import logsumexp

# ----------------------------------------------------------------------------- divergences


def kl_divergence(p: np.ndarray | Sequence[float], q: np.ndarray | Sequence[float]) -> float:
    """KL(p‖q) = Σ_i p_i ln(p_i / q_i) in nats; 0 ln 0 = 0 and p_i > 0 = q_i gives +inf."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    support = p > 0
    if np.any(q[support] <= 0):
        return math.inf
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


# ----------------------------------------------------------------------------- trees


@dataclass(frozen=True, eq=False)
class Tree:
    """A base policy on the tree of continuations x ∈ A^H, and the utility of each leaf."""

    base: Sequence[np.ndarray]  # base[d]: (|A|^d, |A|) β(a | x) at each depth-d node x
    utility: np.ndarray  # (|A|^H,) U(x) of each leaf, lexicographic order
    help: Sequence[np.ndarray] | None = None  # help[d]: (|A|^d,) base mass of the help action
    demonstrator: Sequence[np.ndarray] | None = None  # demonstrator[d]: τ(b | x) on help

    @property
    def horizon(self) -> int:
        return len(self.base)

    @property
    def alphabet_size(self) -> int:
        return int(self.base[0].shape[1])

    def action_base(self, d: int) -> np.ndarray:
        """(|A|^d, n_actions) base mass of every action at depth d, help last if present."""
        if self.help is None:
            return np.asarray(self.base[d])
        return np.concatenate([self.base[d], np.asarray(self.help[d])[:, None]], axis=1)

    def action_values(self, d: int, next_values: np.ndarray) -> np.ndarray:
        """Q(x, ·) at depth d from V_{d+1}: the child's value, or τ's expectation on help."""
        q = next_values.reshape(-1, self.alphabet_size)
        if self.help is None:
            return q
        assert self.demonstrator is not None
        on_help = np.sum(np.asarray(self.demonstrator[d]) * np.where(np.isfinite(q), q, 0.0), 1)
        return np.concatenate([q, on_help[:, None]], axis=1)


def conditionals(leaf_probs: np.ndarray, alphabet_size: int) -> list[np.ndarray]:
    """β(a | x) at every inner node from a measure on the leaves (marginalise, then divide).

    Nodes of probability 0 get the uniform distribution: no policy with finite KL reaches them.
    """
    A = alphabet_size
    horizon = round(math.log(leaf_probs.size, A))
    out = []
    for d in range(horizon):
        joint = leaf_probs.reshape(A ** (d + 1), A ** (horizon - d - 1)).sum(axis=1)
        joint = joint.reshape(A**d, A)
        total = joint.sum(axis=1, keepdims=True)
        out.append(np.where(total > 0, joint / np.where(total > 0, total, 1.0), 1.0 / A))
    return out


def iid_tree_base(probs: np.ndarray, horizon: int) -> list[np.ndarray]:
    """β(a | x) = p(a) at every node, for an i.i.d. base such as τ."""
    p = np.asarray(probs, dtype=np.float64)
    return [np.broadcast_to(p, (p.size**d, p.size)).copy() for d in range(horizon)]


# ----------------------------------------------------------------------------- solutions


@dataclass(frozen=True, eq=False)
class Plan:
    """An optimal policy for one λ and what it achieves."""

    lam: float  # the temperature λ (inf: π = β)
    policy: list[np.ndarray] | None  # policy[d]: (|A|^d, n_actions); None if infeasible
    utility: float  # E_π[U]
    kl: float  # KL(π‖β) in nats (inf if the target is out of reach)
    help_steps: float  # expected number of help actions per episode


def soft_policy(tree: Tree, lam: float) -> list[np.ndarray]:
    """π_λ by backward induction (module docstring); λ = inf returns the base itself."""
    horizon = tree.horizon
    if math.isinf(lam):
        return [
            tree.action_base(d) / tree.action_base(d).sum(1, keepdims=True) for d in range(horizon)
        ]
    values = np.asarray(tree.utility, dtype=np.float64)
    policy: list[np.ndarray] = [np.empty(0)] * horizon
    for d in range(horizon - 1, -1, -1):
        base = tree.action_base(d)
        q = tree.action_values(d, values)
        with np.errstate(divide="ignore", invalid="ignore"):
            logits = np.where(base > 0, np.log(base) + q / lam, -np.inf)
            norm = logsumexp(logits, axis=1, keepdims=True)
            pi = np.where(np.isfinite(norm), np.exp(logits - norm), 0.0)
        policy[d] = pi
        values = np.where(np.isfinite(norm[:, 0]), lam * norm[:, 0], -np.inf)
    return policy


def evaluate(tree: Tree, policy: list[np.ndarray]) -> tuple[float, float, float]:
    """(E_π[U], KL(π‖β) in nats, expected help actions) by a forward pass over the tree."""
    A = tree.alphabet_size
    reach = np.ones(1)
    kl = 0.0
    helps = 0.0
    for d in range(tree.horizon):
        pi = policy[d]
        base = tree.action_base(d)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(pi > 0, pi * (np.log(pi) - np.log(base)), 0.0)
        kl += float(reach @ terms.sum(axis=1))
        step = pi[:, :A]
        if tree.help is not None:
            assert tree.demonstrator is not None
            helps += float(reach @ pi[:, A])
            step = step + pi[:, A:] * np.asarray(tree.demonstrator[d])
        reach = (reach[:, None] * step).ravel()
    return float(reach @ tree.utility), kl, helps


def plan_at(tree: Tree, lam: float) -> Plan:
    """π_λ and its utility, KL and help rate."""
    policy = soft_policy(tree, lam)
    utility, kl, helps = evaluate(tree, policy)
    return Plan(lam=lam, policy=policy, utility=utility, kl=kl, help_steps=helps)


def max_utility(tree: Tree) -> float:
    """max_π E_π[U] over policies with finite KL (actions with positive base mass only)."""
    values = np.asarray(tree.utility, dtype=np.float64)
    for d in range(tree.horizon - 1, -1, -1):
        q = tree.action_values(d, values)
        values = np.where(tree.action_base(d) > 0, q, -np.inf).max(axis=1)
    return float(values[0])


LAM_RANGE = (1e-3, 1e4)  # bracket for λ, in utility units per nat


def _solve_lam(tree: Tree, excess: Callable[[Plan], float]) -> Plan:
    """π_λ at the λ where excess(π_λ) = 0, by Brent's method on ln λ within ``LAM_RANGE``.

    Callers check the bracket first; KL and utility are monotone in λ, so the root is unique.
    The plan meets its equation to ~1e-9 (xtol on ln λ is 1e-12).
    """
    lo, hi = (math.log(v) for v in LAM_RANGE)
    root = brentq(lambda lg: excess(plan_at(tree, math.exp(lg))), lo, hi, xtol=1e-12)
    return plan_at(tree, math.exp(root))


def solve_budget(tree: Tree, budget: float) -> Plan:
    """The best policy with KL(π‖β) ≤ budget: π_λ with λ chosen so that KL = budget."""
    if budget <= 0:
        return plan_at(tree, math.inf)
    sharp = plan_at(tree, LAM_RANGE[0])
    if sharp.kl <= budget:  # even the (near-)argmax policy fits: the budget does not bind
        return sharp
    if plan_at(tree, LAM_RANGE[1]).kl > budget:
        return plan_at(tree, math.inf)
    return _solve_lam(tree, lambda plan: plan.kl - budget)


def solve_target(tree: Tree, target: float, tol: float = 1e-9) -> Plan:
    """The least-KL policy with E_π[U] ≥ target (inf KL when no finite-KL policy reaches it)."""
    reachable = max_utility(tree)
    if reachable < target - tol:
        return Plan(lam=0.0, policy=None, utility=reachable, kl=math.inf, help_steps=math.nan)
    sharp = plan_at(tree, LAM_RANGE[0])
    if sharp.utility < target:  # only the limit λ → 0 gets there; report the sharpest plan
        return sharp
    top = plan_at(tree, LAM_RANGE[1])
    if top.utility >= target:
        return top
    return _solve_lam(tree, lambda plan: plan.utility - target)


def tilt_enumeration(
    leaf_probs: np.ndarray, utility: np.ndarray, lam: float
) -> tuple[float, float]:
    """Sequence-level π_λ(x) ∝ β(x) exp(U(x)/λ) by enumeration: (E[U], KL) for cross-checks."""
    support = leaf_probs > 0
    logits = np.full(leaf_probs.shape, -np.inf)
    logits[support] = np.log(leaf_probs[support]) + utility[support] / lam
    log_pi = logits - logsumexp(logits)
    pi = np.exp(log_pi)
    kl = float(np.sum(pi[support] * (log_pi[support] - np.log(leaf_probs[support]))))
    return float(pi @ utility), kl
