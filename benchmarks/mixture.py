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
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

import klbudget.agent.policy as policy
import klbudget.core.mixture as mixture

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rollout import bench, model_args, parse_model_args  # noqa: E402


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


def main() -> None:
    p = model_args(__doc__, 256)
    p.set_defaults(batch=[64])
    p.add_argument("--reps", type=int, default=7, help="timed passes over the inputs")
    p.add_argument("--head", choices=("full", "embed"), default="full", help="actor head")
    args = parse_model_args(p)
    if args.model is None:
        p.error("--model is required here")
    for b in args.batch:
        calls = capture(Path(args.model), b, args.length, args.head)
        if not calls:
            print(f"batch {b}: no agent step in the episode")
            continue
        alpha = torch.cat([mixture.fixed_kl_mixture(*c).alpha.reshape(-1) for c in calls])
        times = []
        for rep in range(args.reps + 1):  # the first is a warm-up
            t0 = time.perf_counter()
            for log_a, log_b, k in calls:
                mixture.fixed_kl_mixture(log_a, log_b, k)
            if rep:
                times.append((time.perf_counter() - t0) / len(calls))
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


if __name__ == "__main__":
    main()
