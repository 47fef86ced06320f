"""Memory over a long training run: does RSS grow with updates?

    python benchmarks/soak.py --out runs/soak -- --config klbudget/presets/demo.toml \\
        --set model.path=models/imitator-... --set train.total_agent_steps=2000000
    python benchmarks/soak.py --out runs/smol --minutes 60 -- \\
        --config klbudget/presets/smollm2.toml

Runs `klbudget train ... --out OUT` as a child process, samples its resident memory (VmRSS)
every `--every` seconds and the run's progress from `OUT/metrics.jsonl`, stops the run
after `--minutes` (Ctrl-C semantics: it saves a checkpoint) unless it finishes first, and
prints the samples, the least-squares slope of RSS after the warm-up (the first
`--warmup` minutes: MB per hour and MB per 100 updates), and the peak RSS seen while each
update ran (RSS swings within an update, so with few updates the peaks say more than the
slope). The samples are also written to `OUT/soak.csv`.
"""

from __future__ import annotations

import argparse
import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), MB; NaN once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def progress(out: Path) -> tuple[int, int]:
    """(updates, agent steps) from the last complete line of metrics.jsonl."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0, 0
    lines = [x for x in path.read_text().splitlines() if x.endswith("}")]
    if not lines:
        return 0, 0
    row = json.loads(lines[-1])
    return int(row["time/update"]), int(row["time/agent_steps"])


def slope(x: list[float], y: list[float]) -> float:
    """Least-squares slope of y on x (NaN with fewer than 2 points)."""
    if len(x) < 2 or max(x) == min(x):
        return float("nan")
    return float(np.polyfit(np.asarray(x), np.asarray(y), 1)[0])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="run folder for `klbudget train --out`")
    p.add_argument("--minutes", type=float, default=30.0, help="stop the run after this long")
    p.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    p.add_argument("--warmup", type=float, default=3.0, help="minutes left out of the slope")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then `klbudget train` args")
    args = p.parse_args()
    extra = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    out = Path(args.out)
    cmd = [sys.executable, "-m", "klbudget.cli", "train", "--out", str(out), "--no-progress",
           *extra]  # fmt: skip
    child = subprocess.Popen(cmd)
    t0 = time.monotonic()
    samples: list[tuple[float, float, int, int]] = []  # minutes, MB, updates, agent steps
    stopped = False
    while child.poll() is None:
        time.sleep(min(args.every, 5.0) if not samples else args.every)
        minutes = (time.monotonic() - t0) / 60
        mb = rss_mb(child.pid)
        if mb == mb:  # not NaN: still running
            samples.append((minutes, mb, *progress(out)))
            u, s = samples[-1][2:]
            print(f"{minutes:7.1f} min  RSS {mb:8.1f} MB  update {u:5d}  agent steps {s:9d}",
                  flush=True)  # fmt: skip
        if minutes >= args.minutes and not stopped:
            child.send_signal(signal.SIGINT)  # saves a checkpoint and exits
            stopped = True
    wall = (time.monotonic() - t0) / 60
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "soak.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["minutes", "rss_mb", "updates", "agent_steps"])
        w.writerows(samples)
    late = [s for s in samples if s[0] >= args.warmup]
    per_hour = slope([s[0] / 60 for s in late], [s[1] for s in late])
    per_update = slope([float(s[2]) for s in late], [s[1] for s in late])
    updates, steps = progress(out)
    rate = steps / max(wall * 60, 1e-9)
    print(f"\n{wall:.1f} min, {updates} updates, {steps} agent steps ({rate:.0f} agent "
          f"steps/s); child exit {child.returncode}")  # fmt: skip
    if late:
        print(f"RSS after {args.warmup:g} min: {late[0][1]:.0f} -> {late[-1][1]:.0f} MB; slope "
              f"{per_hour:+.1f} MB/hour, {100 * per_update:+.2f} MB per 100 updates "
              f"({len(late)} samples)")  # fmt: skip
    peaks: dict[int, float] = {}
    for _, mb, u, _ in samples:  # RSS swings within an update (rollout, then PPO update)
        peaks[u] = max(peaks.get(u, 0.0), mb)
    if peaks:
        listed = ", ".join(f"{u}: {mb:.0f}" for u, mb in sorted(peaks.items()))
        print(f"peak RSS while each update ran (MB, by updates done): {listed}")
    return 0 if child.returncode in (0, 130) else child.returncode


if __name__ == "__main__":
    sys.exit(main())
