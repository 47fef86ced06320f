"""Training curves of run folders side by side: the share of empty teacher turns, the
return and the KL spent per episode against agent steps, from each run's metrics.jsonl.

    python scripts/training_curves.py RUN [RUN ...] --label NAME [--label NAME ...] --out FILE.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PANELS = (
    ("episodes/empty_turn_frac", "empty teacher turns (share)"),
    ("reward/mean", "return per episode"),
    ("kl/episode_mean", "KL spent per episode (nats)"),
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (each with metrics.jsonl)")
    p.add_argument("--label", action="append", default=[], help="one per run, in order")
    p.add_argument("--out", required=True, type=Path, help="PNG to write")
    args = p.parse_args(argv)
    if args.label and len(args.label) != len(args.runs):
        p.error(f"{len(args.label)} labels for {len(args.runs)} runs")
    if args.out.suffix.lower() != ".png":
        p.error(f"--out {args.out}: expected a .png file")
    from klbudget.evaluation.records import RecordError, load_rows

    curves = []
    for run in args.runs:
        try:
            rows = load_rows(run / "metrics.jsonl")
        except (OSError, RecordError) as err:
            print(f"training_curves: error: {run}: {err}", file=sys.stderr)
            return 2
        if not rows:
            print(f"training_curves: error: {run}/metrics.jsonl has no rows", file=sys.stderr)
            return 2
        curves.append(rows)

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    labels = args.label or [r.name for r in args.runs]
    for rows, label in zip(curves, labels, strict=True):
        steps = [r["time/agent_steps"] for r in rows]
        for ax, (key, _) in zip(axes, PANELS, strict=True):
            ax.plot(steps, [r.get(key, float("nan")) for r in rows], marker="o", ms=3, label=label)
    for ax, (_, title) in zip(axes, PANELS, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("agent steps")
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(labels),
               frameon=False, fontsize=9)  # fmt: skip
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
