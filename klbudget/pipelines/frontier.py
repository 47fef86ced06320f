"""`klbudget frontier`: the budget beside what users run instead, on one return-KL frontier.

On the default world (β the world's imitator, τ the trusted teacher with exact
probabilities), three ways to hold a policy near β and one that needs no training:

  budget      the budget agent (fixed-KL mixture, hard per-episode budget B), a grid of B
  fixed       a KL-penalty agent (π ∝ β·e^z, reward r − λ·k1 per agent token), a grid of λ
  adaptive    the same with λ adapted toward a per-episode KL target (Ziegler et al. 2019)
  best-of-n   n episodes of β, the highest-return one kept, a grid of n

Every trained policy plays the same fresh evaluation episodes (one seed for all), and
every figure comes from the saved records: return, exact KL(π‖β) per episode (mean and
max), empty-turn fraction, the share of teacher turns outside τ's support, the exact KL to
τ over in-support turns, and the calibration loss on held-out demonstrations. For best-of-n
the KL is the exact KL of best-of-n under the empirical return distribution of the β pool
(`klbudget.core.best_of_n`), and its largest per-episode log-ratio is at most log n.

The per-episode view: for each penalty agent with mean KL K, B* is the budget at which the
budget agents' mean KL equals K (interpolated over the budget grid; K itself when the grid's
agents never spend K on average, the smallest budget whose agent could), and `over_budget`
is the share of the penalty agent's episodes whose exact KL exceeds B*: what a budget
guarantees and a penalty does not.

Writes `DIR/frontier.csv` (one row per policy and setting), `DIR/frontier.html` (return
and empty-turn fraction against mean KL, one curve per method, and the table), the run
folders under `DIR/runs/` and the best-of-n records under `DIR/best_of_n/`.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from klbudget.agent.best_of_n_episodes import keep_best, play_pool
from klbudget.agent.trainer import Trainer
from klbudget.compose import build_env, chat_format
from klbudget.config import (
    Config,
    ConfigError,
    apply_overrides,
    preset,
    replace_fields,
    with_values,
)
from klbudget.evaluation import metrics as m
from klbudget.evaluation.records import load_episodes, load_rows
from klbudget.evaluation.summary import set_metrics
from klbudget.pipelines.evaluate import evaluate_run, tau_oracle
from klbudget.runs.folder import RunFolderError, atomic_write_text, jsonl_line
from klbudget.world import ImitatorConfig, WorldConfig, build_world, train_imitator

METHODS = ("budget", "fixed", "adaptive", "best_of_n")
COLUMNS = (
    "method", "setting", "value", "policy", "return", "kl_mean", "kl_max", "empty_frac",
    "tau_outside", "kl_tau_in", "calibration", "over_budget", "budget_equiv", "coef_final",
)  # fmt: skip


@dataclass(frozen=True)
class Grid:
    """The settings of one frontier run."""

    budgets: tuple[float, ...] = (2.0, 5.0, 10.0, 20.0)  # nats per episode
    coefs: tuple[float, ...] = (0.3, 0.1, 0.03, 0.01)  # fixed λ
    targets: tuple[float, ...] = (2.0, 5.0, 10.0, 20.0)  # adaptive: per-episode KL target
    ns: tuple[int, ...] = (2, 4, 8, 16)  # best-of-n
    episodes: int = 32  # evaluation episodes per policy (and kept best-of-n episodes)
    preset: str = "frontier"  # training preset of every agent


PRESETS = {
    "laptop": Grid(),
    "long": Grid(
        budgets=(1.0, 2.0, 5.0, 10.0, 20.0, 40.0),
        coefs=(1.0, 0.3, 0.1, 0.03, 0.01, 0.003),
        targets=(1.0, 2.0, 5.0, 10.0, 20.0, 40.0),
        ns=(2, 4, 8, 16, 32, 64),
        episodes=64,
        preset="frontier_long",
    ),
}


def _settings(grid: Grid) -> list[tuple[str, float, dict[str, Any]]]:
    """(method, value, config fields) of every agent to train."""
    out = [("budget", b, {"agent.kind": "budget", "budget.total": b}) for b in grid.budgets]
    out += [
        ("fixed", c, {"agent.kind": "penalty", "penalty.coef": c, "penalty.target": 0.0})
        for c in grid.coefs
    ]
    out += [("adaptive", t, {"agent.kind": "penalty", "penalty.target": t}) for t in grid.targets]
    return out


def _row(method: str, value: float, policy: str, ev: dict, calibration: float | None) -> dict:
    def num(*keys: str) -> float:
        obj: object = ev
        for key in keys:
            obj = obj.get(key) if isinstance(obj, dict) else None
        return float(obj) if isinstance(obj, (int, float)) else math.nan

    return {
        "method": method,
        "setting": {"budget": "B", "fixed": "lambda", "adaptive": "target", "best_of_n": "n"}.get(
            method, ""
        ),  # fmt: skip
        "value": value,
        "policy": policy,
        "return": num("reward", "mean"),
        "kl_mean": num("kl_to_base", "exact", "mean"),
        "kl_max": num("kl_to_base", "exact_max"),
        "empty_frac": num("empty_turn_frac", "mean"),
        "tau_outside": num("tau_support", "violation_share"),
        "kl_tau_in": num("tau_support", "kl_in_support_mean"),
        "calibration": math.nan if calibration is None else float(calibration),
        "over_budget": math.nan,
        "budget_equiv": math.nan,
        "coef_final": math.nan,
    }


def budget_at_kl(rows: list[dict], kl: float) -> float:
    """B*: the budget at which the budget agents' mean KL equals ``kl``.

    Linear interpolation over the budget grid (mean KL made non-decreasing in B first) when
    the grid's mean KLs reach ``kl``; otherwise ``kl`` itself, the smallest budget whose agent
    could have that mean (every episode of a budget agent spends at most its budget).
    """
    pts = sorted((r["value"], r["kl_mean"]) for r in rows if r["method"] == "budget")
    pts = [p for p in pts if math.isfinite(p[1])]
    if not pts:
        return kl
    budgets = np.array([p[0] for p in pts])
    means = np.maximum.accumulate(np.array([p[1] for p in pts]))
    if not means[0] <= kl <= means[-1]:
        return kl
    i = int(np.searchsorted(means, kl, side="left"))
    if i == 0 or means[i] == means[i - 1]:
        return float(budgets[i])
    w = (kl - means[i - 1]) / (means[i] - means[i - 1])
    return float(budgets[i - 1] + w * (budgets[i] - budgets[i - 1]))


def run_frontier(
    out: Path,
    *,
    grid: Grid = PRESETS["laptop"],
    cache: Path = Path("models"),
    train_set: list[str] | None = None,
    world_set: list[str] | None = None,
    imitator_set: list[str] | None = None,
    seed: int = 12345,
    progress: bool = True,
) -> list[dict]:
    """Train, evaluate and tabulate every setting of ``grid`` into ``out`` (must be new)."""
    if out.exists() and any(out.iterdir()):
        raise RunFolderError(f"{out} already holds files; choose a new --out")
    if not (grid.budgets and grid.coefs and grid.targets and grid.ns):
        raise ConfigError("every method needs at least one setting")
    if any(not (math.isfinite(v) and v >= 0) for v in (*grid.budgets, *grid.coefs)):
        raise ConfigError("budgets and penalty coefficients must be finite and >= 0")
    if any(not (math.isfinite(v) and v > 0) for v in grid.targets):
        raise ConfigError("adaptive KL targets must be finite and > 0")
    if any(n < 1 for n in grid.ns) or grid.episodes < 1:
        raise ConfigError("best-of-n needs n >= 1 and at least one episode")
    base_cfg = apply_overrides(preset(grid.preset), train_set or [])
    world_cfg = replace_fields(WorldConfig(), world_set or [], "world")
    imit_cfg = replace_fields(ImitatorConfig(), imitator_set or [], "imitator")
    say = print if progress else (lambda *a, **k: None)
    t0 = time.perf_counter()
    world_dir = build_world(world_cfg, out / "world")
    say(f"[1/4] world -> {world_dir}; imitator (cached under {cache})", flush=True)
    model = train_imitator(world_dir, imit_cfg, cache, progress=progress)
    base_cfg = with_values(base_cfg, {"model.path": str(model)}).validate()
    length = base_cfg.env.length
    rows: list[dict] = []
    plan = _settings(grid)
    for i, (method, value, sets) in enumerate(plan):
        name = f"{method}_{value:g}"
        run = out / "runs" / name
        cfg = with_values(base_cfg, sets).validate()
        say(f"[2/4] {i + 1}/{len(plan)} {name} -> {run}", flush=True)
        trainer = Trainer(cfg, run, progress=progress)
        trainer.learn()
        # β and τ play once, with the first run; every agent plays the same episodes.
        policies = ("agent", "base", "tau") if i == 0 else ("agent",)
        metrics = evaluate_run(run, episodes=grid.episodes, lengths=[length], seed=seed,
                               world=world_dir, policies=policies, progress=progress)  # fmt: skip
        cal = metrics["calibration"]
        if i == 0:
            for policy in ("base", "tau"):
                ev = metrics["eval"][f"{policy}_L{length}"]
                rows.append(_row(policy, 0.0, policy, ev, cal.get(policy, {}).get("loss")))
        row = _row(method, value, "agent", metrics["eval"][f"agent_L{length}"],
                   cal.get("agent", {}).get("loss"))  # fmt: skip
        row["coef_final"] = _final_coef(run)
        row["_kls"] = _episode_kls(run / "eval" / f"episodes_agent_L{length}.jsonl")
        rows.append(row)
    say(f"[3/4] best-of-n, n in {list(grid.ns)}", flush=True)
    rows += _best_of_n(base_cfg, grid, world_dir, out / "best_of_n", seed)
    for row in rows:  # the per-episode view, against the budget agents at equal mean KL
        kls = row.pop("_kls", None)
        if row["method"] in ("fixed", "adaptive") and kls:
            b = budget_at_kl(rows, row["kl_mean"])
            row["budget_equiv"] = b
            row["over_budget"] = float(np.mean(np.asarray(kls) > b))
        elif row["method"] == "budget" and kls:
            row["over_budget"] = float(np.mean(np.asarray(kls) > row["value"] * (1 + 1e-6)))
    _write_csv(out / "frontier.csv", rows)
    from klbudget.report.frontier_page import frontier_report

    frontier_report(rows, out / "frontier.html", minutes=(time.perf_counter() - t0) / 60)
    say(f"[4/4] {out / 'frontier.csv'}, {out / 'frontier.html'}", flush=True)
    say(table(rows))
    say(f"\n{(time.perf_counter() - t0) / 60:.1f} min")
    return rows


def _episode_kls(path: Path) -> list[float]:
    return [m.episode_kl(e)[0] for e in load_episodes(path)]


def _final_coef(run: Path) -> float:
    """The penalty coefficient of the last update (NaN for a budget agent)."""
    rows = load_rows(run / "metrics.jsonl")
    coef = rows[-1].get("penalty/coef") if rows else None
    return float(coef) if isinstance(coef, (int, float)) else math.nan


def _best_of_n(cfg: Config, grid: Grid, world: Path, out: Path, seed: int) -> list[dict]:
    """One pool of β episodes, reused by every n (the first n·episodes of it)."""
    env = build_env(cfg)
    oracle = tau_oracle(world, env.base, cfg)
    out.mkdir(parents=True, exist_ok=True)
    pool = play_pool(env, max(grid.ns) * grid.episodes, seed=seed, reference=oracle)
    for rec in pool:
        oracle.annotate(rec)
    rows = []
    for n in sorted(grid.ns):
        bon = keep_best(pool, n, grid.episodes, seed=seed)
        lines = "".join(jsonl_line(r) for r in bon.records)
        path = out / f"episodes_best_of_{n}_L{cfg.env.length}.jsonl"
        atomic_write_text(path, lines)
        ev = set_metrics(load_episodes(path), chat_format(cfg))
        row = _row("best_of_n", float(n), f"best_of_{n}", ev, None)
        row["kl_mean"] = bon.kl  # the selection's KL lives at the episode level
        row["kl_max"] = math.log(n)  # π_n/β ≤ n on every episode
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v)
                        for k, v in r.items() if k in COLUMNS})  # fmt: skip
    tmp.replace(path)


def table(rows: list[dict]) -> str:
    """The frontier as a text table."""
    head = (f"{'method':<10} {'value':>6} {'return':>7} {'KL mean':>8} {'KL max':>7} "
            f"{'empty':>6} {'∉supp τ':>8} {'KL τ in':>8} {'calib':>6} {'>B*':>5}")  # fmt: skip
    lines = [head]
    for r in rows:

        def f(key: str, spec: str, r: dict = r) -> str:
            v = r[key]
            return "—" if not math.isfinite(v) else format(v, spec)

        lines.append(
            f"{r['method']:<10} {r['value']:>6g} {f('return', '.2f'):>7} {f('kl_mean', '.2f'):>8} "
            f"{f('kl_max', '.2f'):>7} {f('empty_frac', '.3f'):>6} {f('tau_outside', '.3f'):>8} "
            f"{f('kl_tau_in', '.2f'):>8} {f('calibration', '.3f'):>6} "
            f"{f('over_budget', '.2f'):>5}"
        )
    return "\n".join(lines)


__all__ = ["Grid", "PRESETS", "budget_at_kl", "run_frontier", "table"]
