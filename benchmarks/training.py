"""Training throughput beside the model's own limit, measured in one run.

    python benchmarks/training.py --tiny 1m --batch 16 64
    python benchmarks/training.py --model models/imitator-... --batch 64 --heads full,embed
    python benchmarks/training.py --model models/smollm2 --batch 64 --heads embed --preset smollm2

For each batch size, in a fresh process (so that peak RSS belongs to that configuration):

  model alone   the same model, batched incremental decoding with a preallocated KV cache
                over the same positions: forward only, and forward + one inverse-CDF draw
                per row (what any sampler must at least do)
  rollout       `run_episode` with a budget agent (trained-looking head) in the chat of
                `--preset` (its format and turn caps): all tokens/s, share of wall time
                inside the model forward
  training      whole PPO updates (`Trainer.learn`: rollout + update, logging included,
                the settings of `--preset`): agent steps/s and all tokens/s end to end,
                and the update's share of the time

and the ratios of the rollout's and training's tokens/s (every writer's tokens, as the model
alone decodes every row) to the model alone, forward only and with sampling (1.0 would mean
the pipeline costs nothing beyond decoding). Medians over the timed repetitions.
"""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rollout import TimedBase, model_alone, model_args, parse_model_args, tiny_model  # noqa: E402


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rollout(
    model_dir: Path, batch: int, length: int, reps: int, head: str, name: str
) -> dict[str, float]:
    """Rollout rates of a budget agent whose head proposes something other than β, in the
    chat environment of preset ``name`` (its format, turn caps and student temperature)."""
    from klbudget.agent.actors import make_actor
    from klbudget.agent.policy import Critic
    from klbudget.agent.rollout import run_episode
    from klbudget.compose import build_base, build_env

    cfg = _config(model_dir, batch, length, 8192, head, name)
    built, demonstrator = build_base(cfg)  # the preset's base: kind, device, temperature
    base = TimedBase(built)
    env = build_env(cfg, base=base, demonstrator=demonstrator)
    d = base.feature_dim + 2
    torch.manual_seed(0)
    actor, critic = make_actor(d, base, head), Critic(d, 256)
    with torch.no_grad():  # a head that proposes something other than β
        (actor.z.weight if head == "full" else actor.proj.weight).normal_(0, 0.05)
    g = torch.Generator().manual_seed(0)
    agent, total, share = [], [], []
    for i in range(reps + 1):
        base.seconds = 0.0
        t0 = time.perf_counter()
        ep = run_episode(env, actor, critic, budget=10.0, mode="realized", budget_scale=10.0,
                         generator=g, seed=i)  # fmt: skip
        wall = time.perf_counter() - t0
        if i:  # the first is a warm-up
            agent.append(ep.agent_steps / wall)
            total.append(batch * (length - len(env.prompt_ids)) / wall)
            share.append(base.seconds / wall)
    return {
        "agent": statistics.median(agent),
        "total": statistics.median(total),
        "forward_share": statistics.median(share),
    }


def _config(model_dir: Path, batch: int, length: int, tokens: int, head: str, name: str):
    """Preset ``name`` on this model, batch, episode length and actor head, budget at once."""
    from klbudget.config import apply_overrides, preset

    sets = [f"model.path={model_dir}", f"env.n_envs={batch}", f"env.length={length}",
            f"ppo.tokens_per_update={tokens}", "train.total_agent_steps=100000000",
            "budget.ramp_fraction=0", f"agent.head={head}"]  # fmt: skip
    if name == "cpu":  # the figures in the README were measured with this minibatch
        sets.append("ppo.minibatch=1024")
    return apply_overrides(preset(name), sets).validate()


def training(
    model_dir: Path, batch: int, length: int, reps: int, tokens: int, head: str, name: str
) -> dict[str, float]:
    """End-to-end agent steps/s over whole PPO updates, and the update's share of the time."""
    from klbudget.agent.trainer import Trainer

    cfg = _config(model_dir, batch, length, tokens, head, name)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run", progress=False)
        collect, spent, written = trainer.collect, [], []
        env = trainer.env
        per_episode = env.n_envs * (env.length - len(env.prompt_ids))  # every token, any writer

        def timed_collect():
            t0 = time.perf_counter()
            out = collect()
            spent.append(time.perf_counter() - t0)
            written.append(len(out[0]) * per_episode)
            return out

        trainer.collect = timed_collect
        rows = []

        def callback(metrics: dict) -> bool:
            rows.append(metrics)
            return len(rows) < reps + 1

        trainer.learn(callback)
    # The first update is a warm-up. Each update's wall time covers rollout, update and logging.
    rates = [m["time/agent_steps_per_s"] for m in rows[1:]]
    walls = [b["time/wall_s"] - a["time/wall_s"] for a, b in zip(rows, rows[1:], strict=False)]
    shares = [1.0 - r / w for r, w in zip(spent[1:], walls, strict=True)]
    totals = [n / w for n, w in zip(written[1:], walls, strict=True)]
    return {"agent": statistics.median(rates), "total": statistics.median(totals),
            "update_share": statistics.median(shares)}  # fmt: skip


def one(
    model_dir: Path, batch: int, length: int, reps: int, tokens: int, head: str, name: str
) -> dict[str, object]:
    from klbudget.base.hf import load_local

    torch.set_num_threads(THREADS or torch.get_num_threads())
    alone = model_alone(model_dir, batch, length, reps)
    roll = rollout(model_dir, batch, length, reps, head, name)
    train = training(model_dir, batch, length, reps, tokens, head, name)
    params = sum(p.numel() for p in load_local(model_dir)[0].parameters())
    return {"alone": alone, "rollout": roll, "train": train, "peak_mb": _peak_mb(),
            "params_m": params / 1e6}  # fmt: skip


THREADS = 0


def _init(threads: int) -> None:
    global THREADS
    THREADS = threads


def main() -> None:
    p = model_args(__doc__, 256)
    p.add_argument("--reps", type=int, default=3, help="timed repetitions after a warm-up")
    p.add_argument("--tokens-per-update", type=int, default=8192)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--heads", default="full", help="comma-separated actor heads: full, embed")
    p.add_argument("--preset", default="cpu", help="the preset whose settings training runs")
    args = parse_model_args(p)
    from klbudget.config import ConfigError, preset

    try:
        preset(args.preset)
    except ConfigError as err:
        p.error(f"--preset: {err}")
    if unknown := set(args.heads.split(",")) - {"full", "embed"}:
        p.error(f"--heads: unknown heads {sorted(unknown)}; expected full, embed")
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        model = (
            Path(args.model)
            if args.model
            else tiny_model(args.tiny, Path(tmp) / "m", args.tokenizer_from)
        )
        name = args.model or f"random {args.tiny}"
        print(f"{name}, {args.length}-token episodes, {torch.get_num_threads()} threads")
        cols = [("head", 5), ("batch", 5), ("alone fwd", 10), ("alone+smp", 10), ("rollout", 8),
                ("/fwd", 5), ("/smp", 5), ("fwd share", 9), ("train agent", 11),
                ("train all", 9), ("/fwd", 5), ("/smp", 5), ("upd share", 9),
                ("peak MB", 8)]  # fmt: skip
        print(" ".join(f"{h:>{w}}" for h, w in cols))
        for head, b in [(h, b) for b in args.batch for h in args.heads.split(",")]:
            with ProcessPoolExecutor(1, mp_context=ctx, initializer=_init,
                                     initargs=(args.threads,)) as pool:  # fmt: skip
                r = pool.submit(one, model, b, args.length, args.reps, args.tokens_per_update,
                                head, args.preset).result()  # fmt: skip
            a, ro, tr = r["alone"], r["rollout"], r["train"]
            fwd, smp = a["forward"], a["sample"]
            print(
                f"{head:>5} {b:>5} {fwd:>10.0f} {smp:>10.0f} {ro['total']:>8.0f} "
                f"{ro['total'] / fwd:>5.2f} {ro['total'] / smp:>5.2f} "
                f"{100 * ro['forward_share']:>8.1f}% {tr['agent']:>11.0f} {tr['total']:>9.0f} "
                f"{tr['total'] / fwd:>5.2f} {tr['total'] / smp:>5.2f} "
                f"{100 * tr['update_share']:>8.1f}% {r['peak_mb']:>8.0f}",
                flush=True,
            )
        print(
            "alone, rollout, train all: tokens/s over all conversations (every writer); train "
            "agent: agent steps/s over whole updates; /fwd, /smp: against the model alone, "
            "forward only and with sampling"
        )


if __name__ == "__main__":
    main()
