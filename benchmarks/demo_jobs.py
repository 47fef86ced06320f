"""The demo's agents one after another against several at once, on the same machine.

    python benchmarks/demo_jobs.py --model models/imitator-... --agents 3 --steps 30000

Trains `--agents` demo-preset agents (20 nats against the model, seeds 0, 1, ...) twice,
alternating the two ways `--reps` times:

  one after another   each `klbudget train` alone, with torch's default threads
  at once             all of them started together, each with cores / agents threads
                      (at least one), as `klbudget demo --jobs 0` does

and prints the wall time of each way (process start-up, model loading and training), the
agent steps per second over all agents, and the ratio (at once / one after another).
Medians over the repetitions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from klbudget.agent.distributed import threads_per_process
from klbudget.evaluation.records import load_rows

PRESET = Path(__file__).resolve().parents[1] / "klbudget" / "presets" / "demo.toml"


def _command(model: str, steps: int, seed: int, out: Path, threads: int) -> list[str]:
    sets = [
        f"model.path={model}", "budget.total=20", f"train.total_agent_steps={steps}",
        f"train.seed={seed}", f"model.threads={threads}",
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "klbudget", "train", "--config", str(PRESET), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _steps(run: Path) -> int:
    return int(load_rows(run / "metrics.jsonl")[-1]["time/agent_steps"])


def _one_way(model: str, agents: int, steps: int, together: bool, root: Path) -> tuple[float, int]:
    threads = threads_per_process(agents) if together else 0
    runs = [root / f"agent{i}" for i in range(agents)]
    cmds = [_command(model, steps, i, run, threads) for i, run in enumerate(runs)]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    t0 = time.perf_counter()
    if together:
        procs = [subprocess.Popen(c, **quiet) for c in cmds]
        errors = [p.communicate()[1] for p in procs]
        codes = [p.returncode for p in procs]
    else:
        done = [subprocess.run(c, **quiet, check=False) for c in cmds]
        errors, codes = [d.stderr for d in done], [d.returncode for d in done]
    wall = time.perf_counter() - t0
    for code, err in zip(codes, errors, strict=True):
        if code != 0:
            last = err.decode().strip().splitlines() or [f"exit code {code}"]
            sys.exit(f"a training run failed: {last[-1]}")
    return wall, sum(_steps(run) for run in runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="base model folder (the world's imitator)")
    p.add_argument("--agents", type=int, default=3, help="agents per way (the demo has 3)")
    p.add_argument("--steps", type=int, default=30000, help="agent steps per agent")
    p.add_argument("--reps", type=int, default=1, help="repetitions of both ways")
    args = p.parse_args()
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"no model folder at {args.model}")
    walls: dict[str, list[float]] = {"one after another": [], "at once": []}
    rates: dict[str, list[float]] = {k: [] for k in walls}
    for rep in range(args.reps):
        for name, together in (("one after another", False), ("at once", True)):
            with tempfile.TemporaryDirectory() as tmp:
                wall, steps = _one_way(args.model, args.agents, args.steps, together, Path(tmp))
            walls[name].append(wall)
            rates[name].append(steps / wall)
            print(f"rep {rep + 1}: {name:<17} {wall:7.1f} s  {steps / wall:7.0f} agent steps/s",
                  flush=True)  # fmt: skip
    print(f"\n{args.agents} agents of {args.steps} steps, {os.cpu_count()} cores (median):")
    for name in walls:
        wall, rate = statistics.median(walls[name]), statistics.median(rates[name])
        print(f"{name:<17} wall {wall:7.1f} s  {rate:7.0f} agent steps/s")
    ratio = statistics.median(rates["at once"]) / statistics.median(rates["one after another"])
    print(f"at once / one after another: {ratio:.2f}")


if __name__ == "__main__":
    main()
