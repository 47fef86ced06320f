"""The KL-budgeted planner: closed forms, enumeration, help, and agreement of the bases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from klbudget.theory.experiments import LabConfig, analyse, counterexample, trees
from klbudget.theory.imitators import bayes_leaf_probs, pessimistic_tree
from klbudget.theory.models import (
    ModelClass,
    all_sequences,
    episode_offsets,
    make_events,
    posterior,
)
from klbudget.theory.planning import (
    Tree,
    conditionals,
    evaluate,
    iid_tree_base,
    kl_divergence,
    max_utility,
    plan_at,
    soft_policy,
    solve_budget,
    solve_target,
    tilt_enumeration,
)


def test_kl_divergence_hand_values() -> None:
    assert kl_divergence([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert kl_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert kl_divergence([0.5, 0.5], [1.0, 0.0]) == math.inf


def test_counterexample_kls() -> None:
    row = counterexample(np.array([0.1]), 0.1)["row"]
    assert row["kl_pi_beta"] == 0.0
    # KL(Bern(0) ‖ Bern(0.05)) = ln(1/0.95)
    assert row["kl_tau_beta"] == pytest.approx(0.05129329438755058)
    assert row["kl_tau_beta"] <= 0.1
    assert row["kl_pi_tau"] == math.inf


def one_step_tree() -> Tree:
    return Tree(base=[np.array([[0.5, 0.5]])], utility=np.array([0.0, 1.0]))


def test_lambda_for_a_budget_closed_form() -> None:
    # π_λ(1) = σ(1/λ). Choosing π(1) = 3/4 gives λ = 1/ln 3 and
    # B = (3/4) ln(3/2) + (1/4) ln(1/2) = 0.130812... nats.
    budget = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    plan = solve_budget(one_step_tree(), budget)
    assert plan.lam == pytest.approx(1 / math.log(3), rel=1e-6)
    assert plan.utility == pytest.approx(0.75, rel=1e-6)
    assert plan.kl == pytest.approx(budget, abs=1e-8)
    # and the inverse problem: least KL for E[U] ≥ 3/4 is the same policy
    assert solve_target(one_step_tree(), 0.75).kl == pytest.approx(budget, abs=1e-8)


def test_budget_edge_cases() -> None:
    tree = one_step_tree()
    assert solve_budget(tree, 0.0).kl == 0.0
    assert solve_budget(tree, 10.0).utility == pytest.approx(1.0, abs=1e-3)  # does not bind
    assert solve_target(tree, 1.5).kl == math.inf  # above the maximum


def random_tree(rng: np.random.Generator, horizon: int, alphabet: int) -> tuple[Tree, np.ndarray]:
    leaf = rng.dirichlet(np.full(alphabet**horizon, 0.5))
    leaf[rng.random(leaf.size) < 0.2] = 0.0  # some zero-probability sequences
    leaf /= leaf.sum()
    utility = rng.normal(size=leaf.size)
    return Tree(base=conditionals(leaf, alphabet), utility=utility), leaf


@pytest.mark.parametrize("lam", [0.05, 0.3, 1.0, 5.0])
def test_tree_policy_equals_sequence_enumeration(lam: float) -> None:
    rng = np.random.default_rng(int(lam * 100))
    tree, leaf = random_tree(rng, horizon=4, alphabet=3)
    utility, kl, _ = evaluate(tree, soft_policy(tree, lam))
    ref_utility, ref_kl = tilt_enumeration(leaf, tree.utility, lam)
    assert utility == pytest.approx(ref_utility, rel=1e-9, abs=1e-12)
    assert kl == pytest.approx(ref_kl, rel=1e-9, abs=1e-12)


def test_kl_and_utility_fall_as_lambda_grows() -> None:
    tree, _ = random_tree(np.random.default_rng(1), horizon=3, alphabet=3)
    plans = [plan_at(tree, lam) for lam in np.logspace(-2, 2, 30)]
    kls = np.array([p.kl for p in plans])
    utilities = np.array([p.utility for p in plans])
    assert np.all(np.diff(kls) <= 1e-12) and np.all(np.diff(utilities) <= 1e-12)


def help_tree() -> Tree:
    # one step: ν_α = (1/2, 0), help 1/2, τ = (3/4, 1/4), U = [0, 1]
    return Tree(
        base=[np.array([[0.5, 0.0]])],
        utility=np.array([0.0, 1.0]),
        help=[np.array([0.5])],
        demonstrator=[np.array([[0.75, 0.25]])],
    )


def test_help_action_closed_form() -> None:
    # actions (0, 1, help) with base (1/2, 0, 1/2) and values (0, 1, 1/4):
    # π ∝ (1/2, 0, 1/2·e^{1/(4λ)})
    lam = 0.5
    plan = plan_at(help_tree(), lam)
    z = 0.5 + 0.5 * math.exp(0.25 / lam)
    p_help = 0.5 * math.exp(0.25 / lam) / z
    np.testing.assert_allclose(plan.policy[0], [[0.5 / z, 0.0, p_help]])
    assert plan.utility == pytest.approx(0.25 * p_help)
    assert plan.kl == pytest.approx(
        (1 - p_help) * math.log((1 - p_help) / 0.5) + p_help * math.log(p_help / 0.5)
    )
    assert plan.help_steps == pytest.approx(p_help)
    assert max_utility(help_tree()) == pytest.approx(0.25)  # symbol 1 only via τ


def test_soft_value_is_the_regularised_optimum_with_help() -> None:
    # V_0 = E[U] - λ KL for π_λ, and no other policy does better on that objective
    rng = np.random.default_rng(2)
    horizon, A, lam = 2, 3, 0.4
    nu = [rng.dirichlet(np.ones(A + 1), size=A**d) for d in range(horizon)]
    tree = Tree(
        base=[n[:, :A] for n in nu],
        utility=rng.normal(size=A**horizon),
        help=[n[:, A] for n in nu],
        demonstrator=iid_tree_base(np.array([0.6, 0.3, 0.1]), horizon),
    )
    best = plan_at(tree, lam)
    objective = best.utility - lam * best.kl
    for _ in range(200):
        policy = [rng.dirichlet(np.ones(A + 1), size=A**d) for d in range(horizon)]
        utility, kl, _ = evaluate(tree, policy)
        assert utility - lam * kl <= objective + 1e-12


def test_xi_nu_tau_planners_agree_when_the_class_is_tau_alone() -> None:
    # with τ as the only model, ξ = τ and ν_α = τ with no help: all three plans coincide
    tau = np.array([0.75, 0.25, 0.0])
    cls = ModelClass(bases=tau[None, :], events=make_events(3), base_bits=0.0)
    h = np.array([0, 1, 0, 0])
    leaves = all_sequences(3, 3)
    post = posterior(cls, h)
    offsets = episode_offsets(cls.events, h, leaves, 3)
    xi = bayes_leaf_probs(cls, post, h, leaves, offsets)
    nu, helps = pessimistic_tree(cls, post, offsets, 0.5, 3)
    utility = (leaves == 1).sum(axis=1).astype(float)
    xi_tree = Tree(base=conditionals(xi, 3), utility=utility)
    nu_tree = Tree(base=nu, utility=utility, help=helps, demonstrator=iid_tree_base(tau, 3))
    tau_tree = Tree(base=iid_tree_base(tau, 3), utility=utility)
    for budget in (0.5, 2.0):
        got = [solve_budget(t, budget) for t in (xi_tree, nu_tree, tau_tree)]
        assert got[0].utility == pytest.approx(got[2].utility, rel=1e-8)
        assert got[1].utility == pytest.approx(got[2].utility, rel=1e-8)
        assert got[1].help_steps == pytest.approx(0.0)


def test_silent_behaviour_out_of_reach_against_nu_alpha_and_tau() -> None:
    config = LabConfig.small()
    h = np.random.default_rng(0).choice(3, size=40, p=np.asarray(config.demonstrator))
    sit = analyse(config.model_class(), h, config)
    silent = (sit.leaves == 2).sum(axis=1).astype(float)
    base = trees(sit, silent)
    assert max_utility(base["nu"]) == 0.0 and max_utility(base["tau"]) == 0.0
    assert solve_target(base["nu"], 1.0).kl == math.inf
    xi_plan = solve_target(base["xi"], config.target)
    assert math.isfinite(xi_plan.kl) and xi_plan.utility >= config.target - 1e-6
