"""A sweep's summary as a Markdown table: per cell, at its training length, the agent's and
its base's mean over seeds with the 95% bootstrap interval (`klbudget sweep` wrote them).

    python scripts/sweep_table.py SWEEP_DIR [--figures empty,return,replies,swap_after_empty]

Reads `SWEEP_DIR/summary.csv`; a cell is evaluated at L/2 and L, and the table shows L (the
length it trained at). Also prints, per cell, how many seeds went silent (empty-turn
fraction of one half or more at L), from `SWEEP_DIR/sweep.csv`.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from klbudget.pipelines.sweep import SUMMARY

META = {"policy", "L", "seeds"}


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _cell(v: str, lo: str, hi: str) -> str:
    m, a, b = float(v), float(lo), float(hi)
    if math.isnan(m):
        return "—"
    return f"{m:.3f} [{a:.3f}, {b:.3f}]" if a != b else f"{m:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", type=Path)
    p.add_argument("--figures", default="empty,return,replies,swap_after_empty")
    args = p.parse_args(argv)
    path = args.sweep / "summary.csv"
    if not path.is_file():
        print(f"sweep_table: {path} does not exist (run klbudget sweep first)", file=sys.stderr)
        return 2
    summary = _read(path)
    figures = [f for f in args.figures.split(",") if f and f in summary[0]]
    stats = SUMMARY  # the figures `klbudget sweep` summarizes

    def is_stat(k: str) -> bool:
        return any(k == f or k.startswith(f"{f}_") for f in stats)

    keys = [k for k in summary[0] if k not in META and not is_stat(k)]
    longest: dict[tuple, int] = {}
    for r in summary:
        cell = tuple(r[k] for k in keys)
        longest[cell] = max(longest.get(cell, 0), int(r["L"]))
    silent: dict[tuple, list[bool]] = {}
    runs = args.sweep / "sweep.csv"
    if runs.is_file():
        for r in _read(runs):
            cell = tuple(r[k] for k in keys)
            if r["policy"] == "agent" and int(r["L"]) == longest.get(cell):
                silent.setdefault(cell, []).append(float(r["empty"]) >= 0.5)
    print("| " + " | ".join([*keys, "policy", "L", "seeds", *figures, "silent seeds"]) + " |")
    print("|" + "---|" * (len(keys) + 4 + len(figures)))
    for r in summary:
        cell = tuple(r[k] for k in keys)
        if int(r["L"]) != longest[cell] or r["policy"] == "tau":
            continue
        got = silent.get(cell, []) if r["policy"] == "agent" else []
        quiet = f"{sum(got)} of {len(got)}" if got else ""
        vals = [_cell(r[f], r[f"{f}_lo"], r[f"{f}_hi"]) for f in figures]
        print("| " + " | ".join([*cell, r["policy"], r["L"], r["seeds"], *vals, quiet]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
