"""The fixed-KL mixture against closed forms, gradcheck, and extreme inputs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq

from klbudget.core import mixture
from klbudget.core.mixture import fixed_kl_mixture, kl_divergence


def onehot_kl(alpha: float, b: list[float], j: int) -> float:
    """KL(α e_j + (1 − α) b ‖ b) in closed form."""
    xj = alpha + (1 - alpha) * b[j]
    rest = (1 - alpha) * (1 - b[j]) * math.log(1 - alpha) if alpha < 1 else 0.0
    return xj * math.log(xj / b[j]) + rest


@pytest.mark.parametrize("k", [1e-6, 1e-3, 0.05, 0.5, 1.5])
def test_onehot_proposal_matches_closed_form(k):
    b = [0.5, 0.3, 0.15, 0.05]
    j = 3
    log_b = torch.tensor(b, dtype=torch.float64).log()
    log_a = torch.full((4,), -torch.inf, dtype=torch.float64)
    log_a[j] = 0.0
    out = fixed_kl_mixture(log_a, log_b, torch.tensor(k, dtype=torch.float64))
    kl_full = onehot_kl(1.0 - 1e-15, b, j)  # = −log b_j
    if k >= kl_full:
        assert out.alpha.item() == 1.0
        return
    alpha_ref = brentq(lambda a: onehot_kl(a, b, j) - k, 1e-300, 1 - 1e-15, xtol=1e-15)
    assert out.alpha.item() == pytest.approx(alpha_ref, rel=1e-9)
    assert out.kl.item() == pytest.approx(k, rel=1e-9)
    assert out.kl.item() <= k
    x = torch.tensor(b, dtype=torch.float64) * (1 - alpha_ref)
    x[j] += alpha_ref
    torch.testing.assert_close(out.log_x.exp(), x, rtol=1e-8, atol=1e-12)


def test_cheap_proposal_is_played_whole():
    log_b = torch.tensor([0.4, 0.6]).log()
    log_a = torch.tensor([0.45, 0.55]).log()
    out = fixed_kl_mixture(log_a, log_b, torch.tensor(1.0))
    assert out.alpha.item() == 1.0
    torch.testing.assert_close(out.log_x, log_a)
    torch.testing.assert_close(out.kl, kl_divergence(log_a, log_b))


def test_zero_target_plays_base_exactly():
    log_b = torch.randn(5, 30).log_softmax(-1)
    log_a = torch.randn(5, 30).log_softmax(-1)
    out = fixed_kl_mixture(log_a, log_b, torch.zeros(5))
    assert torch.equal(out.log_x, log_b)
    assert torch.equal(out.kl, torch.zeros(5))


@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-9), (torch.float32, 1e-6)])
def test_hits_target_from_below(dtype, rel):
    g = torch.Generator().manual_seed(0)
    log_b = (3 * torch.randn(64, 500, generator=g, dtype=dtype)).log_softmax(-1)
    z = 2 * torch.randn(64, 500, generator=g, dtype=dtype)
    log_a = (z + log_b).log_softmax(-1)
    k = torch.logspace(-8, 0, 64, dtype=dtype) * kl_divergence(log_a, log_b).min()
    out = fixed_kl_mixture(log_a, log_b, k)
    assert (out.kl <= k).all()
    torch.testing.assert_close(out.kl, k, rtol=rel, atol=0)
    # The reported KL is the KL of the returned distribution.
    ref = kl_divergence(out.log_x.double(), log_b.double())
    torch.testing.assert_close(
        ref,
        out.kl.double(),
        rtol=1e-3 if dtype == torch.float32 else 1e-7,
        atol=1e-7 if dtype == torch.float32 else 1e-14,
    )


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    logits = 2 * torch.randn(3, 7, generator=g, dtype=torch.float64)
    logits[0, 2] = -torch.inf  # a token the base never emits
    log_b = logits.log_softmax(-1)
    z = torch.randn(3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.tensor([0.02, 0.2, 0.5], dtype=torch.float64, requires_grad=True)

    def fn(z, k):
        out = fixed_kl_mixture((z + log_b).log_softmax(-1), log_b, k, iters=60)
        finite = torch.isfinite(out.log_x)
        return torch.where(finite, out.log_x, torch.zeros_like(out.log_x)), out.kl, out.alpha

    assert torch.autograd.gradcheck(fn, (z, k), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_hand_written_backward_matches_autograd_of_the_algebra(dtype):
    """The backward the agent uses against autograd through the IFT step, on rows at α = 0
    (k = 0), interior and α = 1 (k large), with tokens the base never emits, through a loss
    that reads log x, the entropy, KL and α."""
    g = torch.Generator().manual_seed(3)
    rows, v = 64, 300
    log_b = 3 * torch.randn(rows, v, generator=g, dtype=dtype)
    log_b[:, :15] = -torch.inf
    log_b = log_b.log_softmax(-1)
    z = (2 * torch.randn(rows, v, generator=g, dtype=dtype)).requires_grad_()
    s = torch.randn(rows, generator=g, dtype=dtype).requires_grad_()
    weights = torch.randn(rows, v, generator=g, dtype=dtype)
    scale = torch.tensor([0.0, 0.01, 0.3, 5.0, 100.0, 1e4], dtype=dtype).repeat(rows // 6 + 1)

    def grads(reference: bool):
        log_a = (z + log_b).log_softmax(-1)
        k = torch.nn.functional.softplus(s) * scale[:rows]
        out = fixed_kl_mixture(log_a, log_b, k, autograd=reference)
        lx = out.log_x
        p = lx.exp()
        ent = -(p * torch.where(p > 0, lx, torch.zeros_like(lx))).sum(-1)
        finite = torch.where(torch.isfinite(lx), lx, torch.zeros_like(lx))
        loss = (finite * weights).sum() + ent.sum() + out.kl.pow(2).sum() + 3 * out.alpha.sum()
        return out, torch.autograd.grad(loss, (z, s))

    out, (gz, gs) = grads(False)
    ref, (rz, rs) = grads(True)
    interior = ((out.alpha > 0) & (out.alpha < 1)).sum()
    assert 10 < interior < rows and (out.alpha == 1).any() and (out.alpha == 0).any()
    assert torch.equal(out.alpha, ref.alpha)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    # log x two ways: log b plus the solver's log(x/b), and a log-sum-exp of the two parts.
    torch.testing.assert_close(out.log_x, ref.log_x, rtol=tol, atol=tol)
    assert (gz - rz).abs().max() <= tol * rz.abs().max()
    assert (gs - rs).abs().max() <= tol * rs.abs().max()


def test_gradient_of_k_matches_implicit_function():
    """dα/dk = 1 / f'(α) at the root."""
    log_b = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64).log()
    log_a = torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64).log()
    k = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    out = fixed_kl_mixture(log_a, log_b, k)
    (g,) = torch.autograd.grad(out.alpha, k)
    al = out.alpha.item()
    a, b = log_a.exp(), log_b.exp()
    df = ((a - b) * torch.log((al * a + (1 - al) * b) / b)).sum().item()
    assert g.item() == pytest.approx(1 / df, rel=1e-8)


def _check_sane(log_a, log_b, k):
    z = log_a.clone().requires_grad_()
    kk = k.clone().requires_grad_()
    out = fixed_kl_mixture(z.log_softmax(-1), log_b, kk)
    assert not torch.isnan(out.log_x).any()
    assert (out.log_x <= 1e-5).all()
    assert torch.isfinite(out.kl).all() and (out.kl >= 0).all()
    kf = torch.where(torch.isfinite(k), k, torch.full_like(k, torch.inf))
    assert (out.kl <= kf * (1 + 1e-5) + 1e-6).all()
    torch.testing.assert_close(out.log_x.exp().sum(-1), torch.ones_like(out.kl), atol=1e-4, rtol=0)
    # The played distribution never leaves the base's support.
    assert (out.log_x[torch.isneginf(log_b)] == -torch.inf).all()
    loss = (out.log_x.exp() * torch.arange(log_b.shape[-1])).sum() + out.kl.sum()
    loss.backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(kk.grad).all()


@settings(max_examples=150, deadline=None)
@given(
    v=st.integers(1, 12),
    scale_b=st.sampled_from([0.0, 1.0, 10.0, 80.0, 1e4]),
    scale_z=st.sampled_from([0.0, 1e-6, 1.0, 30.0, 1e3]),
    n_inf=st.integers(0, 11),
    k=st.sampled_from([0.0, 1e-30, 1e-12, 1e-6, 0.01, 1.0, 50.0, 1e30, math.inf]),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_extreme_inputs(v, scale_b, scale_z, n_inf, k, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    logits_b = scale_b * torch.randn(v, generator=g, dtype=dtype)
    logits_b[: min(n_inf, v - 1)] = -torch.inf  # keep at least one token
    log_b = logits_b.log_softmax(-1)
    z = scale_z * torch.randn(v, generator=g, dtype=dtype) + log_b
    _check_sane(z, log_b, torch.tensor(k, dtype=dtype))


def test_one_hot_base_and_equal_proposal():
    log_b = torch.tensor([-torch.inf, 0.0, -torch.inf])
    for log_a in (log_b.clone(), torch.tensor([-3.0, -0.1, -5.0])):
        for k in (0.0, 1e-3, 1e9, math.inf):
            _check_sane(log_a, log_b, torch.tensor(k))
    log_b = torch.randn(10).log_softmax(-1)
    for k in (0.0, 1.0):
        _check_sane(log_b.clone(), log_b, torch.tensor(k))


def test_float32_extremes():
    big = torch.finfo(torch.float32).max / 4
    log_b = torch.tensor([0.0, -big, -80.0, -1e-30]).log_softmax(-1)
    z = torch.tensor([big, -big, 100.0, 0.0])
    _check_sane(z + log_b, log_b, torch.tensor(2.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_guess_of_alpha_moves_only_where_the_solve_starts(dtype):
    """PPO replays a step from the rollout's α: any guess (near, far, at or outside the
    ends, NaN) must give the root the cold start gives, and never overspend."""
    g = torch.Generator().manual_seed(1)
    n, v = 96, 400
    log_b = (3 * torch.randn(n, v, generator=g, dtype=dtype)).log_softmax(-1)
    log_a = (2 * torch.randn(n, v, generator=g, dtype=dtype) + log_b).log_softmax(-1)
    k = torch.logspace(-6, 0, n, dtype=dtype) * kl_divergence(log_a, log_b).min()
    cold = fixed_kl_mixture(log_a, log_b, k)
    assert ((cold.alpha > 0) & (cold.alpha < 1)).all()  # every row is solved
    near = cold.alpha * torch.exp(0.3 * torch.randn(n, generator=g, dtype=dtype))
    odd = torch.tensor([0.0, 1.0, -1.0, 2.0, math.nan, 1e-300, 1 - 1e-12], dtype=dtype)
    guesses = {
        "near": near.clamp(max=0.999),
        "far": torch.rand(n, generator=g, dtype=dtype),
        "odd": odd.repeat(n // len(odd) + 1)[:n],
    }
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    for name, guess in guesses.items():
        warm = fixed_kl_mixture(log_a, log_b, k, alpha0=guess)
        assert (warm.kl <= k).all(), name
        torch.testing.assert_close(warm.alpha, cold.alpha, rtol=tol, atol=0, msg=name)
        torch.testing.assert_close(warm.kl, cold.kl, rtol=tol, atol=0, msg=name)


def test_rows_solved_a_few_at_a_time_match_all_at_once(monkeypatch) -> None:
    torch.manual_seed(3)
    r, v = 40, 50
    log_b = torch.log_softmax(2 * torch.randn(r, v, dtype=torch.float64), -1)
    log_a = torch.log_softmax(log_b + torch.randn(r, v, dtype=torch.float64), -1)
    k = torch.rand(r, dtype=torch.float64) * 0.3
    k[::7] = 0.0  # rows at α = 0 and α = 1 among the chunks
    k[3::7] = 50.0
    guess = torch.rand(r, dtype=torch.float64)
    for alpha0 in (None, guess):
        whole = mixture._solve_alpha(log_a, log_b, k, 30, alpha0)
        monkeypatch.setattr(mixture, "SOLVE_BYTES", 8 * v * 3)  # 3 rows at a time
        parts = mixture._solve_alpha(log_a, log_b, k, 30, alpha0)
        monkeypatch.undo()
        assert bool(((whole[0] > 0) & (whole[0] < 1)).any())
        assert bool((whole[0] == 1).any()) and bool((whole[0] == 0).any())
        torch.testing.assert_close(parts[0], whole[0], rtol=1e-9, atol=0)
        torch.testing.assert_close(parts[1], whole[1], rtol=1e-9, atol=0)
        torch.testing.assert_close(parts[2], whole[2], rtol=1e-9, atol=0)
        assert bool((parts[1] <= k).all())


def test_a_proposal_within_the_target_only_in_float64_is_played_whole(monkeypatch) -> None:
    """KL(a‖b) summed in float32 can come out just above k while the float64 KL is within
    it: then α = 1, found in one evaluation, not approached by 30 steps of bisection."""
    g = torch.Generator().manual_seed(0)
    log_b = (2 * torch.randn(64, 300, generator=g)).log_softmax(-1)
    log_a = (0.05 * torch.randn(64, 300, generator=g) + log_b).log_softmax(-1)
    a, b = log_a.double().exp(), log_b.double().exp()
    a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    kl64 = (a * (a / b).log()).sum(-1)
    k = (kl64 * (1 + 5e-7)).float()
    kl32 = torch.linalg.vecdot(log_a.exp(), log_a - log_b)
    rows = kl32 > k  # "over the target" in float32
    assert int(rows.sum()) >= 8
    real, evaluations = torch.log1p, []

    def counted(x, *args, **kwargs):
        if x.dtype == torch.float64 and x.numel():
            evaluations.append(x.shape[0])
        return real(x, *args, **kwargs)

    monkeypatch.setattr(torch, "log1p", counted)
    out = fixed_kl_mixture(log_a[rows], log_b[rows], k[rows])
    monkeypatch.undo()
    assert len(evaluations) == 1
    assert (out.alpha == 1).all()
    assert torch.equal(out.log_x, log_a[rows])
    assert (out.kl <= k[rows]).all()
