"""The default demo: a short KL-budgeted training run on a real pretrained model, and its report.

base model (SmolLM2-135M-Instruct, converted once into `models/smollm2`) → PPO agent with a
KL budget in the teacher/student chat (cpu preset) → HTML report. Everything it writes goes
under `--out`; the converted model is shared between runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from klbudget.agent.trainer import Trainer
from klbudget.base.convert import convert_smollm2
from klbudget.config import Config, apply_overrides, preset
from klbudget.report.html import build_report
from klbudget.runs.folder import RunFolderError


def demo_config(model_dir: Path, overrides: list[str]) -> Config:
    cfg = apply_overrides(preset("cpu"), [f"model.path={model_dir}"])
    return apply_overrides(cfg, overrides).validate()


def run_demo(out: Path, *, model_dir: Path, overrides: list[str], progress: bool = True) -> dict:
    """Run the demo into `out` (which must not exist yet); returns the summary row."""
    if out.exists() and any(out.iterdir()):
        raise RunFolderError(f"{out} already holds files; choose a new --out")
    t0 = time.perf_counter()
    if not (model_dir / "config.json").is_file():
        print(f"converting SmolLM2-135M-Instruct into {model_dir} (once) ...", flush=True)
        convert_smollm2(model_dir)
    cfg = demo_config(model_dir, overrides)
    run = out / "train"
    Trainer(cfg, run, progress=progress).learn()
    report = build_report([run], out / "report.html")
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    summary = {
        "budget (nats)": cfg.budget.total,
        "agent steps": int(last["time/agent_steps"]),
        "reward/mean": last["reward/mean"],
        "kl/episode_mean": last["kl/episode_mean"],
        "budget/spent": last["budget/spent"],
        "empty-turn fraction": last["episodes/empty_turn_frac"],
        "wall time (s)": time.perf_counter() - t0,
    }
    print(f"\nrun folder: {run}\nreport:     {report}")
    width = max(len(k) for k in summary)
    for key, val in summary.items():
        print(
            f"  {key:<{width}}  {val:.3f}" if isinstance(val, float) else f"  {key:<{width}}  {val}"
        )
    return summary
