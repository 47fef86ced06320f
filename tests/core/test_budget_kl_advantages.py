"""Budget accounting, KL estimators, returns and sampling against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from klbudget.core.advantages import lambda_return, normalize, reward_to_go
from klbudget.core.budget import ramp, spend, step_target
from klbudget.core.kl import kl_exact, kl_k1, kl_k3
from klbudget.core.sampling import sample_categorical


def test_spend_realized_and_expected():
    left = torch.tensor([5.0, 0.5, 2.0, 1.0])
    lr = torch.tensor([1.0, 2.0, -0.5, 3.0])
    kl = torch.tensor([0.2, 0.4, 0.1, 0.0])
    active = torch.tensor([True, True, True, False])
    real = spend(left, mode="realized", log_ratio=lr, kl=kl, active=active)
    assert real.tolist() == [4.0, 0.0, 2.5, 1.0]  # clamped at 0; a negative ratio refunds
    exp = spend(left, mode="expected", log_ratio=lr, kl=kl, active=active)
    torch.testing.assert_close(exp, torch.tensor([4.8, 0.1, 1.9, 1.0]))
    with pytest.raises(ValueError, match="unknown budget mode"):
        spend(left, mode="nope", log_ratio=lr, kl=kl, active=active)  # type: ignore[arg-type]


def test_step_target_and_ramp():
    k = step_target(torch.tensor([0.0, math.log(16.0), 100.0]), torch.tensor(17.0))
    torch.testing.assert_close(k, torch.tensor([1.0, 8.5, 17.0]))
    assert ramp(10.0, 0.0, 0.5) == 0.0
    assert ramp(10.0, 0.25, 0.5) == 5.0
    assert ramp(10.0, 0.9, 0.5) == 10.0
    assert ramp(10.0, 0.0, 0.0) == 10.0


def test_kl_exact_bernoulli_and_no_triangle_inequality():
    eps = 0.1
    tau = torch.tensor([1.0, 0.0]).log()  # Bernoulli(0)
    beta = torch.tensor([1 - eps / 2, eps / 2]).log()
    pi = beta.clone()
    assert kl_exact(pi, beta).item() == 0.0
    assert kl_exact(tau, beta).item() == pytest.approx(-math.log(1 - eps / 2))
    assert kl_exact(pi, tau).item() == math.inf


def test_k1_k3_are_unbiased():
    g = torch.Generator().manual_seed(0)
    log_p = torch.tensor([0.5, 0.3, 0.2]).log()
    log_q = torch.tensor([0.2, 0.3, 0.5]).log()
    x = sample_categorical(log_p.expand(200_000, 3), g)
    rho = log_p[x] - log_q[x]
    exact = kl_exact(log_p, log_q).item()
    assert kl_k1(rho).mean().item() == pytest.approx(exact, abs=0.01)
    assert kl_k3(rho).mean().item() == pytest.approx(exact, abs=0.01)
    assert (kl_k3(rho) >= 0).all()


def test_sampling_with_given_uniforms_and_on_a_subset_of_rows():
    """Given the uniforms the generator would draw, the same samples; a subset of rows with
    their own uniforms samples as in the whole batch (how the environment samples only the
    student's rows without changing anyone's draws); u = 0 and u → 1 pick the first and last
    outcomes of non-zero probability."""
    log_p = torch.randn(50, 7).log_softmax(-1)
    log_p[:, 0] = -torch.inf
    whole = sample_categorical(log_p, torch.Generator().manual_seed(3))
    u = torch.rand((50, 1), generator=torch.Generator().manual_seed(3))
    assert torch.equal(sample_categorical(log_p, u=u), whole)
    rows = torch.tensor([1, 4, 9, 31])
    assert torch.equal(sample_categorical(log_p[rows], u=u[rows]), whole[rows])
    log_p[:, -1] = -torch.inf
    ends = sample_categorical(log_p[:2], u=torch.tensor([[0.0], [1.0 - 1e-7]]))
    assert ends.tolist() == [1, 5]


def test_reward_to_go_masks_non_agent_steps():
    r = torch.tensor([[0.0, 1.0, 0.0, 2.0], [3.0, 0.0, 0.0, 0.0]])
    m = torch.tensor([[True, True, False, True], [True, False, True, True]])
    g = reward_to_go(r, m)
    assert g.tolist() == [[3.0, 3.0, 0.0, 2.0], [3.0, 0.0, 0.0, 0.0]]
    n = normalize(torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(n, torch.tensor([-1.0, 0.0, 1.0]))
    assert normalize(torch.tensor([4.0])).item() == 0.0


def _lambda_return_by_definition(r, v, m, lam):
    """Σ_k (weights of the n-step returns): G^λ = (1 − λ) Σ_n λ^(n−1) G^(n) + λ^(N−1) G, with
    G^(n) the n-step return over the masked steps of one row (the textbook form)."""
    out = torch.zeros_like(r)
    for b in range(r.shape[0]):
        steps = m[b].nonzero().squeeze(-1).tolist()
        for i, t in enumerate(steps):
            later = steps[i:]
            total, weight = 0.0, 1.0
            for n in range(1, len(later) + 1):
                g_n = float(r[b, later[:n]].sum())
                if n < len(later):
                    g_n += float(v[b, later[n]])
                    total += (1 - lam) * weight * g_n
                    weight *= lam
                else:
                    total += weight * g_n  # the Monte-Carlo return takes the rest
            out[b, t] = total
    return out


def test_lambda_return_matches_its_definition_and_the_monte_carlo_return():
    g = torch.Generator().manual_seed(0)
    m = torch.rand(3, 9, generator=g) > 0.35
    r = torch.where(m, torch.randn(3, 9, generator=g, dtype=torch.float64), 0.0)
    v = torch.randn(3, 9, generator=g, dtype=torch.float64)
    for lam in (0.0, 0.5, 0.95):
        got = lambda_return(r, v, m, lam)
        torch.testing.assert_close(got, _lambda_return_by_definition(r, v, m, lam))
    assert torch.equal(lambda_return(r, v, m, 1.0), reward_to_go(r, m))
    # λ = 0: one reward, then the critic at the next step of the row (0 after the last one)
    r1 = torch.tensor([[1.0, 0.0, 2.0, 0.0]])
    m1 = torch.tensor([[True, False, True, True]])
    v1 = torch.tensor([[9.0, 9.0, 5.0, 7.0]])
    assert lambda_return(r1, v1, m1, 0.0).tolist() == [[6.0, 0.0, 9.0, 0.0]]
    with pytest.raises(ValueError, match="lambda must lie"):
        lambda_return(r1, v1, m1, 1.5)


def test_sampling_matches_probabilities_and_skips_zeros():
    g = torch.Generator().manual_seed(1)
    p = torch.tensor([0.0, 0.1, 0.0, 0.6, 0.3, 0.0])
    x = sample_categorical(p.log().expand(100_000, 6), g)
    freq = torch.bincount(x, minlength=6).float() / x.numel()
    assert freq[p == 0].sum().item() == 0.0
    torch.testing.assert_close(freq, p, atol=0.006, rtol=0)
