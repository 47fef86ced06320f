"""Every metric (docs/design.md, "Metrics") of one run folder, written to `RUN/eval/metrics.json`.

Reads only the run folder's records (docs/run-folder.md):

    RUN/episodes.jsonl                   training episodes → "training"
    RUN/metrics.jsonl                    PPO updates        → "training" counters
    RUN/eval/episodes_<policy>_L<n>.jsonl                   → "eval"/"<policy>_L<n>"
    RUN/eval/heldout_<policy>.jsonl                         → "calibration"

metrics.json schema (version 1). A metric whose records are absent is null:

    {"schema": 1, "metrics_version": 2, "sources": {FILE: [size, mtime_ns]}, "run": NAME,
     "training": null | {"updates", "agent_steps", "episodes", "last_update": {...},
                         <set metrics>, "reward_over_training": [BIN],
                         "empty_turn_frac_over_training": [BIN]},
     "eval": {"<policy>_L<n>": {"policy", "length", "episodes", <set metrics>}},
     "length_effect": [{"policy", "L", "L2", "empty_frac_L", "empty_frac_2L", "delta"}],
     "calibration": {"<policy>": {"loss", "tokens", "transcripts"},
                     "agent_minus_base": float | null}}

    <set metrics> = "reward": STATS, "replies": STATS (paid student replies per episode),
        "empty_turn_frac": STATS,
        "kl_cost_nth_empty": [{"n", "n_episodes", "mean", "q25", "q50", "q75"}],
        "realized_cost_nth_empty": [same, Σ log-ratio over the turn's tokens],
        "kl_to_base": {"exact": STATS, "realized": STATS, "exact_max", "over_budget_frac"},
        "tau_support": null | {"judged_turns", "violation_share", "episodes_with_violation",
                               "kl_pi_tau_mean", "kl_in_support_mean"},
        "ledger": null | {CLASS: share}, "repetition": {"1".."10": share | null},
        "help_rate": share | null
        "role_swap": {"after_empty", "after_other": share | null, "replies_after_empty",
                      "replies_after_other": int} | null
    STATS = {"n", "mean", "q10", "q25", "q50", "q75", "q90"};  BIN = {"episode", "n", "mean",
    "q10", "q50", "q90"}

Infinite values (KL(π‖τ) with support violations) are written as the strings "inf" and
"-inf" so that the file stays strict JSON; :func:`from_jsonable` turns them back.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from klbudget.envs.format import ChatFormat
from klbudget.evaluation import metrics as m
from klbudget.evaluation.records import (
    Episode,
    RecordError,
    load_episodes,
    load_heldout,
    load_rows,
)
from klbudget.runs.folder import from_jsonable, to_jsonable

SCHEMA_VERSION = 1
# Raised whenever a metric is added or computed differently: a metrics.json of another
# version is not reused (cached_metrics).
METRICS_VERSION = 2
EVAL_EPISODES = re.compile(r"episodes_(?P<policy>[A-Za-z0-9-]+)_L(?P<length>[0-9]+)\.jsonl")
EVAL_HELDOUT = re.compile(r"heldout_(?P<policy>[A-Za-z0-9-]+)\.jsonl")


def set_metrics(episodes: Sequence[Episode], fmt: ChatFormat | None = None) -> dict[str, Any]:
    """The per-episode-set metrics of docs/design.md, "Metrics" for one policy at one length."""
    return {
        "reward": m.reward_summary(episodes),
        "replies": m.replies_summary(episodes),
        "empty_turn_frac": m.empty_turn_summary(episodes, fmt),
        "kl_cost_nth_empty": m.kl_cost_by_empty_index(episodes, fmt),
        "realized_cost_nth_empty": m.kl_cost_by_empty_index(episodes, fmt, realized=True),
        "kl_to_base": m.episode_kl_summary(episodes),
        "tau_support": m.tau_support_summary(episodes),
        "ledger": m.behaviour_ledger(episodes),
        "repetition": m.repetition(episodes),
        "help_rate": m.help_rate(episodes),
        "role_swap": m.role_swap(episodes),
    }


def eval_files(run_dir: Path) -> dict[tuple[str, int], Path]:
    """`{(policy, length): path}` of the eval episode files, sorted by policy then length."""
    found: dict[tuple[str, int], Path] = {}
    eval_dir = run_dir / "eval"
    if eval_dir.is_dir():
        for path in eval_dir.iterdir():
            if match := EVAL_EPISODES.fullmatch(path.name):
                found[(match["policy"], int(match["length"]))] = path
    return dict(sorted(found.items()))


def load_eval_set(path: Path, policy: str, length: int) -> list[Episode]:
    """Load one eval file and check that each record is the policy and length its name says."""
    episodes = load_episodes(path)
    for k, e in enumerate(episodes, start=1):
        if e.policy != policy or e.length != length:
            raise RecordError(
                f"{path}: record {k} is policy {e.policy!r} at length {e.length}, "
                f"but the file name says {policy!r} at length {length}"
            )
    return episodes


def _training(run_dir: Path, fmt: ChatFormat | None) -> dict[str, Any] | None:
    episodes_path, rows_path = run_dir / "episodes.jsonl", run_dir / "metrics.jsonl"
    if not episodes_path.exists() and not rows_path.exists():
        return None
    rows = load_rows(rows_path) if rows_path.exists() else []
    episodes = load_episodes(episodes_path) if episodes_path.exists() else []
    last = rows[-1] if rows else {}
    steps = last.get("time/agent_steps")
    return {
        "updates": len(rows),
        "agent_steps": steps if isinstance(steps, int | float) else None,
        "episodes": len(episodes),
        "last_update": {
            k: v for k, v in last.items() if isinstance(v, int | float) and not isinstance(v, bool)
        },
        **set_metrics(episodes, fmt),
        "reward_over_training": m.reward_over_training(episodes),
        "empty_turn_frac_over_training": m.binned(
            episodes, lambda e: m.empty_turn_fraction(e, fmt)
        ),
    }


def _length_effect(
    sets: dict[tuple[str, int], list[Episode]], fmt: ChatFormat | None
) -> list[dict[str, Any]]:
    out = []
    for (policy, length), short in sets.items():
        long = sets.get((policy, 2 * length))
        if long is not None and (effect := m.length_effect(short, long, fmt)) is not None:
            out.append({"policy": policy, "L": length, "L2": 2 * length, **effect})
    return out


def _calibration(run_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    eval_dir = run_dir / "eval"
    paths = sorted(eval_dir.iterdir()) if eval_dir.is_dir() else []
    for path in paths:
        if match := EVAL_HELDOUT.fullmatch(path.name):
            records = load_heldout(path)
            out[match["policy"]] = {
                "loss": m.calibration_loss(records),
                "tokens": sum(r.n for r in records),
                "transcripts": len(records),
            }
    agent, base = out.get("agent", {}).get("loss"), out.get("base", {}).get("loss")
    # The calibration cost of RL (docs/design.md, "The question"): how much log-loss the agent lost
    # vs β.
    out["agent_minus_base"] = None if agent is None or base is None else agent - base
    return out


def run_format(run_dir: Path) -> ChatFormat:
    """The chat format the run was played in: the tags, separator and prompt of its
    config.toml's [env] table (defaults for a field it does not set, or without a config).

    Turn boundaries, and so every per-turn metric, depend on the speakers' tags.
    RecordError for a config.toml that is not TOML or whose format is inconsistent.
    """
    import tomllib

    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        return ChatFormat()
    try:
        env = tomllib.loads(path.read_text(encoding="utf-8")).get("env", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: invalid TOML ({e})") from e
    keys = ("teacher_tag", "student_tag", "separator", "prompt")
    try:
        return ChatFormat(**{k: env[k] for k in keys if isinstance(env.get(k), str)})
    except ValueError as e:
        raise RecordError(f"{path}: {e}") from e


def compute_all(run_dir: Path, *, fmt: ChatFormat | None = None, write: bool = True) -> dict:
    """Every metric of docs/design.md, "Metrics" from the records of `run_dir` (schema in the module
    doc).

    Turns are split with `fmt`, by default the run's own format (:func:`run_format`).

    With `write`, the result goes to `RUN/eval/metrics.json` (atomically: a temporary file
    in the same folder, then os.replace, so a reader never sees half a file).
    Raises RecordError for a missing folder or a malformed record.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RecordError(f"{run_dir}: not a run folder (no such directory)")
    fmt = fmt or run_format(run_dir)
    stamp = sources(run_dir)  # before reading: a file that changes meanwhile makes it stale
    sets = {key: load_eval_set(path, *key) for key, path in eval_files(run_dir).items()}
    result: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "metrics_version": METRICS_VERSION,
        "sources": stamp,
        "run": run_dir.resolve().name,
        "training": _training(run_dir, fmt),
        "eval": {
            f"{policy}_L{length}": {
                "policy": policy,
                "length": length,
                "episodes": len(eps),
                **set_metrics(eps, fmt),
            }
            for (policy, length), eps in sets.items()
        },
        "length_effect": _length_effect(sets, fmt),
        "calibration": _calibration(run_dir),
    }
    if write:
        write_json_atomic(run_dir / "eval" / "metrics.json", to_jsonable(result))
    return result


def sources(run_dir: Path) -> dict[str, list[int]]:
    """{file: [size, mtime_ns]} of every record the metrics are computed from."""
    eval_dir = run_dir / "eval"
    names = ["config.toml", "episodes.jsonl", "metrics.jsonl"]
    if eval_dir.is_dir():
        names += sorted(
            f"eval/{p.name}"
            for p in eval_dir.iterdir()
            if EVAL_EPISODES.fullmatch(p.name) or EVAL_HELDOUT.fullmatch(p.name)
        )
    out = {}
    for name in names:
        path = run_dir / name
        if path.is_file():
            st = path.stat()
            out[name] = [st.st_size, st.st_mtime_ns]
    return out


def cached_metrics(run_dir: Path, fmt: ChatFormat | None = None) -> dict[str, Any]:
    """The run's metrics: `eval/metrics.json` where it was computed by this version of the
    metrics from the very files the folder holds now (same sizes and modification times)
    and in the run's own format, else computed afresh (nothing is written)."""
    run_dir = Path(run_dir)
    path = run_dir / "eval" / "metrics.json"
    own = run_format(run_dir)
    if path.is_file() and (fmt is None or fmt == own):
        try:
            saved = load_metrics_json(path)
        except RecordError:
            saved = None
        if (
            isinstance(saved, dict)
            and saved.get("metrics_version") == METRICS_VERSION
            and saved.get("sources") == sources(run_dir)
        ):
            return saved
    return compute_all(run_dir, fmt=fmt or own, write=False)


# ----------------------------------------------------------------------------- JSON


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` via a temporary file in the same folder and os.replace,
    so a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write `obj` as strict JSON to `path` atomically (:func:`write_text_atomic`)."""
    # ASCII escapes keep any string (even a lone surrogate from model text) writable.
    write_text_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def load_metrics_json(path: Path) -> dict[str, Any]:
    """Read a metrics.json written by :func:`compute_all` (infinities restored)."""
    try:
        return from_jsonable(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: cannot read metrics ({e})") from e
