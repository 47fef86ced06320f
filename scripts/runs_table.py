"""One CSV row per evaluated run and length, from run folders alone.

    python scripts/runs_table.py RUN [RUN ...] --setting NAME [--setting NAME ...] --out FILE.csv

Each run folder must hold `config.toml`, `metrics.jsonl` and `eval/metrics.json` (`klbudget
eval`). A row: the setting's name (one per run, in order), the model folder's name, base
kind, budget, seed, agent steps trained, evaluation length, then the agent's return,
replies, empty-turn fraction, exact KL to its base (mean, max), share of teacher turns
outside τ's support and help rate (empty where the run has no world or no help), and the
same policy's base acting alone (return, empty-turn fraction) at that length.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from klbudget.config import load
from klbudget.evaluation.records import load_rows
from klbudget.pipelines.demo import metric

FIELDS = ("setting", "model", "base", "budget", "seed", "agent_steps", "length", "return",
          "replies", "empty", "kl_mean", "kl_max", "outside_tau", "help", "base_return",
          "base_empty")  # fmt: skip


def rows(run: Path, setting: str) -> list[dict]:
    cfg = load(run / "config.toml")
    steps = int(load_rows(run / "metrics.jsonl")[-1]["time/agent_steps"])
    ev = json.loads((run / "eval" / "metrics.json").read_text())["eval"]
    out = []
    for key in sorted(k for k in ev if k.startswith("agent_L")):
        agent, base = ev[key], ev.get(key.replace("agent", "base"), {})
        out.append({
            "setting": setting, "model": Path(cfg.model.path).name, "base": cfg.base.kind,
            "budget": cfg.budget.total, "seed": cfg.train.seed, "agent_steps": steps,
            "length": agent["length"], "return": metric(agent, "reward", "mean"),
            "replies": metric(agent, "replies", "mean"),
            "empty": metric(agent, "empty_turn_frac", "mean"),
            "kl_mean": metric(agent, "kl_to_base", "exact", "mean"),
            "kl_max": metric(agent, "kl_to_base", "exact_max"),
            "outside_tau": metric(agent, "tau_support", "violation_share"),
            "help": metric(agent, "help_rate"),
            "base_return": metric(base, "reward", "mean"),
            "base_empty": metric(base, "empty_turn_frac", "mean"),
        })  # fmt: skip
    return out


def _cell(v):
    if isinstance(v, float):
        return "" if v != v else f"{v:.4f}"  # NaN: not measured for this run
    return v


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--setting", action="append", required=True, help="one name per run")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()
    if len(args.setting) != len(args.runs):
        p.error("give one --setting per run")
    for run in args.runs:
        if not (run / "eval" / "metrics.json").is_file():
            p.error(f"{run}: not an evaluated run folder (no eval/metrics.json)")
    table = [r for run, s in zip(args.runs, args.setting, strict=True) for r in rows(run, s)]
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        for r in table:
            writer.writerow({k: _cell(v) for k, v in r.items()})
    print(f"{len(table)} rows -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
