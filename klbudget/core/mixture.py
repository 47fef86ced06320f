r"""The fixed-KL mixture (docs/design.md, "Actor head").

Given a proposal ``a`` and a base ``b`` over the same V outcomes and a target ``k >= 0``,
play

    x_α = α·a + (1 − α)·b,      α ∈ [0, 1],      KL(x_α ‖ b) = k,

with α = 1 when KL(a‖b) ≤ k already. f(α) = KL(x_α‖b) is convex and increasing on [0, 1]
with f(0) = 0, so the root is unique.

Numerics. Write r = a/b and δ_i = α(r_i − 1). Then KL(x_α‖b) = Σ_i b_i φ(δ_i) with
φ(δ) = (1+δ)·log(1+δ) − δ ≥ 0: every term is non-negative, so no cancellation between
terms. Where δ is small φ uses its series; where b_i is tiny (r_i huge) the term is
computed as x_i·log(x_i/b_i) − α(a_i − b_i) in log space, never forming r_i. The solve is a
safeguarded Newton iteration on t = log α applied to log f(e^t) = log k, which is nearly
linear in t (f ≈ c·α² for small α), with a bisection fallback inside a shrinking bracket.
A row stops only at an α where the computed f(α) ≤ k (within the tolerance below it), so
the achieved KL never exceeds the target (the `expected` budget relies on this); rows the
iteration cap stops are scaled back by convexity until they do. "Computed" is float64, whose
rounding of f is about 1e-32 nats at the smallest α (its terms are O(α), f is O(α²)): for
targets below about 1e-25 nats the exact KL of the returned α can exceed k by that much.

Gradients. α is found without autograd; :class:`_Mixture` carries the implicit-function
gradient dα = (dk − ∂f/∂a·da)/f'(α*) in a hand-written backward, one pass over (…, V)
with no autograd graph of the algebra, while the forward keeps the safe-side α*.
`_mixture_autograd` (used when log b itself needs a gradient) gets the same gradient by
autograd: one Newton step from the detached root, α* − (f(α*; a) − k)/f'(α*), whose value
is dropped (straight-through); at the root the residual is zero, so the step's derivative
is exactly the implicit-function gradient. A test holds the two to rounding.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

_SMALL_DELTA = 1e-3  # below this |δ| the series of φ is more accurate than the closed form
# The solve's float64 (rows, V) tensors stay within this many bytes (rows are solved a few
# at a time): large ones are fresh pages from the system on every allocation, which cost
# more than the arithmetic (docs/benchmarks.md, "Fresh pages"), and small ones stay in cache.
SOLVE_BYTES = 1 << 20


class MixtureOut(NamedTuple):
    log_x: Tensor  # (..., V) log of the played distribution
    kl: Tensor  # (...) KL(x‖b) actually achieved (≤ k up to float rounding)
    alpha: Tensor  # (...) mixture weight on the proposal


def _kl_terms(log_a: Tensor, log_b: Tensor, log_alpha: Tensor, log1m_alpha: Tensor) -> Tensor:
    """Per-outcome KL terms b·φ(δ) of KL(x_α‖b), shape (..., V). `log_alpha` has shape (..., 1)."""
    alpha = log_alpha.exp()
    finite_b = torch.isfinite(log_b)
    lb = torch.where(finite_b, log_b, torch.zeros_like(log_b))
    la = torch.where(finite_b, log_a, torch.full_like(log_a, -torch.inf))
    # log(x/b) = log(α·a/b + (1 − α)), in log space so a/b never overflows.
    log_ratio = torch.logaddexp(log_alpha + la - lb, log1m_alpha.expand_as(la))
    x = (lb + log_ratio).exp()
    a = la.exp()
    b = lb.exp()
    big = x * log_ratio - alpha * (a - b)
    # δ = α(a/b − 1); only trusted where it is small, so clamp the exponent.
    delta = alpha * torch.expm1((la - lb).clamp(max=20.0))
    d = delta
    series = b * d * d * (0.5 - d / 6.0 + d * d / 12.0)
    terms = torch.where(d.abs() < _SMALL_DELTA, series, big)
    return torch.where(finite_b, terms.clamp(min=0.0), torch.zeros_like(terms))


def _f_and_df(log_a: Tensor, log_b: Tensor, log_alpha: Tensor) -> tuple[Tensor, Tensor]:
    """f(α) = KL(x_α‖b) and f'(α) = Σ (a − b)·log(x_α/b), both shape (...)."""
    log1m_alpha = torch.log1p(-log_alpha.exp().clamp(max=1.0))
    f = _kl_terms(log_a, log_b, log_alpha, log1m_alpha).sum(-1)
    finite_b = torch.isfinite(log_b)
    lb = torch.where(finite_b, log_b, torch.zeros_like(log_b))
    la = torch.where(finite_b, log_a, torch.full_like(log_a, -torch.inf))
    log_ratio = torch.logaddexp(log_alpha + la - lb, log1m_alpha.expand_as(la))
    diff = torch.where(finite_b, la.exp() - lb.exp(), torch.zeros_like(la))
    df = (diff * log_ratio).sum(-1)
    return f, df


def _logaddexp(x: Tensor, y: Tensor) -> Tensor:
    """log(e^x + e^y) whose gradient stays finite where both inputs are -inf."""
    both = torch.isneginf(x) & torch.isneginf(y)
    out = torch.logaddexp(
        torch.where(both, torch.zeros_like(x), x), torch.where(both, torch.zeros_like(y), y)
    )
    return torch.where(both, x, out)


def kl_divergence(log_x: Tensor, log_b: Tensor) -> Tensor:
    r"""Exact KL(x‖b) = Σ_i x_i (log x_i − log b_i); terms with x_i = 0 contribute 0.

    Entries with b_i = 0 < x_i give +inf.
    """
    x = log_x.exp()
    diff = torch.where(x > 0, log_x - log_b, torch.zeros_like(log_x))
    return (x * diff).sum(-1)


def fixed_kl_mixture(
    log_a: Tensor,
    log_b: Tensor,
    k: Tensor | float,
    *,
    iters: int = 30,
    autograd: bool = False,
    alpha0: Tensor | None = None,
) -> MixtureOut:
    r"""Play x = α·a + (1−α)·b with KL(x‖b) = k (α = 1 if KL(a‖b) ≤ k).

    Args:
        log_a: (..., V) log-proposal, normalised. Mass of `a` outside supp(b) makes
            KL(x‖b) infinite for every α > 0, so α = 0 there.
        log_b: (..., V) log-base, normalised; entries may be -inf.
        k: (...) KL target in nats, ≥ 0 (+inf allowed).
        iters: cap on Newton iterations; a row stops at the first α whose log f(α) lies
            within 1e-7 (float32 inputs; 1e-10 for float64) below log k: about 3
            evaluations per solve on a rollout's inputs (`benchmarks/mixture.py`), more for
            tiny targets.
        autograd: differentiate through the algebra by autograd instead of the hand-written
            backward (same gradient, slower; always so when log_b needs a gradient).
        alpha0: (...) a guess of α (e.g. the rollout's, when PPO replays a step with
            slightly moved parameters) where the Newton iteration starts instead of its own
            estimate; entries outside (0, 1) are ignored. The root is the same to the
            solver's tolerance (the result may differ in rounding).

    Returns:
        MixtureOut(log_x, kl, alpha) with kl ≤ k. Differentiable in `log_a` and `k`.
    """
    if log_a.shape != log_b.shape:
        raise ValueError(f"log_a {tuple(log_a.shape)} and log_b {tuple(log_b.shape)} differ")
    k = torch.as_tensor(k, dtype=log_a.dtype, device=log_a.device).expand(log_a.shape[:-1])
    v = log_a.shape[-1]
    guess = None if alpha0 is None else alpha0.detach().reshape(-1)
    alpha_star, kl_star, log_x = _solve_alpha(
        log_a.detach().reshape(-1, v),
        log_b.detach().reshape(-1, v),
        k.detach().reshape(-1),
        iters,
        guess,
    )
    alpha_star, kl_star = alpha_star.reshape(k.shape), kl_star.reshape(k.shape)
    log_x = log_x.reshape(log_a.shape)
    if torch.is_grad_enabled() and (log_a.requires_grad or k.requires_grad):
        if autograd or log_b.requires_grad:
            return _mixture_autograd(log_a, log_b, k, alpha_star, kl_star)
        # The solver normalises internally; do the same here so gradients see it too.
        log_a = log_a - torch.logsumexp(log_a, -1, keepdim=True)
        log_b = log_b - torch.logsumexp(log_b, -1, keepdim=True)
        return MixtureOut(*_Mixture.apply(log_a, log_b, k, alpha_star, kl_star, log_x))
    return MixtureOut(log_x, kl_star, alpha_star)


class _Mixture(torch.autograd.Function):
    r"""(log_a, k) → (log x, KL(x‖b), α) at the solver's root, with a hand-written backward.

    With x = α·a + (1 − α)·b, L_i = log(x_i/b_i), f(α) = KL(x_α‖b) and f'(α) = Σ (a − b)·L:
    ∂f/∂a_i = α·L_i (φ'(δ) = log(1 + δ)), ∂log x_i/∂log a_i = α·a_i/x_i,
    ∂log x_i/∂α = (a_i − b_i)/x_i, and on the interior dα = (dk − Σ α·L_i·da_i)/f'
    (implicit function theorem). At α = 1, x = a and KL = Σ a·(log a − log b); at α = 0,
    x = b and nothing depends on (a, k). One pass over (…, V), no autograd graph of the
    solver's algebra.
    """

    @staticmethod
    def forward(ctx, log_a, log_b, k, alpha_star, kl_star, mixed):  # noqa: ARG004
        # The solver's log x, with the endpoints exactly the (normalised) a and b.
        zero, one = (alpha_star == 0).unsqueeze(-1), (alpha_star == 1).unsqueeze(-1)
        log_x = torch.where(zero, log_b, torch.where(one, log_a, mixed))
        ctx.save_for_backward(log_a, log_b, log_x, alpha_star)
        ctx.mark_non_differentiable(log_b)
        return log_x, kl_star.clone(), alpha_star.clone()

    @staticmethod
    def backward(ctx, g_x, g_kl, g_alpha):
        log_a, log_b, log_x, alpha = ctx.saved_tensors
        v = log_a.shape[-1]
        shape = log_a.shape
        log_a, log_b, log_x, g_x = (t.reshape(-1, v) for t in (log_a, log_b, log_x, g_x))
        alpha, g_kl, g_alpha = (t.reshape(-1) for t in (alpha, g_kl, g_alpha))
        g_a = torch.zeros_like(log_a)
        dk = torch.zeros_like(alpha)
        # α = 1: log x = log a and KL = Σ a·(log a − log b) (rows at α = 0 get nothing).
        one = (alpha == 1).nonzero().squeeze(-1)
        if one.numel():
            la, lb = log_a[one], log_b[one]
            a = la.exp()
            kl_grad = torch.where(
                a > 0, a * (la - torch.where(torch.isfinite(lb), lb, la) + 1), 0.0
            )
            g_a[one] = g_x[one] + g_kl[one, None] * kl_grad
        inner = ((alpha > 0) & (alpha < 1)).nonzero().squeeze(-1)
        if inner.numel():
            la, lb, lx, gx = log_a[inner], log_b[inner], log_x[inner], g_x[inner]
            al, gk = alpha[inner], g_kl[inner]
            seen = torch.isfinite(lx)  # x_i > 0; then b_i > 0, since α < 1
            gx = torch.where(seen, gx, 0.0)
            a = la.exp()
            L = torch.where(seen, lx - lb, 0.0)  # log(x/b)
            # a/x ≤ 1/α and b/x ≤ 1/(1 − α): formed in log space, never 0/0.
            a_over_x = torch.where(seen, (la - lx).exp(), 0.0)
            b_over_x = torch.where(seen, (lb - lx).exp(), 0.0)
            df = ((a - torch.where(seen, lb.exp(), 0.0)) * L).sum(-1)  # f'(α)
            ok = df > 0
            # Everything α feeds: log x through (a − b)/x, α itself, and KL through f'.
            g_al = g_alpha[inner] + (gx * (a_over_x - b_over_x)).sum(-1) + gk * df
            d_al = torch.where(ok, g_al / torch.where(ok, df, 1.0), 0.0)  # dL/dk
            # Direct α·a/x, plus α·a·L·(∂KL/∂a share − dα's share); without f' > 0, α is held.
            share = torch.where(ok, gk - d_al, gk).unsqueeze(-1)
            g_a[inner] = al.unsqueeze(-1) * (gx * a_over_x + a * L * share)
            dk[inner] = d_al
        return g_a.reshape(shape), None, dk.reshape(shape[:-1]), None, None, None


def _mixture_autograd(log_a, log_b, k, alpha_star, kl_star) -> MixtureOut:
    """The same outputs and gradients through autograd of the algebra (log_b differentiable
    too): one Newton step from the detached root carries the implicit-function gradient."""
    log_a = log_a - torch.logsumexp(log_a, -1, keepdim=True)
    log_b = log_b - torch.logsumexp(log_b, -1, keepdim=True)
    zero_alpha, one_alpha = alpha_star == 0, alpha_star == 1
    interior = ~(zero_alpha | one_alpha)
    half = torch.full_like(alpha_star, 0.5)
    # Rows at an endpoint take a harmless α = 1/2 in the algebra so no inf reaches autograd.
    a_s = torch.where(interior, alpha_star, half)
    f, df = _f_and_df(log_a, log_b, a_s.log().unsqueeze(-1))
    interior = interior & (df.detach() > 0)
    safe_df = torch.where(interior, df.detach(), torch.ones_like(df))
    alpha_ift = a_s - (f - k) / safe_df
    # Value of the safe-side root α*, gradient of the IFT step.
    alpha = torch.where(interior, alpha_star + (alpha_ift - alpha_ift.detach()), alpha_star)
    a_safe = torch.where(interior | ~(zero_alpha | one_alpha), alpha, half).unsqueeze(-1)
    log_alpha, log1m_alpha = a_safe.log(), torch.log1p(-a_safe)
    mixed = _logaddexp(log_alpha + log_a, log1m_alpha + log_b)
    log_x = torch.where(
        zero_alpha.unsqueeze(-1), log_b, torch.where(one_alpha.unsqueeze(-1), log_a, mixed)
    )
    kl_mixed = _kl_terms(log_a, log_b, log_alpha, log1m_alpha).sum(-1)
    kl_grad = torch.where(
        zero_alpha,
        torch.zeros_like(kl_mixed),
        torch.where(one_alpha, kl_divergence(log_x, log_b), kl_mixed),
    )
    kl = kl_star + (kl_grad - kl_grad.detach())  # solver's value, exact gradient
    return MixtureOut(log_x, kl, alpha)


@torch.no_grad()
def _solve_alpha(
    log_a: Tensor, log_b: Tensor, k: Tensor, iters: int, alpha0: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Root α of KL(x_α‖b) = k on [0, 1], the KL it achieves (never above k), and log x_α.

    Runs in float64 on precomputed d = a/b − 1, so one iteration costs one log1p and one
    batched matrix product per row: L = log(1 + αd), [Σ b·L, f'] = L·[b, a − b],
    f = Σ b·L + α·f'. Float64 matters: f is O(α²) while its terms are O(α). The last
    iteration's L is log(x/b) at the returned α, so log x = log b + L costs one addition;
    rows at α = 0 and α = 1 return log b and log a as given.
    """
    step = max(1, SOLVE_BYTES // (8 * log_a.shape[-1]))
    if log_a.shape[0] > step:  # rows are independent: solve a few at a time
        parts = [
            _solve_alpha(
                log_a[i : i + step],
                log_b[i : i + step],
                k[i : i + step],
                iters,
                None if alpha0 is None else alpha0[i : i + step],
            )
            for i in range(0, log_a.shape[0], step)
        ]
        return tuple(torch.cat([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]
    # Stop near the precision of the caller's dtype (float32: KL within about an ulp of k).
    tol = 1e-10 if log_a.dtype == torch.float64 else 1e-7
    kk = k.double()
    # KL(a‖b) in the input precision; +inf when a has mass outside supp(b).
    # A plain dot product over the row; 0·(−inf) makes it NaN exactly where a_i = 0 meets
    # b_i = 0 or log a_i = −inf, and only those rows take the slower sum that drops a_i = 0.
    f1 = torch.linalg.vecdot(log_a.exp(), log_a - log_b)
    if bool((odd := f1.isnan()).any()):
        la, lb = log_a[odd], log_b[odd]
        f1[odd] = (la.exp() * torch.where(la > -torch.inf, la - lb, 0.0)).sum(-1)
    f1 = f1.double().clamp(min=0.0)  # rounding can make KL(a‖a) slightly negative
    # k = 0 means "play the base", exactly; mass outside supp(b) is never played.
    full = (f1 <= kk) & (kk > 0) & torch.isfinite(f1)
    none = ~full & ((kk <= 0) | ~torch.isfinite(f1) | ~(f1 > 0))
    active = ~(full | none)
    alpha = torch.where(full, torch.ones_like(kk), torch.zeros_like(kk))
    kl = torch.where(full, f1, torch.zeros_like(kk))
    log_x = torch.where(full.unsqueeze(-1), log_a, log_b)
    if not bool(active.any()):
        return alpha.to(log_a.dtype), kl.to(log_a.dtype), log_x

    rows = active.nonzero().squeeze(-1)
    a = log_a[rows].double().exp()
    b = log_b[rows].double().exp()
    # Renormalise in float64 so Σ(a − b) = 0 to double precision (the O(α) terms cancel).
    a = a / a.sum(-1, keepdim=True)
    b = b / b.sum(-1, keepdim=True)
    w = torch.stack([b, a - b], -1)  # (R, V, 2)
    d = (a - b) / b.clamp(min=1e-300)
    kr = kk[rows]

    def f_df(al: Tensor, d: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        L = torch.log1p(al.unsqueeze(-1) * d)  # (R, V); 1 + αd > 0 since d ≥ −1
        s = torch.bmm(L.unsqueeze(1), w).squeeze(1)  # (R, 2)
        return s[:, 0] + al * s[:, 1], s[:, 1], L

    tiny = 1e-300
    log_k_all = torch.log(kr)
    # Start where f would reach k if it grew as α² all the way to f(1) = KL(a‖b): close
    # when the root is near 1 (the common case in a rollout), a few Newton steps otherwise.
    t_all = (0.5 * (log_k_all - torch.log(f1[rows]))).clamp(max=0.0)
    if alpha0 is not None:
        guess = alpha0[rows].double()
        t_all = torch.where((guess > 0) & (guess < 1), guess.log(), t_all)
    # Bracket in t = log α: f(e^lo) ≤ k < f(e^hi).
    lo_all = torch.full_like(t_all, math.log(tiny))
    # The iteration aims half a tolerance below log k and a row is done only at an f ≤ k
    # within tol of it: the α it keeps never overspends, and the log(x/b) and f of its last
    # evaluation are kept, so settled rows need no further pass.
    aim_all = log_k_all - 0.5 * tol
    L_all = torch.empty_like(d)
    f_all = torch.zeros_like(kr)
    settled = torch.zeros_like(kr, dtype=torch.bool)
    # KL(a‖b) in the input precision just above k can be within k in float64, and then
    # α = 1, which the iteration (aiming under k) would only approach by bisection: such
    # rows are tried at α = 1 first.
    edge = (f1[rows] <= kr * (1 + 1e-3)).nonzero().squeeze(-1)
    if edge.numel():
        f, _, L = f_df(torch.ones_like(kr[edge]), d[edge], w[edge])
        fits = f <= kr[edge]
        one = edge[fits]
        t_all[one], settled[one] = 0.0, True
        L_all[one], f_all[one] = L[fits], f[fits]
    # A converged row stays where it is (stepped again, it can land on its own bracket end
    # and be sent back to bisection), and once a quarter of the rows have converged the
    # rest are copied out, so that iterations cost only the rows still moving.
    todo = torch.arange(t_all.shape[0])
    t, lo, aim, k_todo, d_todo, w_todo = t_all.clone(), lo_all.clone(), aim_all, kr, d, w
    if bool(settled.any()):
        keep = ~settled
        todo, t, lo, aim, k_todo = todo[keep], t[keep], lo[keep], aim[keep], k_todo[keep]
        d_todo, w_todo = d_todo[keep], w_todo[keep]
    hi = torch.zeros_like(t)
    for _ in range(iters):
        al = t.exp()
        f, df, L = f_df(al, d_todo, w_todo)
        below = f <= k_todo
        lo = torch.where(below, torch.maximum(lo, t), lo)
        hi = torch.where(below, hi, torch.minimum(hi, t))
        # Newton on h(t) = log f(e^t) − aim, with h'(t) = α f'(α) / f(α).
        h = torch.log(f.clamp(min=tiny)) - aim
        # A row settles once and then stays as it settled, evaluated again or not.
        was = settled[todo]
        new = (h.abs() < 0.5 * tol) & below & ~was
        done = new | was
        t_all[todo], lo_all[todo] = t, lo
        if bool(new.any()):
            idx = todo[new]
            L_all[idx], f_all[idx], settled[idx] = L[new], f[new], True
        if bool(done.all()):
            break
        slope = al * df / f.clamp(min=tiny)
        t_new = t - h / slope.clamp(min=tiny)
        bad = ~torch.isfinite(t_new) | (t_new <= lo) | (t_new >= hi) | ~(f > 0)
        t = torch.where(done, t, torch.where(bad, 0.5 * (lo + hi), t_new))
        keep = ~done
        if int(keep.sum()) <= 0.75 * keep.numel():  # copy the rows only when it pays
            todo, t, lo, hi, aim, k_todo = (
                todo[keep],
                t[keep],
                lo[keep],
                hi[keep],
                aim[keep],
                k_todo[keep],
            )
            d_todo, w_todo = d_todo[keep], w_todo[keep]
    else:
        t_all[todo], lo_all[todo] = t, lo
    al = t_all.exp()
    left = (~settled).nonzero().squeeze(-1)
    if left.numel():  # rows the iteration cap stopped: evaluate, and back off until f ≤ k
        al_l, k_l, d_l, w_l = al[left], kr[left], d[left], w[left]
        f, _, L = f_df(al_l, d_l, w_l)
        # f is convex with f(0) = 0, so f(cα) ≤ c·f(α): scaling α by k/f never overspends.
        # A few rounds absorb rounding in f; the bracket's lower end is the last resort.
        for attempt in range(5):
            over = f > k_l
            if not bool(over.any()):
                break
            scaled = al_l * (k_l / f) * (1 - 1e-10)
            al_l = torch.where(over, scaled if attempt < 4 else lo_all[left].exp(), al_l)
            f, _, L = f_df(al_l, d_l, w_l)
        al[left], f_all[left], L_all[left] = al_l, f, L
    alpha[rows] = al
    kl[rows] = f_all.clamp(min=0.0)
    # log x = log b + log(x/b) at the final α, x on b's scale as given (b = 0 gives d = 0:
    # x = 0 there too), rounded once.
    log_x[rows] = (log_b[rows].double() + L_all).to(log_b.dtype)
    whole = rows[al == 1]  # α = 1 (the rows above that fit at 1): log a as given
    log_x[whole] = log_a[whole]
    return alpha.to(log_a.dtype), kl.to(log_a.dtype), log_x
