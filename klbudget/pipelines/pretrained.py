"""The paper's experiment on a pretrained LM as shipped: `klbudget demo --base smollm2`.

Cohen et al. (2024) held a teacher agent to a pretrained model in a plain-text
teacher/student transcript opened by their prompt, with the same model writing the student
at temperature 0.05. Nothing here is trained on any demonstration and nothing about silence
is put anywhere: whatever an empty teacher turn costs is what pretraining made it cost.

1. **The prior** (before any RL): the cost −log base of the n-th teacher turn when the
   teacher hands every turn over at once, with the model writing the student's replies as
   an agent would meet them (``klbudget.pipelines.prior.empty_turn_costs``). The first such
   turn cuts off the prompt's "Do you", so it is not empty by content; the later ones are.
2. **Whether silence pays**: the return of the always-silent teacher beside the base acting
   alone and beside teachers that repeat one short turn, with conversation 0's transcript
   (who writes after a silence).
3. **Agents** at each budget (default 10 and 20 nats), trained and evaluated at L/2 and L as
   in the default demo, but with no world: no τ, so no τ-support or KL to τ.
4. **The report** of the runs side by side.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from klbudget.agent.distributed import threads_per_process
from klbudget.config import ConfigError, apply_overrides, preset, with_values
from klbudget.pipelines.demo import (
    Agent,
    AgentJob,
    check_eval_lengths,
    job_count,
    run_name,
    run_parallel,
    summary_rows,
    summary_table,
    train_and_evaluate,
)
from klbudget.pipelines.prior import (
    REPEATED_TURNS,
    empty_turn_costs,
    silence_pays,
    silence_table,
)
from klbudget.report.html import build_report
from klbudget.runs.folder import RunFolderError, atomic_write_text, to_jsonable

PRETRAINED_AGENTS = "single:10,single:20"


def run_pretrained(
    out: Path,
    *,
    model: Path,
    preset_name: str = "paper_smollm2",
    agents: tuple[Agent, ...] = ((("single", 10.0, None)), ("single", 20.0, None)),
    train_set: list[str] | None = None,
    eval_episodes: int = 32,
    prior_episodes: int = 32,
    turns: int = 8,
    repeated: tuple[str, ...] = REPEATED_TURNS,
    jobs: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Run the study into `out` (which must be new); returns the evaluation's summary rows.
    Every agent's config is checked before anything is written."""
    if out.exists() and any(out.iterdir()):
        raise RunFolderError(f"{out} already holds files; choose a new --out")
    if not agents:
        raise ConfigError("the study needs at least one agent")
    if any(kind != "single" for kind, _, _ in agents):
        raise ConfigError("a pretrained base without a world has agents of kind single only")
    if prior_episodes < 1 or turns < 1 or eval_episodes < 1:
        raise ConfigError("the prior's episodes and turns and --eval-episodes must be >= 1")
    names = [run_name(kind, budget) for kind, budget, _ in agents]
    if len(set(names)) < len(names):
        raise ConfigError("give each budget once")
    base_cfg = with_values(preset(preset_name), {"model.path": str(model.resolve())})
    base_cfg = apply_overrides(base_cfg, train_set or [])
    plan = []
    for (_, budget, steps), name in zip(agents, names, strict=True):
        sets = {"budget.total": budget}
        sets |= {} if steps is None else {"train.total_agent_steps": steps}
        cfg = with_values(base_cfg, sets).validate()
        plan.append(AgentJob(cfg, out / name, f"{budget:g} nats against {model.name}",
                             eval_episodes))  # fmt: skip
    check_eval_lengths(plan)
    say = print if progress else (lambda *a, **k: None)
    t0 = time.perf_counter()
    n_jobs = job_count(jobs, len(plan))
    out.mkdir(parents=True, exist_ok=True)

    say(f"[1/4] prior: the n-th empty teacher turn under {model.name}, "
        f"{prior_episodes} conversations", flush=True)  # fmt: skip
    prior = empty_turn_costs(base_cfg.validate(), episodes=prior_episodes, turns=turns)
    record = {"model": str(model), "preset": preset_name, "episodes": prior_episodes,
              "by_n": prior.summary(), "note": _PRIOR_NOTE}  # fmt: skip
    _write_json(out / "prior.json", record)
    say(prior.table(model.name))
    say(_PRIOR_NOTE)

    say("[2/4] does silence pay? the silent teacher, the base alone, repeated turns", flush=True)
    silence = silence_pays(base_cfg.validate(), repeated, episodes=eval_episodes)
    _write_json(out / "silence.json", silence)
    say(silence_table(silence))

    threads = threads_per_process(n_jobs) if n_jobs > 1 else 0
    say(f"[3/4] {len(plan)} agents in {n_jobs} process(es):")
    for job in plan:
        say(f"      {job.label} -> {job.run}", flush=True)
    if n_jobs == 1:
        for job in plan:
            if not train_and_evaluate(job, None, threads=threads, progress=progress):
                raise KeyboardInterrupt(f"{job.label}: stopped by a signal")
    else:
        run_parallel(plan, None, n_jobs, threads, progress=progress)
    runs = [job.run for job in plan]
    report = build_report(runs, out / "report.html")
    say("[4/4] report", flush=True)
    rows = summary_rows(runs)
    say(summary_table(rows))
    say(f"\nreport: {report}\nwall time: {(time.perf_counter() - t0) / 60:.1f} min")
    return rows


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=1, allow_nan=False) + "\n")


_PRIOR_NOTE = (
    "n = 1 hands over right after the prompt's 'Do you' (not empty by content: the price of "
    "cutting the first turn short); n >= 2 are empty turns."
)
