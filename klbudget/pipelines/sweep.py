"""`klbudget sweep`: every cell of a grid of config values × seeds, trained and evaluated;
one tidy CSV and, per cell, the mean with a 95% bootstrap interval over seeds.

A grid file (TOML)::

    preset = "demo"            # every cell starts from this preset
    world = true               # build the default world and its imitator (model.path), and
                               # let τ judge the evaluations; false: model.path from [fixed]
    eval_episodes = 32
    [fixed]                    # the same in every cell, by dotted name
    "train.total_agent_steps" = 60000
    [grid]                     # the axes: every combination is a cell
    "env.length" = [64, 128, 256]
    "budget.total" = [10.0, 20.0]

An ablation changes one thing at a time instead: named variants, each a table of values,
form the axis "variant" (crossed with the [grid] axes, which may then be left out)::

    [variants.as_is]           # an empty table: the preset and [fixed] alone
    [variants.mean_reward]
    "reward.per" = "mean"
    [variants.no_quiet]
    "world.quiet_students" = 0.0

Dotted names are config fields (`section.key`), or `world.KEY` / `imitator.KEY` for the
default world and its imitator (each distinct pair is built once; imitators are cached).
A cell's run folder is `OUT/runs/<axis values>-seed<S>`. A cell whose evaluation exists is
skipped; one with a checkpoint resumes; so a killed sweep continues where it stopped. The
cells run in a pool of processes on this machine (`backend = "local"`), or as Ray tasks
(`"ray"`: a local Ray instance, or the cluster at `address`), one core each.

Outputs: `OUT/sweep.csv` (one row per run, policy and evaluation length), `OUT/summary.csv`
(per cell, policy and length: n seeds, mean and 95% interval of each figure) and
`OUT/summary.png`.
"""

from __future__ import annotations

import csv
import itertools
import math
import re
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from klbudget.config import ConfigError, preset, replace_typed, with_values
from klbudget.pipelines.demo import (
    AgentJob,
    check_eval_lengths,
    metric,
    run_parallel,
    train_and_evaluate,
)
from klbudget.world import ImitatorConfig, WorldConfig, build_world, train_imitator

FIGURES = (  # column, path in an evaluation set of metrics.json
    ("return", ("reward", "mean")),
    ("replies", ("replies", "mean")),
    ("empty", ("empty_turn_frac", "mean")),
    ("kl", ("kl_to_base", "exact", "mean")),
    ("kl_max", ("kl_to_base", "exact_max")),
    ("outside_tau", ("tau_support", "violation_share")),
    ("kl_tau_in_support", ("tau_support", "kl_in_support_mean")),
    ("help", ("help_rate",)),
    ("swap_after_empty", ("role_swap", "after_empty")),  # replies in τ's pool after silence
    ("swap_after_other", ("role_swap", "after_other")),
)
NTH_EMPTY = 3  # realized cost of the n-th empty turn, n = 1..3 (median over episodes)
SUMMARY = ("return", "replies", "empty", "kl", "outside_tau", "help", "swap_after_empty")
_GRID_KEYS = {"preset", "world", "eval_episodes", "fixed", "grid", "variants"}
VARIANT = "variant"


@dataclass(frozen=True)
class Grid:
    preset: str = "demo"
    world: bool = True
    eval_episodes: int = 32
    fixed: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    def values(self, cell: Cell) -> dict[str, Any]:
        """Every dotted value of a cell: [fixed], then its variant's, then its axes'."""
        own = {k: v for k, v in cell.values.items() if k != VARIANT}
        return {**self.fixed, **self.variants.get(cell.values.get(VARIANT, ""), {}), **own}


@dataclass(frozen=True)
class Cell:
    values: dict[str, Any]  # one value per axis
    seed: int

    @property
    def name(self) -> str:
        parts = [f"{k.split('.')[-1]}={_short(v)}" for k, v in self.values.items()]
        return re.sub(r"[^A-Za-z0-9_.=+-]", "_", "-".join([*parts, f"seed{self.seed}"]))


def _short(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file; ConfigError with one line when it is not one."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"grid file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{p} is not valid TOML: {err}") from err
    unknown = set(data) - _GRID_KEYS
    if unknown:
        raise ConfigError(f"{p}: unknown key {sorted(unknown)[0]!r}; known: {sorted(_GRID_KEYS)}")
    axes = data.get("grid", {})
    variants = data.get("variants", {})
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise ConfigError(f"{p}: each [variants.NAME] must be a table of values")
    if not isinstance(axes, dict) or not (axes or variants):
        raise ConfigError(f"{p}: [grid] must name at least one axis (or give [variants])")
    if VARIANT in axes:
        raise ConfigError(f"{p}: {VARIANT!r} is the axis of [variants], not a [grid] key")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{p}: grid axis {key!r} must be a non-empty list")
    grid = Grid(
        preset=str(data.get("preset", "demo")),
        world=bool(data.get("world", True)),
        eval_episodes=int(data.get("eval_episodes", 32)),
        fixed=dict(data.get("fixed", {})),
        axes={**({VARIANT: list(variants)} if variants else {}),
              **{k: list(v) for k, v in axes.items()}},
        variants={k: dict(v) for k, v in variants.items()},
    )  # fmt: skip
    if grid.eval_episodes < 1:
        raise ConfigError(f"{p}: eval_episodes must be >= 1")
    if any("train.seed" in d for d in (grid.axes, grid.fixed, *grid.variants.values())):
        raise ConfigError(f"{p}: seeds come from --seeds, not train.seed")
    return grid


def cells(grid: Grid, seeds: int) -> list[Cell]:
    """Every combination of the axes, for seeds 0..seeds−1."""
    keys = list(grid.axes)
    combos = itertools.product(*(grid.axes[k] for k in keys))
    return [Cell(dict(zip(keys, c, strict=True)), s) for c in combos for s in range(seeds)]


def _split(values: dict[str, Any]) -> tuple[dict, dict, dict]:
    """(config fields, world fields, imitator fields) of dotted names."""
    cfg, world, imit = {}, {}, {}
    for key, v in values.items():
        head, _, rest = key.partition(".")
        {"world": world, "imitator": imit}.get(head, cfg)[rest if head in ("world", "imitator")
                                                            else key] = v  # fmt: skip
    return cfg, world, imit


def plan_jobs(grid: Grid, todo: list[Cell], out: Path, cache: Path, *, progress: bool):
    """AgentJob of every cell (worlds and imitators built first, each once), checked before
    anything trains."""
    jobs, built = [], {}
    for cell in todo:
        cfg_v, world_v, imit_v = _split(grid.values(cell))
        world_dir = None
        if grid.world:
            wcfg = replace_typed(WorldConfig(), world_v, "world")
            icfg = replace_typed(ImitatorConfig(), imit_v, "imitator")
            key = (wcfg.hash, repr(icfg))
            if key not in built:
                world_dir = build_world(wcfg, out / "worlds" / wcfg.hash)
                built[key] = (world_dir, train_imitator(world_dir, icfg, cache, progress=progress),
                              icfg)  # fmt: skip
            world_dir, model, icfg = built[key]
            cfg_v = {"model.path": str(Path(model).resolve()), **cfg_v}
        elif world_v or imit_v:
            raise ConfigError("world.* and imitator.* values need world = true")
        cfg = with_values(preset(grid.preset), {**cfg_v, "train.seed": cell.seed}).validate()
        if grid.world and cfg.env.length > icfg.block_size:
            raise ConfigError(
                f"{cell.name}: episodes of {cfg.env.length} tokens exceed the "
                f"imitator's window {icfg.block_size} (set imitator.block_size)"
            )
        run = out / "runs" / cell.name
        resume = (run / "checkpoints" / "latest.json").is_file()
        if run.exists() and not resume:  # started but no update finished: nothing to keep
            shutil.rmtree(run)
        job = AgentJob(cfg, run, cell.name, grid.eval_episodes, resume=resume, world=world_dir)
        jobs.append(job)
    check_eval_lengths(jobs)
    return jobs


def run_sweep(
    grid_file: str | Path,
    seeds: int,
    out: str | Path,
    *,
    jobs: int = 0,
    backend: str = "local",
    address: str = "",
    cache: str | Path = "models",
    progress: bool = True,
) -> Path:
    """Train and evaluate every cell not yet done, then write the tables and the plot."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if backend not in ("local", "ray"):
        raise ConfigError(f"unknown backend {backend!r}; expected local or ray")
    grid = load_grid(grid_file)
    out = Path(out)
    all_cells = cells(grid, seeds)
    todo = [c for c in all_cells if not _done(out / "runs" / c.name)]
    say = print if progress else (lambda *a, **k: None)
    say(f"sweep: {len(all_cells)} runs, {len(all_cells) - len(todo)} already done")
    if todo:
        for cell in todo:  # every cell's values checked before anything is written
            cfg_v, world_v, imit_v = _split(grid.values(cell))
            if grid.world:
                replace_typed(WorldConfig(), world_v, "world")
                replace_typed(ImitatorConfig(), imit_v, "imitator")
            elif world_v or imit_v:
                raise ConfigError("world.* and imitator.* values need world = true")
            with_values(preset(grid.preset), {**cfg_v, "train.seed": cell.seed}).validate()
        out.mkdir(parents=True, exist_ok=True)
        plan = plan_jobs(grid, todo, out, Path(cache), progress=progress)
        if backend == "ray":
            _run_ray(plan, address, progress=progress)
        else:
            n = jobs if jobs > 0 else max(1, min(len(plan), _cores()))
            run_parallel(plan, None, n, 1, progress=progress)
    rows = tidy_rows(out, all_cells)
    keys = list(grid.axes)
    _write_csv(out / "sweep.csv", rows)
    summary = summarize(rows, keys)
    _write_csv(out / "summary.csv", summary)
    plot_summary(summary, keys, out / "summary.png")
    say(f"wrote {out / 'sweep.csv'}, {out / 'summary.csv'}, {out / 'summary.png'}")
    return out


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _done(run: Path) -> bool:
    return (run / "eval" / "metrics.json").is_file()


def _run_ray(plan: list[AgentJob], address: str, *, progress: bool) -> None:
    """Each job as a one-core Ray task, on a local instance or the cluster at `address`."""
    try:
        import ray
    except ImportError as err:
        raise ConfigError("--backend ray needs the ray package (pip install ray)") from err
    started = not ray.is_initialized()
    if started:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)  # fmt: skip

    @ray.remote(num_cpus=1)
    def work(job: AgentJob) -> bool:
        return train_and_evaluate(job, job.world, threads=1, progress=False)

    try:
        pending = [work.remote(job) for job in plan]
        with tqdm(total=len(pending), unit="run", desc="sweep", disable=not progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                if not ray.get(done[0]):
                    raise KeyboardInterrupt("a sweep run was stopped by a signal")
                bar.update(1)
    finally:
        if started:
            ray.shutdown()


def tidy_rows(out: Path, all_cells: list[Cell]) -> list[dict]:
    """One row per evaluated run, policy and length."""
    import json

    rows = []
    for cell in all_cells:
        path = out / "runs" / cell.name / "eval" / "metrics.json"
        if not path.is_file():
            continue
        metrics = json.loads(path.read_text())
        for ev in sorted(metrics["eval"].values(), key=lambda e: (e["policy"], e["length"])):
            row = {**cell.values, "seed": cell.seed, "run": cell.name, "policy": ev["policy"],
                   "L": ev["length"]}  # fmt: skip
            row.update({name: metric(ev, *path_) for name, path_ in FIGURES})
            nth = {r["n"]: r.get("q50") for r in ev.get("realized_cost_nth_empty") or []}
            for n in range(1, NTH_EMPTY + 1):
                v = nth.get(n)
                row[f"realized_cost_empty_{n}"] = float(v) if v is not None else math.nan
            rows.append(row)
    return rows


def bootstrap_ci(values: list[float], *, resamples: int = 10_000, seed: int = 0):
    """(mean, low, high): the mean over seeds and a 95% percentile-bootstrap interval."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    if v.size == 1:
        return float(v[0]), float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(v.mean()), float(lo), float(hi)


def summarize(rows: list[dict], keys: list[str]) -> list[dict]:
    """Per cell, policy and length: seeds, and mean [95% interval] of each summary figure."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((*(r[k] for k in keys), r["policy"], r["L"]), []).append(r)
    out = []
    for key, members in groups.items():
        row = {**dict(zip(keys, key[: len(keys)], strict=True)), "policy": key[-2], "L": key[-1],
               "seeds": len(members)}  # fmt: skip
        for name in SUMMARY:
            mean, lo, hi = bootstrap_ci([m[name] for m in members])
            row.update({name: mean, f"{name}_lo": lo, f"{name}_hi": hi})
        out.append(row)
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    from klbudget.runs.folder import atomic_write_text

    if not rows:
        atomic_write_text(path, "")
        return
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def plot_summary(summary: list[dict], keys: list[str], path: Path) -> None:
    """The agent's empty-turn fraction and return against the first axis, one line per
    combination of the others, at each cell's training length, with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    agent = [r for r in summary if r["policy"] == "agent"]
    longest: dict[tuple, int] = {}
    for r in agent:
        k = tuple(r[x] for x in keys)
        longest[k] = max(longest.get(k, 0), r["L"])
    agent = [r for r in agent if r["L"] == longest[tuple(r[x] for x in keys)]]
    x_key, others = keys[0], keys[1:]
    xs = list(dict.fromkeys(r[x_key] for r in agent))
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    series: dict[tuple, list[dict]] = {}
    for r in agent:
        series.setdefault(tuple(r[o] for o in others), []).append(r)
    panels = (("empty", "empty teacher turns (share)"), ("return", "return per episode"))
    for ax, (name, title) in zip(axes, panels, strict=True):
        for combo, rs in series.items():
            rs = sorted(rs, key=lambda r: xs.index(r[x_key]))
            pos = [r[x_key] if numeric else xs.index(r[x_key]) for r in rs]
            mean = np.array([r[name] for r in rs])
            err = np.array(
                [
                    [m - r[f"{name}_lo"] for m, r in zip(mean, rs, strict=True)],
                    [r[f"{name}_hi"] - m for m, r in zip(mean, rs, strict=True)],
                ]
            )
            lbl = ", ".join(
                f"{o.split('.')[-1]}={_short(v)}" for o, v in zip(others, combo, strict=True)
            )
            ax.errorbar(pos, mean, yerr=np.clip(err, 0, None), marker="o", capsize=3,
                        linestyle="-" if numeric else "none", label=lbl or "agent")  # fmt: skip
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(x_key)
        if not numeric:
            ax.set_xticks(range(len(xs)), [_short(x) for x in xs], rotation=25, ha="right")
            ax.set_xlim(-0.5, len(xs) - 0.5)  # categories (variants): points, not a line
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), frameon=False,
               fontsize=9)  # fmt: skip
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
