"""The default demo: world → corpus → imitator → budgeted agents → evaluation → report.

1. the default world (a trusted teacher τ with exact probabilities and a student) writes a
   seeded demonstration corpus;
2. the imitator β (a small causal transformer with its own BPE) is trained on it, or
   reused from the cache;
3. PPO agents with per-episode KL budgets (10 and 20 nats, `demo` preset) are trained
   against β;
4. each is evaluated (agent and β acting alone, at L and 2L) and a report compares them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from klbudget.agent.trainer import Trainer
from klbudget.config import ConfigError, apply_overrides, preset, replace_fields
from klbudget.pipelines.evaluate import evaluate_run
from klbudget.report.html import build_report
from klbudget.runs.folder import RunFolderError
from klbudget.world import ImitatorConfig, WorldConfig, build_world, read_report, train_imitator


def run_demo(
    out: Path,
    *,
    budgets: tuple[float, ...] = (10.0, 20.0),
    cache: Path = Path("models"),
    world_set: list[str] | None = None,
    imitator_set: list[str] | None = None,
    train_set: list[str] | None = None,
    eval_episodes: int = 32,
    progress: bool = True,
) -> list[dict]:
    """Run the whole demo into `out` (which must be new); returns the summary rows."""
    if out.exists() and any(out.iterdir()):
        raise RunFolderError(f"{out} already holds files; choose a new --out")
    if not budgets:
        raise ConfigError("the demo needs at least one budget")
    t0 = time.perf_counter()
    world_cfg = replace_fields(WorldConfig(), world_set or [], "world")
    imit_cfg = replace_fields(ImitatorConfig(), imitator_set or [], "imitator")
    base_cfg = apply_overrides(preset("demo"), train_set or [])
    say = print if progress else (lambda *a, **k: None)

    say(f"[1/4] world {world_cfg.hash} -> {out / 'world'}", flush=True)
    world_dir = build_world(world_cfg, out / "world")
    say(f"[2/4] imitator (cached under {cache})", flush=True)
    model = train_imitator(world_dir, imit_cfg, cache, progress=progress)
    held = read_report(model).get("heldout", {})
    runs = []
    for i, budget in enumerate(budgets):
        run = out / f"agent_B{budget:g}"
        cfg = apply_overrides(
            base_cfg, [f"model.path={model}", f"budget.total={budget}"]
        ).validate()
        say(f"[3/4] agent {i + 1}/{len(budgets)}: budget {budget:g} nats -> {run}", flush=True)
        Trainer(cfg, run, progress=progress).learn()
        evaluate_run(run, episodes=eval_episodes, world=world_dir, progress=progress)
        runs.append(run)
    report = build_report(runs, out / "report.html")
    say("[4/4] report", flush=True)
    rows = _summary(runs)
    minutes = (time.perf_counter() - t0) / 60
    say(f"\nimitator {model.name}: held-out teacher log-loss "
        f"{held.get('imitator_teacher_logloss', float('nan')):.3f} nats/token, "
        f"τ entropy {held.get('tau_teacher_entropy', float('nan')):.3f}")  # fmt: skip
    say(_table(rows))
    say(f"\nreport: {report}\nruns:   {', '.join(map(str, runs))}\nwall time: {minutes:.1f} min")
    return rows


def _summary(runs: list[Path]) -> list[dict]:
    rows = []
    for run in runs:
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        for _, ev in sorted(metrics["eval"].items()):
            rows.append({
                "run": run.name,
                "policy": ev["policy"],
                "L": ev["length"],
                "return": _num(ev, "reward", "mean"),
                "empty": _num(ev, "empty_turn_frac", "mean"),
                "kl_base": _num(ev, "kl_to_base", "exact", "mean"),
                "kl_base_max": _num(ev, "kl_to_base", "exact_max"),
                "outside": _num(ev, "tau_support", "violation_share"),
                "kl_tau": _num(ev, "tau_support", "kl_in_support_mean"),
            })  # fmt: skip
    return rows


def _num(obj: dict, *keys: str) -> float:
    """A nested metric, NaN where it is absent (e.g. no completed teacher turn)."""
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return float(obj) if isinstance(obj, (int, float)) else float("nan")


def _table(rows: list[dict]) -> str:
    head = (
        f"{'run':<12} {'policy':<6} {'L':>4} {'return':>7} {'empty':>6} {'KL(π‖β)':>8} {'max':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['run']:<12} {r['policy']:<6} {r['L']:>4} {r['return']:>7.2f} {r['empty']:>6.3f} "
            f"{r['kl_base']:>8.3f} {r['kl_base_max']:>7.3f} {r['outside']:>8.3f} "
            f"{r['kl_tau']:>9.3f}"
        )
    lines.append(
        "∉supp τ: share of teacher turns τ could never write; KL(π‖τ)*: exact, summed over "
        "the tokens of in-support turns, mean per episode"
    )
    return "\n".join(lines)
