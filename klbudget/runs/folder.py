"""The run folder on disk (docs/run-folder.md): atomic writes, JSONL logs, checkpoints.

Every file is written to a temporary name and renamed into place, so a run killed at any
moment (even by SIGKILL) leaves either the old or the new file, never half of one.
JSONL logs are appended line by line; a checkpoint records their byte sizes, and resuming
truncates them back to those sizes so no record is duplicated or lost relative to the
restored state. Checkpoints are safetensors (tensors) plus JSON (counters); nothing is
pickled.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"
LOGS = ("metrics.jsonl", "episodes.jsonl")


class RunFolderError(ValueError):
    """A run folder or checkpoint that cannot be used."""


def require_new(run_dir: Path) -> None:
    """Refuse to start a run in a folder that already holds files (nothing is touched)."""
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunFolderError(f"{run_dir} already holds files; use --resume or choose a new --out")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def to_jsonable(obj: Any) -> Any:
    """Copy of `obj` with ±inf as "inf"/"-inf" and NaN as None: strict JSON has neither."""
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    return obj


def from_jsonable(obj: Any) -> Any:
    """Inverse of :func:`to_jsonable` for the infinities (for numbers-only documents: a
    string "inf" anywhere becomes a float)."""
    if obj == "inf":
        return math.inf
    if obj == "-inf":
        return -math.inf
    if isinstance(obj, dict):
        return {k: from_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_jsonable(v) for v in obj]
    return obj


def jsonl_line(obj: Any) -> str:
    """One strict-JSON line (no NaN or Infinity tokens, :func:`to_jsonable`), with newline."""
    return json.dumps(to_jsonable(obj), separators=(",", ":"), allow_nan=False) + "\n"


def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows as strict JSON lines (:func:`jsonl_line`), flushed to disk."""
    if not rows:
        return
    blob = "".join(jsonl_line(r) for r in rows)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(blob)
        fh.flush()
        os.fsync(fh.fileno())


def _flatten_optimizer(prefix: str, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for idx, state in opt.state_dict()["state"].items():
        for key, val in state.items():
            out[f"{prefix}.{idx}.{key}"] = torch.as_tensor(val).clone()
    return out


def _restore_optimizer(prefix: str, opt: torch.optim.Optimizer, flat: dict) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, val in flat.items():
        if name.startswith(prefix + "."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = val
    sd["state"] = state
    opt.load_state_dict(sd)


def save_checkpoint(
    run_dir: Path,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    generators: dict[str, torch.Generator],
    counters: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoints/step_XXXXXX.{safetensors,json}, then point latest.json at it."""
    ckdir = run_dir / CHECKPOINTS
    ckdir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, mod in modules.items():
        for key, val in mod.state_dict().items():
            tensors[f"{name}.{key}"] = val.detach().contiguous()
    for name, opt in optimizers.items():
        tensors.update(_flatten_optimizer(f"opt_{name}", opt))
    for name, gen in generators.items():
        tensors[f"rng_{name}"] = gen.get_state()
    tensors["rng_torch"] = torch.get_rng_state()
    stem = f"step_{step:06d}"
    tmp = ckdir / f".{stem}.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, ckdir / f"{stem}.safetensors")
    sizes = {log: (run_dir / log).stat().st_size if (run_dir / log).exists() else 0 for log in LOGS}
    meta = {"step": step, "counters": counters, "log_sizes": sizes}
    atomic_write_text(ckdir / f"{stem}.json", json.dumps(meta, indent=1))
    atomic_write_text(ckdir / "latest.json", json.dumps({"checkpoint": stem}))
    old = sorted(p for p in ckdir.glob("step_*.safetensors") if p.stem != stem)
    for p in old[: max(0, len(old) - (keep - 1))]:
        p.unlink(missing_ok=True)
        p.with_suffix(".json").unlink(missing_ok=True)
    return ckdir / f"{stem}.safetensors"


def latest_checkpoint(run_dir: Path) -> str | None:
    latest = run_dir / CHECKPOINTS / "latest.json"
    if not latest.exists():
        return None
    try:
        return str(json.loads(latest.read_text())["checkpoint"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise RunFolderError(f"{latest} is corrupt: {err}") from err


def load_checkpoint(
    run_dir: Path,
    stem: str,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    generators: dict[str, torch.Generator],
) -> dict[str, Any]:
    """Restore state in place; returns the checkpoint's JSON (counters, log sizes)."""
    path = run_dir / CHECKPOINTS / f"{stem}.safetensors"
    try:
        tensors = load_file(str(path))
        meta = json.loads(path.with_suffix(".json").read_text())
    except FileNotFoundError as err:
        raise RunFolderError(f"checkpoint {path} is missing") from err
    except (SafetensorError, OSError, json.JSONDecodeError, ValueError) as err:
        raise RunFolderError(f"checkpoint {path} is corrupt: {err}") from err
    if (problem := _meta_problem(meta)) is not None:
        raise RunFolderError(f"checkpoint {path.with_suffix('.json')} is corrupt: {problem}")
    try:
        for name, mod in modules.items():
            pre = name + "."
            sd = {k[len(pre) :]: v for k, v in tensors.items() if k.startswith(pre)}
            mod.load_state_dict(sd)
        for name, opt in optimizers.items():
            _restore_optimizer(f"opt_{name}", opt, tensors)
        for name, gen in generators.items():
            gen.set_state(tensors[f"rng_{name}"])
        torch.set_rng_state(tensors["rng_torch"])
    except (KeyError, RuntimeError, ValueError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunFolderError(f"checkpoint {path} does not match this run: {msg}") from err
    return meta


def _meta_problem(meta: Any) -> str | None:
    """What is wrong with a checkpoint's JSON (as `save_checkpoint` writes it), or None."""
    if not isinstance(meta, dict):
        return "not a JSON object"
    counters, sizes = meta.get("counters"), meta.get("log_sizes")
    if not isinstance(counters, dict):
        return "no counters"
    for key in ("update", "agent_steps", "episodes"):
        v = counters.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            return f"counters.{key} is {v!r}, not a count"
    for key in ("wall_s", "penalty_coef"):
        v = counters.get(key, 0.0)
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            return f"counters.{key} is {v!r}, not a finite number"
    if not isinstance(sizes, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in sizes.items()
    ):
        return "log_sizes is not a map of file names to byte counts"
    if any(Path(k).name != k or k in ("", ".", "..") for k in sizes):
        return "log_sizes names a file outside the run folder"  # never truncated
    return None


def truncate_logs(run_dir: Path, sizes: dict[str, int]) -> None:
    """Cut the JSONL logs back to their sizes at checkpoint time, after checking every one:
    a log that is missing, shorter than then, or whose first `size` bytes are not whole
    JSON lines stops the resume (RunFolderError) before any log is cut."""
    for log, size in sizes.items():
        p = run_dir / log
        if size == 0:
            continue
        if not p.is_file():
            raise RunFolderError(f"{p} is missing (it held {size} bytes at the checkpoint); "
                                 "cannot resume without it")  # fmt: skip
        if p.stat().st_size < size:
            raise RunFolderError(f"{p} is shorter ({p.stat().st_size} bytes) than at the "
                                 f"checkpoint ({size}); cannot resume over it")  # fmt: skip
        with open(p, "rb") as fh:
            head = fh.read(size)
        if not head.endswith(b"\n"):
            raise RunFolderError(f"{p}: its first {size} bytes do not end a line; corrupt")
        for n, line in enumerate(head.splitlines(), 1):
            try:
                json.loads(line)
            except ValueError as err:
                raise RunFolderError(f"{p}:{n}: not a JSON line ({err}); corrupt") from err
    for log, size in sizes.items():
        p = run_dir / log
        if p.exists() and p.stat().st_size > size:
            with open(p, "r+b") as fh:
                fh.truncate(size)
