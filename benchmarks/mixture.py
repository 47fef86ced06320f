"""The fixed-KL mixture's solve on the inputs a rollout gives it.

    python benchmarks/mixture.py --model models/imitator-089968e3f369 --batch 64

Rolls out two episodes of a budget agent (`benchmarks/rollout.py`'s warm-up and one timed
episode; its head has random weights, so that the solve has work), keeps the solver's inputs
(log a, log b, k) of every agent step, then times `fixed_kl_mixture` on them, call after
call, and prints the median time per call over the repetitions, how the rows split (α = 1:
the proposal within the target; 0 < α < 1: solved; α = 0), and the float64 passes per
call (counted as the calls of `torch.log1p` in float64: one per Newton evaluation; a solve
whose rows exceed `mixture.SOLVE_BYTES` is split, and each part counts its own). The same
inputs are timed warm, back to back, so a call here is faster than inside a rollout, where
the model's forward runs between calls.

`--against FILE` times another version of the solver on the same inputs, pass by pass in
turn with this one (e.g. `git show 2aeba38:klbudget/core/mixture.py > /tmp/old.py`), and
prints both medians, their ratio and the largest difference between the two results.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import torch

import klbudget.agent.policy as policy
import klbudget.core.mixture as mixture

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rollout import bench, load_solver, model_args, parse_model_args  # noqa: E402


def capture(model: Path, batch: int, length: int, head: str) -> list[tuple]:
    """(log a, log b, k) of each agent step of the warm-up episode and one timed episode."""
    calls: list[tuple] = []
    real = policy.fixed_kl_mixture

    def keep(log_a, log_b, k, **kwargs):
        calls.append((log_a.detach().clone(), log_b.detach().clone(), k.detach().clone()))
        return real(log_a, log_b, k, **kwargs)

    policy.fixed_kl_mixture = keep
    try:
        bench(model, batch, length, 1, 10.0, head)
    finally:
        policy.fixed_kl_mixture = real
    return calls


def passes(calls: list[tuple]) -> float:
    """float64 log1p calls per solve: the Newton evaluations over (rows, V)."""
    real, count = torch.log1p, [0]

    def counted(x, *args, **kwargs):
        count[0] += x.dtype == torch.float64
        return real(x, *args, **kwargs)

    torch.log1p = counted
    try:
        for log_a, log_b, k in calls:
            mixture.fixed_kl_mixture(log_a, log_b, k)
    finally:
        torch.log1p = real
    return count[0] / len(calls)


def timed(solvers: dict, calls: list[tuple], reps: int) -> dict[str, list[float]]:
    """Seconds per solve of each solver, one pass over the inputs each in turn."""
    times: dict[str, list[float]] = {name: [] for name in solvers}
    for rep in range(reps + 1):  # the first is a warm-up
        for name, solve in solvers.items():
            t0 = time.perf_counter()
            for log_a, log_b, k in calls:
                solve(log_a, log_b, k)
            if rep:
                times[name].append((time.perf_counter() - t0) / len(calls))
    return times


def gap(x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest |x − y|, equal entries (−inf and −inf, NaN and NaN included) counting 0 and
    entries that differ in kind (a NaN or an infinity against anything else) inf."""
    same = (x == y) | (x.isnan() & y.isnan())
    diff = torch.where(same, torch.zeros_like(x), (x - y).abs())
    diff = diff.nan_to_num(nan=math.inf, posinf=math.inf)
    return float(diff.max()) if diff.numel() else 0.0


def compare(other, calls: list[tuple]) -> str:
    """Largest |Δα| and |Δ log x| between this solver and `other` (inf where one is finite
    and the other not), and whether both keep KL ≤ k on every row."""
    d_alpha, d_logx, safe = 0.0, 0.0, [True, True]
    for log_a, log_b, k in calls:
        outs = mixture.fixed_kl_mixture(log_a, log_b, k), other(log_a, log_b, k)
        for j, out in enumerate(outs):
            safe[j] &= bool((out.kl <= k).all())
        d_alpha = max(d_alpha, gap(outs[0].alpha, outs[1].alpha))
        d_logx = max(d_logx, gap(outs[0].log_x, outs[1].log_x))
    return (
        f"largest difference: alpha {d_alpha:.3g}, log x {d_logx:.3g}; "
        f"KL <= k on every row: this {safe[0]}, against {safe[1]}"
    )


def main() -> None:
    p = model_args(__doc__, 256)
    p.set_defaults(batch=[64])
    p.add_argument("--reps", type=int, default=7, help="timed passes over the inputs")
    p.add_argument("--head", choices=("full", "embed"), default="full", help="actor head")
    p.add_argument("--against", metavar="FILE", help="another version of core/mixture.py")
    args = parse_model_args(p)
    if args.model is None:
        p.error("--model is required here")
    other = None
    if args.against is not None and (other := load_solver(args.against)) is None:
        p.error(f"--against {args.against}: not a Python file defining fixed_kl_mixture")
    for b in args.batch:
        calls = capture(Path(args.model), b, args.length, args.head)
        if not calls:
            print(f"batch {b}: no agent step in the episode")
            continue
        alpha = torch.cat([mixture.fixed_kl_mixture(*c).alpha.reshape(-1) for c in calls])
        solvers = {"this": mixture.fixed_kl_mixture}
        if other is not None:
            solvers["against"] = other
        all_times = timed(solvers, calls, args.reps)
        times = all_times["this"]
        rows = alpha.numel() / len(calls)
        inner = ((alpha > 0) & (alpha < 1)).float().mean()
        print(
            f"{args.model} batch {b}: {len(calls)} solves of {rows:.1f} rows x "
            f"{calls[0][0].shape[-1]} on average; {1e6 * statistics.median(times):.0f} us per "
            f"solve (median of {args.reps}); rows at alpha = 1 "
            f"{100 * (alpha == 1).float().mean():.1f}%, solved {100 * inner:.1f}%, "
            f"at 0 {100 * (alpha == 0).float().mean():.1f}%; "
            f"{passes(calls):.2f} float64 passes per solve",
            flush=True,
        )
        if other is not None:
            this, them = (statistics.median(all_times[n]) for n in ("this", "against"))
            pairs = [b / a for a, b in zip(all_times["this"], all_times["against"], strict=True)]
            print(
                f"    against {args.against}: {1e6 * them:.0f} us per solve; against / this "
                f"{them / this:.2f}x (pass by pass {min(pairs):.2f}-{max(pairs):.2f}); "
                + compare(other, calls),
                flush=True,
            )


if __name__ == "__main__":
    main()
