"""The default demo: world → corpus → imitator → budgeted agents → evaluation → report.

1. the default world (a trusted teacher τ with exact probabilities and a student) writes a
   seeded demonstration corpus;
2. the imitator β (a small causal transformer with its own BPE) is trained on it, or
   reused from the cache;
3. PPO agents with per-episode KL budgets (10 and 20 nats, `demo` preset) are trained
   against β;
4. each is evaluated (agent, β acting alone and τ acting, at L and 2L) and a report
   compares them.

With `bases` beyond "single" (docs/design.md, "Pessimistic bases") the model class is β, `ensemble`
− 1 more imitators (bootstrap resamples with other seeds) and, with `tau`, τ itself (the realizable
case of the guarantee: τ ∈ M^α gives ν_α ≤ τ); agents are trained against the Bayesian
mixture ("bayes") and the pessimistic imitator with help ("pessimistic"). `help_fractions`
adds the help-rate study: ensembles fitted on a fraction of the demonstrations, their
pessimistic base acting alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import pickle
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from klbudget.agent.distributed import threads_per_process
from klbudget.agent.trainer import Trainer
from klbudget.compose import TAU_MEMBER
from klbudget.config import (
    Config,
    ConfigError,
    apply_overrides,
    preset,
    replace_fields,
    with_values,
)
from klbudget.evaluation.records import RecordError, load_rows
from klbudget.pipelines import DEMO_AGENTS
from klbudget.pipelines.evaluate import evaluate_run
from klbudget.pipelines.prior import (
    REPEATED_TURNS,
    base_alone,
    empty_turn_costs,
    silence_pays,
    silence_table,
)
from klbudget.report.html import build_report
from klbudget.runs.folder import RunFolderError, atomic_write_text, to_jsonable
from klbudget.world import (
    ImitatorConfig,
    WorldConfig,
    build_world,
    read_report,
    train_ensemble,
    train_imitator,
)
from klbudget.world.incontext import incontext_imitators

BASE_KINDS = ("single", "bayes", "pessimistic")
TAU = Path(TAU_MEMBER)  # τ itself as a member of the model class
Agent = tuple[str, float, int | None]  # base kind, budget in nats, agent steps (None: preset's)


def parse_agents(spec: str) -> tuple[Agent, ...]:
    """``KIND:BUDGET[:STEPS],...`` → (kind, budget, steps or None) per agent."""
    agents = []
    for item in (i.strip() for i in spec.split(",")):
        if not item:
            continue
        parts = item.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise ConfigError(f"agents are KIND:BUDGET or KIND:BUDGET:STEPS, got {item!r}")
        try:
            budget = float(parts[1])
            steps = int(parts[2]) if len(parts) == 3 else None
        except ValueError as err:
            raise ConfigError(f"{item!r}: BUDGET is a number and STEPS an integer") from err
        if not math.isfinite(budget) or budget < 0:
            raise ConfigError(f"{item!r}: BUDGET must be a finite number >= 0")
        if steps is not None and steps < 1:
            raise ConfigError(f"{item!r}: STEPS must be at least 1")
        agents.append((parts[0], budget, steps))
    return tuple(agents)


def run_demo(
    out: Path,
    *,
    agents: tuple[Agent, ...] = parse_agents(DEMO_AGENTS),
    cache: Path = Path("models"),
    world_set: list[str] | None = None,
    imitator_set: list[str] | None = None,
    train_set: list[str] | None = None,
    eval_episodes: int = 32,
    ensemble: int = 1,
    tau: bool = True,
    help_fractions: tuple[float, ...] = (),
    jobs: int = 0,
    progress: bool = True,
    incontext: InContext | None = None,
) -> list[dict]:
    """Run the whole demo into `out` (which must be new); returns the summary rows.

    `jobs` agents train at once, each in its own process (0: all of them when the machine
    has at least 2 cores; see :func:`job_count`). With `incontext`, the imitators are the
    pretrained LM `incontext.model` reading τ's demonstrations in context
    (klbudget.world.incontext; seeds 0 … ensemble−1), in a world whose students are never
    quiet unless `world_set` says otherwise, and the agents train with the
    `incontext_smollm2` preset."""
    if out.exists() and any(out.iterdir()):
        raise RunFolderError(f"{out} already holds files; choose a new --out")
    if not agents:
        raise ConfigError("the demo needs at least one agent")
    bases = tuple(dict.fromkeys(kind for kind, _, _ in agents))
    unknown = [b for b in bases if b not in BASE_KINDS]
    if unknown:
        raise ConfigError(f"unknown base kind(s) {unknown}; known: {', '.join(BASE_KINDS)}")
    if any(not (math.isfinite(b) and b >= 0) for _, b, _ in agents):
        raise ConfigError(f"budgets must be finite and >= 0, got {[b for _, b, _ in agents]}")
    if ensemble < 1:
        raise ConfigError(f"ensemble must be >= 1 imitators, got {ensemble}")
    if ensemble + tau < 2 and (set(bases) - {"single"} or help_fractions):
        raise ConfigError("an ensemble needs at least 2 members (imitators, and τ with tau)")
    if any(not 0 < f <= 1 for f in help_fractions):
        raise ConfigError(f"help fractions must be in (0, 1], got {list(help_fractions)}")
    names = [run_name(kind, budget) for kind, budget, _ in agents]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"two agents would train into {out / twice[0]}: give each base "
                          "kind and budget once")  # fmt: skip
    n_jobs = job_count(jobs, len(agents))
    t0 = time.perf_counter()
    if incontext is not None:
        if imitator_set or help_fractions:
            raise ConfigError("an in-context imitator trains nothing: no imitator settings "
                              "or help fractions")  # fmt: skip
        if incontext.shots < 0:
            raise ConfigError(f"shots must be >= 0, got {incontext.shots}")
        world_set = ["quiet_students=0", *(world_set or [])]
    world_cfg = replace_fields(WorldConfig(), world_set or [], "world")
    imit_cfg = replace_fields(ImitatorConfig(), imitator_set or [], "imitator")
    base_cfg = apply_overrides(preset("demo" if incontext is None else "incontext_smollm2"),
                               train_set or [])  # fmt: skip
    for _, budget, steps in agents:  # every agent's settings, checked before the world
        sets = {"model.path": "imitator", "budget.total": budget}
        steps_set = {} if steps is None else {"train.total_agent_steps": steps}
        with_values(base_cfg, sets | steps_set).validate()
    say = print if progress else (lambda *a, **k: None)

    say(f"[1/4] world {world_cfg.hash} -> {out / 'world'}", flush=True)
    world_dir = build_world(world_cfg, out / "world")
    k = ensemble if set(bases) - {"single"} else 1
    if incontext is None:
        say(f"[2/4] imitator (cached under {cache})", flush=True)
        model = train_imitator(world_dir, imit_cfg, cache, progress=progress)
        members = [model]
    else:
        say(f"[2/4] {k} in-context imitator(s): {incontext.model.name} reading "
            f"{incontext.shots} of τ's demonstrations (cached under {cache})")  # fmt: skip
        members = incontext_imitators(incontext.model, world_dir, shots=incontext.shots, k=k,
                                      cache_root=cache)  # fmt: skip
        model = members[0]
        for folder in members:
            say(f"      {folder.name}: {_heldout_line(read_report(folder))}")
    held = read_report(model).get("heldout", {})
    if set(bases) - {"single"}:
        if ensemble > 1 and incontext is None:
            say(f"[2/4] ensemble of {ensemble} imitators (member 0 is β)", flush=True)
            members = train_ensemble(world_dir, imit_cfg, ensemble, cache, progress=progress)
        members += [TAU] if tau else []
    # In context the prior is the study's question: as many conversations as it asks for.
    prior = empty_turn_priors(members, base_cfg, world_dir, pessimistic="pessimistic" in bases,
                              episodes=8 if incontext is None else 32)  # fmt: skip
    # Costs are +inf where a member (τ) never writes an empty turn: "inf" in strict JSON.
    text = json.dumps(to_jsonable(prior), indent=1, allow_nan=False)
    atomic_write_text(out / "prior.json", text + "\n")
    say(_prior_table(prior))
    if incontext is not None:
        say("[2/4] does silence pay? (the student's replies sorted by the world's pools)")
        cfg0 = with_values(base_cfg, {"model.path": str(members[0].resolve())}).validate()
        silence = silence_pays(cfg0, REPEATED_TURNS, episodes=eval_episodes, world=world_dir)
        text = json.dumps(to_jsonable(silence), indent=1, allow_nan=False)
        atomic_write_text(out / "silence.json", text + "\n")
        say(silence_table(silence))
    plan = []  # every agent's config is checked before the first one trains
    for kind, budget, steps in agents:
        name = run_name(kind, budget)
        # Absolute paths: a run folder's config then resumes and evaluates from any folder.
        sets = {"model.path": str(model.resolve()), "budget.total": budget}
        sets |= {} if steps is None else {"train.total_agent_steps": steps}
        cfg = with_values(base_cfg, sets)
        cfg = _with_base(cfg, kind, members, world_dir).validate()
        # L/2 and L: both inside the window β was trained on (imitator block_size), so the
        # length effect is not confounded by β leaving its training distribution.
        if incontext is None and cfg.env.length > imit_cfg.block_size:
            raise ConfigError(
                f"episodes of {cfg.env.length} tokens exceed the imitator's window "
                f"{imit_cfg.block_size}"
            )
        plan.append(AgentJob(cfg, out / name, f"{kind} base, {budget:g} nats", eval_episodes))
    runs = [job.run for job in plan]
    if n_jobs == 1:
        for i, job in enumerate(plan):
            say(f"[3/4] agent {i + 1}/{len(plan)}: {job.label} -> {job.run}", flush=True)
            if not train_and_evaluate(job, world_dir, threads=0, progress=progress):
                raise KeyboardInterrupt(f"{job.label}: stopped by a signal")
    else:
        threads = threads_per_process(n_jobs)
        say(f"[3/4] {len(plan)} agents in {n_jobs} processes of {threads} thread(s) each:")
        for job in plan:
            say(f"      {job.label} -> {job.run}", flush=True)
        run_parallel(plan, world_dir, n_jobs, threads, progress=progress)
    study = []
    for f in help_fractions:
        say(f"[3/4] help study: ensemble on {f:g} of the demonstrations", flush=True)
        part = dataclasses.replace(imit_cfg, train_fraction=f)
        folders = train_ensemble(world_dir, part, ensemble, cache, progress=progress)
        folders += [TAU] if tau else []
        cfg = with_values(base_cfg, {"model.path": str(folders[0]), "budget.total": 0.0})
        cfg = _with_base(cfg, "pessimistic", folders, world_dir).validate()
        row = base_alone(cfg, eval_episodes, seed=777)
        row.update(fraction=f, transcripts=read_report(folders[0])["train_transcripts"])
        study.append(row)
    if study:
        atomic_write_text(out / "help_study.json", json.dumps(study, indent=1) + "\n")
    report = build_report(runs, out / "report.html")
    say("[4/4] report", flush=True)
    rows = summary_rows(runs)
    minutes = (time.perf_counter() - t0) / 60
    say(f"\nimitator {model.name}: held-out teacher log-loss "
        f"{held.get('imitator_teacher_logloss', float('nan')):.3f} nats/token, "
        f"τ entropy {held.get('tau_teacher_entropy', float('nan')):.3f}")  # fmt: skip
    say(summary_table(rows))
    if study:
        say(_study_table(study))
    say(f"\nreport: {report}\nruns:   {', '.join(map(str, runs))}\nwall time: {minutes:.1f} min")
    return rows


@dataclasses.dataclass(frozen=True)
class InContext:
    """The demo's imitators made in context from a pretrained LM (klbudget.world.incontext)."""

    model: Path  # the LM's folder
    shots: int = 2  # τ's demonstrations each imitator reads first


def _heldout_line(report: dict) -> str:
    held = report.get("heldout", {})
    return (f"held-out teacher log-loss {held.get('imitator_teacher_logloss', math.nan):.3f} "
            f"nats/token, KL(τ‖imitator) {held.get('kl_tau_imitator_teacher', math.nan):.3f}, "
            f"{report.get('context_tokens', 0)} context tokens")  # fmt: skip


def run_name(kind: str, budget: float) -> str:
    return f"agent_B{budget:g}" if kind == "single" else f"{kind}_B{budget:g}"


@dataclasses.dataclass(frozen=True)
class AgentJob:
    """One agent of the demo: its config, run folder and evaluation."""

    cfg: Config
    run: Path
    label: str
    eval_episodes: int
    resume: bool = False  # continue the run folder from its newest checkpoint
    world: Path | None = None  # the world τ judges this job's evaluation in (else the caller's)


def check_eval_lengths(plan: list[AgentJob]) -> None:
    """Each agent is evaluated at L/2 and L: both must hold the prompt and more."""
    from transformers import AutoTokenizer

    from klbudget.base.hf import resolve_model

    tokenizers = {}
    for job in plan:
        folder = resolve_model(job.cfg.model.path)[0]
        if folder not in tokenizers:
            try:
                tokenizers[folder] = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            except (OSError, ValueError) as err:
                raise ConfigError(f"cannot load the tokenizer in {folder}: {err}") from err
        ids = tokenizers[folder](job.cfg.env.prompt, add_special_tokens=False)["input_ids"]
        if job.cfg.env.length // 2 <= len(ids):
            raise ConfigError(
                f"env.length = {job.cfg.env.length}: the evaluation at L/2 needs more than the "
                f"prompt's {len(ids)} tokens (env.length above {2 * len(ids) + 1})"
            )


def job_count(jobs: int, agents: int) -> int:
    """Agents to train at once: `jobs` when > 0, else every agent, at most one more than
    the cores (on 2 cores, three single-threaded trainers do about 1.4 times the work of
    one trainer on two threads: `benchmarks/demo_jobs.py`), and 1 on a single core."""
    if jobs < 0:
        raise ConfigError(f"jobs must be >= 0 (0: automatic), got {jobs}")
    if jobs == 0:
        cores = os.cpu_count() or 1
        jobs = min(agents, cores + 1) if cores >= 2 else 1
    return max(1, min(jobs, agents))


def train_and_evaluate(job: AgentJob, world: Path | None, *, threads: int, progress: bool) -> bool:
    """Train one agent and evaluate it at L/2 and L; False (and no evaluation) when a signal
    stopped the training early."""
    if threads > 0:
        torch.set_num_threads(threads)
    done = Trainer(job.cfg, job.run, resume=job.resume, progress=progress).learn()
    if done.agent_steps < job.cfg.train.total_agent_steps:
        return False
    length = job.cfg.env.length
    evaluate_run(job.run, episodes=job.eval_episodes, lengths=[length // 2, length],
                 world=world, progress=progress)  # fmt: skip
    return True


def _agent_process(job: AgentJob, world: Path | None, threads: int, errors) -> None:
    """A worker: the job, its exception sent back to the caller, exit code 1 on failure."""
    try:
        where = job.world if job.world is not None else world
        finished = train_and_evaluate(job, where, threads=threads, progress=False)
    except BaseException as err:  # noqa: BLE001 (whatever it is, the caller raises it)
        try:
            pickle.dumps(err)
        except Exception:  # noqa: BLE001
            err = RuntimeError(f"{type(err).__name__}: {err}")
        errors.put(err)
        sys.exit(1)
    if not finished:
        errors.put(KeyboardInterrupt(f"{job.label}: stopped by a signal"))
        sys.exit(1)


def _steps_done(run: Path, last: int) -> int:
    """Agent steps in a run folder's last metrics line; `last` while there is none yet
    (or it is being written)."""
    try:
        rows = load_rows(run / "metrics.jsonl")
        return int(rows[-1]["time/agent_steps"]) if rows else last
    except (OSError, RecordError, KeyError):
        return last


def _interrupt(signum, frame) -> None:  # noqa: ARG001
    raise KeyboardInterrupt


def run_parallel(
    plan: list[AgentJob], world: Path | None, n_jobs: int, threads: int, *, progress: bool
) -> None:
    """Each job in a fresh process (spawned: no state shared with this one), `n_jobs` at a
    time; one progress bar over all of them, read from their run folders.

    A worker's exception is raised here once it has ended (a worker that dies without
    one, killed by the system, raises RuntimeError), after the others are killed; so is
    Ctrl-C or SIGTERM to this process. A killed agent keeps the checkpoint of its last
    finished update (`train.checkpoint_every`), written atomically."""
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.SimpleQueue()
    todo, running = list(range(len(plan))), {}  # job index → its process
    steps = [0] * len(plan)
    total = sum(job.cfg.train.total_agent_steps for job in plan)
    bar = tqdm(  # updates arrive in chunks of thousands of steps: average over the whole run
        total=total, unit="step", desc="agents", disable=not progress, dynamic_ncols=True,
        smoothing=0.0,
    )  # fmt: skip
    old = None
    with contextlib.suppress(ValueError):  # only the main thread may handle signals
        old = signal.signal(signal.SIGTERM, _interrupt)
    try:
        shown = (0, 0)
        while todo or running:
            while todo and len(running) < n_jobs:
                i = todo.pop(0)
                running[i] = ctx.Process(
                    target=_agent_process, args=(plan[i], world, threads, errors)
                )
                running[i].start()
            time.sleep(1.0)
            for i, proc in list(running.items()):
                if proc.exitcode is None:
                    continue
                del running[i]
                if proc.exitcode != 0:
                    if not errors.empty():
                        raise errors.get()
                    raise RuntimeError(
                        f"the process training {plan[i].label} ended with exit code {proc.exitcode}"
                    )
            for i, job in enumerate(plan):
                steps[i] = min(job.cfg.train.total_agent_steps, _steps_done(job.run, steps[i]))
            now = (sum(steps), len(plan) - len(todo) - len(running))
            if now != shown:  # redrawn only on news (one line per redraw in a log file)
                bar.n, shown = now[0], now
                bar.set_postfix(done=f"{now[1]}/{len(plan)}")
    finally:
        for proc in running.values():
            proc.kill()
        for proc in running.values():
            proc.join()
        errors.close()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
        bar.close()


PRIOR_FIRST_TAU = (0, 3)  # silence from the first teacher turn, and after 3 turns of τ


def empty_turn_priors(
    members: list[Path], cfg: Config, world: Path, *, pessimistic: bool, episodes: int = 8
) -> list[dict]:
    """The cost of the n-th empty turn (klbudget.pipelines.prior) on the same transcripts
    (β writes the student) under each member and, with ``pessimistic``, under ν_α with help;
    one row per base and number of τ turns first."""
    kind = "pessimistic" if pessimistic and len(members) > 1 else "single"
    c = _with_base(with_values(cfg, {"model.path": str(members[0])}), kind, members, world)
    rows = []
    for first in PRIOR_FIRST_TAU:
        res = empty_turn_costs(c, episodes=episodes, first_tau=first, world=world)
        named = [("β (member 0)" if k == 0 else "τ" if members[k] == TAU else f"member {k}", k)
                 for k in range(len(members))]  # fmt: skip
        for name, k in named if kind != "single" else named[:1]:
            part = res.member(k) if kind != "single" else res
            rows.append({"base": name, "model": members[k].name, "first_tau": first,
                         "by_n": part.summary()})  # fmt: skip
        if kind != "single":
            rows.append({"base": "ν_α + help", "model": "", "first_tau": first,
                         "by_n": res.summary()})  # fmt: skip
    return rows


def _prior_table(prior: list[dict]) -> str:
    n_max = max((len(r["by_n"]) for r in prior), default=0)
    head = f"{'base':<16} {'τ first':>7} " + " ".join(f"{f'n={n + 1}':>6}" for n in range(n_max))
    lines = ["\ncost of the n-th empty teacher turn, −log base (median nats):", head]
    for r in prior:
        cells = " ".join(f"{row['median']:>6.2f}" for row in r["by_n"])
        lines.append(f"{r['base']:<16} {r['first_tau']:>7} {cells}")
    return "\n".join(lines)


def _with_base(cfg: Config, kind: str, members: list[Path], world: Path) -> Config:
    if kind == "single":
        return cfg
    folders = [str(m if m == TAU else m.resolve()) for m in members[1:]]
    return with_values(cfg, {
        "base.kind": kind, "base.members": ",".join(folders), "base.world": str(world.resolve()),
    })  # fmt: skip


def summary_rows(runs: list[Path]) -> list[dict]:
    """One row per run, policy and length; β and τ rows once per (base kind, length)."""
    rows, seen = [], set()
    for run in runs:
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        kind = run.name.split("_B")[0].replace("agent", "single")
        for _, ev in sorted(metrics["eval"].items()):
            policy = ev["policy"]
            key = (kind if policy == "base" else "", policy, ev["length"])
            if policy != "agent":
                if key in seen:
                    continue
                seen.add(key)
            rows.append({
                "run": run.name if policy == "agent" else ("τ" if policy == "tau" else kind),
                "policy": policy,
                "L": ev["length"],
                "return": metric(ev, "reward", "mean"),
                "replies": metric(ev, "replies", "mean"),
                "empty": metric(ev, "empty_turn_frac", "mean"),
                "outside": metric(ev, "tau_support", "violation_share"),
                "kl_base": metric(ev, "kl_to_base", "exact", "mean"),
                "kl_base_max": metric(ev, "kl_to_base", "exact_max"),
                "kl_tau": metric(ev, "tau_support", "kl_in_support_mean"),
                "help": metric(ev, "help_rate"),
            })  # fmt: skip
    return rows


def metric(obj: dict, *keys: str) -> float:
    """A nested metric, NaN where it is absent (e.g. no completed teacher turn)."""
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return float(obj) if isinstance(obj, (int, float)) else float("nan")


COLUMNS = (  # key, header, width, format
    ("return", "return", 7, ".2f"),
    ("replies", "replies", 7, ".2f"),
    ("empty", "empty", 6, ".3f"),
    ("outside", "∉supp τ", 8, ".3f"),
    ("kl_base", "KL(π‖β)", 8, ".3f"),
    ("kl_base_max", "max", 7, ".3f"),
    ("kl_tau", "KL(π‖τ)*", 9, ".3f"),
    ("help", "help", 6, ".3f"),
)


def _cell(value, width: int, spec: str) -> str:
    """A number for reading: "—" where it does not apply (NaN), never "-0.000"."""
    if isinstance(value, float) and math.isnan(value):
        return f"{'—':>{width}}"
    text = f"{value:{spec}}"
    if text.startswith("-") and float(text) == 0:
        text = text[1:]
    return f"{text:>{width}}"


def summary_table(rows: list[dict]) -> str:
    # No help without a pessimistic base, no τ columns without a world.
    optional = ("help", "outside", "kl_tau")
    cols = [c for c in COLUMNS
            if c[0] not in optional or any(not math.isnan(r[c[0]]) for r in rows)]  # fmt: skip
    head = f"{'run':<16} {'policy':<6} {'L':>4} " + " ".join(f"{h:>{w}}" for _, h, w, _ in cols)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = " ".join(_cell(r[k], w, f) for k, _, w, f in cols)
        lines.append(f"{r['run']:<16} {r['policy']:<6} {r['L']:>4} {cells}")
    lines.append(
        "replies: paid student replies per episode. "
        "∉supp τ: share of teacher turns τ could never write. KL(π‖β): exact, per episode, "
        "against the run's base (β, ξ or ν_α with help).\nKL(π‖τ)*: exact KL(π̃‖τ) summed "
        "over the agent tokens of in-support turns, π̃ = π conditioned on τ's support at each "
        "step; mean per episode."
    )
    return "\n".join(lines)


def _study_table(study: list[dict]) -> str:
    lines = [
        "\nhelp rate of the pessimistic base acting alone, by demonstration data:",
        f"{'fraction':>8} {'transcripts':>11} {'help':>6} {'empty':>6} {'∉supp τ':>8}",
    ]
    for r in study:
        lines.append(f"{r['fraction']:>8g} {r['transcripts']:>11d} {r['help_rate']:>6.3f} "
                     f"{r['empty'] or 0.0:>6.3f} {r['outside'] or 0.0:>8.3f}")  # fmt: skip
    return "\n".join(lines)
