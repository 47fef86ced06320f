"""`klbudget eval RUN`: evaluation episodes from a trained run, then every metric.

For each length L (default: the training length and twice it) the trained agent (at the
run's full budget) and the base model acting alone (budget 0) play fresh episodes, saved as
`RUN/eval/episodes_<policy>_L<L>.jsonl`; `klbudget.evaluation.summary.compute_all` then
recomputes every metric from the saved records into `RUN/eval/metrics.json`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from klbudget.agent.policy import Actor, Critic
from klbudget.agent.rollout import run_episode
from klbudget.agent.trainer import build_base, build_env, chat_format
from klbudget.base.protocol import BasePolicy
from klbudget.config import Config, load
from klbudget.evaluation.summary import compute_all
from klbudget.runs import folder as rf


def load_agent(run_dir: Path, cfg: Config, base: BasePolicy) -> tuple[Actor, Critic]:
    """Actor and critic from the newest checkpoint of a run."""
    stem = rf.latest_checkpoint(run_dir)
    if stem is None:
        raise rf.RunFolderError(f"{run_dir} has no checkpoint to evaluate")
    obs_dim = base.feature_dim + 2
    actor, critic = Actor(obs_dim, base.num_actions), Critic(obs_dim, cfg.agent.critic_hidden)
    rf.load_checkpoint(run_dir, stem, {"actor": actor, "critic": critic}, {}, {})
    return actor, critic


def _oracle(world: Path, base: BasePolicy, cfg: Config):
    from klbudget.world import TeacherTokenModel, load_world
    from klbudget.world.oracle import TauOracle

    if not (world / "world.json").is_file():
        raise rf.RunFolderError(f"{world} is not a world folder (no world.json)")
    tm = TeacherTokenModel(
        load_world(world).teacher, base.tokenizer, chat_format(cfg), base.vocab_size
    )
    return TauOracle(tm, base.num_actions)


def evaluate_run(
    run_dir: Path,
    *,
    episodes: int = 32,
    lengths: list[int] | None = None,
    seed: int = 12345,
    world: Path | None = None,
    progress: bool = True,
) -> dict:
    """Write evaluation episodes and `eval/metrics.json`; returns the metrics.

    With `world` (the folder the base model's demonstrations came from), τ plays too, every
    agent token carries the exact KL(π_t‖τ_t), and teacher turns are annotated with τ's
    support and behaviour class.
    """
    saved = run_dir / "config.toml"
    if not saved.is_file():
        raise rf.RunFolderError(f"{run_dir} is not a run folder (no config.toml)")
    cfg = load(saved)
    lengths = lengths or [cfg.env.length, 2 * cfg.env.length]
    base, demonstrator = build_base(cfg)
    actor, critic = load_agent(run_dir, cfg, base)
    oracle = _oracle(world, base, cfg) if world is not None else None
    out = run_dir / "eval"
    out.mkdir(exist_ok=True)
    policies = [("agent", cfg.budget.total), ("base", 0.0)]
    if oracle is not None:
        policies.append(("tau", 0.0))
    n_batches = math.ceil(episodes / cfg.env.n_envs)
    bar = tqdm(total=len(lengths) * len(policies) * n_batches, desc="eval", disable=not progress)
    for length in lengths:
        lcfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, length=length))
        env = build_env(lcfg, base=base, demonstrator=demonstrator)
        for policy, budget in policies:
            g = torch.Generator().manual_seed(seed)
            records = []
            for i in range(n_batches):
                ep = run_episode(
                    env, actor, critic, budget=budget, mode=cfg.budget.mode,  # type: ignore[arg-type]
                    budget_scale=max(cfg.budget.total, 1.0), generator=g, seed=seed + i,
                    policy=policy, teacher=oracle if policy == "tau" else None,
                    reference=oracle,
                )  # fmt: skip
                if oracle is not None:
                    for rec in ep.records:
                        oracle.annotate(rec)
                records += ep.records
                bar.update(1)
            for n, rec in enumerate(records[:episodes]):
                rec["episode"] = n
            path = out / f"episodes_{policy}_L{length}.jsonl"
            tmp = path.with_name(path.name + ".tmp")
            tmp.unlink(missing_ok=True)
            rf.append_jsonl(tmp, records[:episodes])
            os.replace(tmp, path)
    bar.close()
    return compute_all(run_dir)
