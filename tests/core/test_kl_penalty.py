"""KL estimators, their expectations and loss gradients; the penalty coefficient's controllers;
the `[penalty]` config section."""

from __future__ import annotations

import math
import tomllib

import pytest
import torch

from klbudget.config import Config, ConfigError, apply_overrides, from_dict, to_toml
from klbudget.core.kl import estimate, kl_exact, kl_k1, kl_k2, kl_k3
from klbudget.core.penalty import AdaptiveKL, FixedKL, controller


def random_pair(seed: int, v: int = 9, rows: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    log_p = torch.log_softmax(torch.randn(rows, v, generator=g, dtype=torch.float64) * 2, -1)
    log_q = torch.log_softmax(torch.randn(rows, v, generator=g, dtype=torch.float64) * 2, -1)
    return log_p, log_q


def test_estimators_match_their_formulas():
    rho = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    exact = torch.rand(1000, dtype=torch.float64)
    r = rho.tolist()
    torch.testing.assert_close(estimate("k1", rho), rho)
    torch.testing.assert_close(estimate("k2", rho), torch.tensor([0.5 * x * x for x in r]).double())
    k3 = torch.tensor([math.exp(-x) - 1 + x for x in r], dtype=torch.float64)
    torch.testing.assert_close(estimate("k3", rho), k3)
    assert (estimate("k3", rho) >= 0).all() and (estimate("k2", rho) >= 0).all()
    assert (estimate("k1", rho) < 0).any()  # k1 per token can be negative
    assert estimate("exact", rho, exact) is exact
    torch.testing.assert_close(kl_k1(rho), rho)
    torch.testing.assert_close(kl_k2(rho), estimate("k2", rho))
    torch.testing.assert_close(kl_k3(rho), k3)
    with pytest.raises(ValueError, match="needs the per-step"):
        estimate("exact", rho)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        estimate("k4", rho)


def test_expectations_under_pi():
    """Σ_v π(v)·est(ρ_v): k1 and k3 give KL(π‖β) exactly, k2 does not; exact is kl_exact."""
    log_p, log_q = random_pair(1)
    p = log_p.exp()
    rho = log_p - log_q
    kl = kl_exact(log_p, log_q)
    torch.testing.assert_close(kl, (p * rho).sum(-1))
    for name in ("k1", "k3"):
        torch.testing.assert_close((p * estimate(name, rho)).sum(-1), kl)
    k2 = (p * estimate("k2", rho)).sum(-1)
    assert ((k2 - kl).abs() > 1e-3).all()  # biased
    torch.testing.assert_close(estimate("exact", rho[:, 0], kl), kl)


def test_loss_gradients_on_policy():
    """E_π[∇est] over π's own samples: k1 → 0, k2 → ∇KL(π‖β), k3 → ∇KL(β‖π) (docstring)."""
    log_p0, log_q = random_pair(2, v=7, rows=1)
    z = log_p0.clone().requires_grad_(True)

    def grad(f) -> torch.Tensor:
        (g,) = torch.autograd.grad(f(torch.log_softmax(z, -1)), z)
        return g

    def expected_estimator(name: str):
        # Σ_v π_old(v)·est(log π(v) − log β(v)): the loss averaged over on-policy samples.
        return lambda log_pi: (log_p0.exp() * estimate(name, log_pi - log_q)).sum()

    forward = grad(lambda log_pi: kl_exact(log_pi, log_q).sum())  # ∇KL(π‖β)
    reverse = grad(lambda log_pi: kl_exact(log_q, log_pi).sum())  # ∇KL(β‖π)
    torch.testing.assert_close(grad(expected_estimator("k1")), torch.zeros_like(forward))
    torch.testing.assert_close(grad(expected_estimator("k2")), forward)
    torch.testing.assert_close(grad(expected_estimator("k3")), reverse)
    assert (forward - reverse).abs().max() > 1e-2  # the two gradients really differ


@pytest.mark.parametrize("start", [0.01, 3.0])
def test_adaptive_controller_reaches_its_target(start):
    """A planted problem: the policy's KL falls as λ grows, K(λ) = c/λ."""
    c, target = 1.5, 4.0
    ctl = AdaptiveKL(start, target=target, horizon=2000.0, clip=0.2)
    kl = c / ctl.value
    for _ in range(3000):
        ctl.update(kl, n=64)
        kl = c / ctl.value
    assert abs(kl - target) / target < 0.05, (kl, ctl.value)
    assert ctl.value == pytest.approx(c / target, rel=0.05)


def test_adaptive_step_is_the_proportional_rule():
    ctl = AdaptiveKL(0.5, target=2.0, horizon=100.0, clip=0.2)
    assert ctl.update(2.2, n=10) == pytest.approx(0.5 * (1 + 0.1 * 10 / 100))
    v = ctl.value
    assert ctl.update(100.0, n=10) == pytest.approx(v * (1 + 0.2 * 10 / 100))  # clipped
    v = ctl.value
    assert ctl.update(0.0, n=10) == pytest.approx(v * (1 - 0.2 * 10 / 100))
    v = ctl.value
    assert ctl.update(math.inf, n=10) == pytest.approx(v * (1 + 0.2 * 10 / 100))
    assert ctl.update(0.0, n=10_000) == 0.0  # never below 0


def test_fixed_controller_never_changes():
    ctl = FixedKL(0.3)
    for kl in (0.0, 1.0, 1e6, math.inf):
        assert ctl.update(kl, n=1000) == 0.3
    assert ctl.value == 0.3
    assert isinstance(controller(0.3, 0.0, 10.0, 0.2), FixedKL)
    assert isinstance(controller(0.3, 5.0, 10.0, 0.2), AdaptiveKL)
    with pytest.raises(ValueError):
        FixedKL(-1.0)
    with pytest.raises(ValueError):
        AdaptiveKL(0.1, target=0.0, horizon=10.0)


def test_penalty_config_section():
    cfg = apply_overrides(
        Config(),
        ["agent.kind=penalty", "penalty.estimator=k3", "penalty.where=loss",
         "penalty.coef=0.2", "penalty.target=6", "penalty.horizon=500", "penalty.clip=0.1"],
    ).validate()  # fmt: skip
    p = cfg.penalty
    assert cfg.agent.kind == "penalty"
    assert (p.estimator, p.where, p.coef, p.target, p.horizon, p.clip) == (
        "k3", "loss", 0.2, 6.0, 500.0, 0.1,
    )  # fmt: skip
    assert from_dict(tomllib.loads(to_toml(cfg))) == cfg
    assert Config().agent.kind == "budget" and Config().penalty.coef == 0.05


@pytest.mark.parametrize(
    "override,needle",
    [
        ("agent.kind=bandit", "agent.kind = 'bandit': must be one of budget|penalty"),
        ("penalty.estimator=k4", "penalty.estimator = 'k4': must be one of k1|k2|k3|exact"),
        ("penalty.where=both", "penalty.where = 'both': must be one of reward|loss"),
        ("penalty.coef=-0.1", "penalty.coef"),
        ("penalty.coef=nan", "penalty.coef"),
        ("penalty.target=-1", "penalty.target"),
        ("penalty.target=inf", "penalty.target"),
        ("penalty.horizon=0", "penalty.horizon"),
        ("penalty.clip=0", "penalty.clip"),
        ("penalty.nonsense=1", "unknown key penalty.nonsense"),
    ],
)
def test_penalty_config_errors_are_one_line(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("|", r"\|")) as err:
        apply_overrides(Config(), [override]).validate()
    assert "\n" not in str(err.value)
