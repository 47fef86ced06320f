"""`klbudget eval RUN`: evaluation episodes from a trained run, then every metric.

For each length L (default: the training length and twice it) the trained agent (at the
run's full budget) and the base model acting alone (budget 0) play fresh episodes, saved as
`RUN/eval/episodes_<policy>_L<L>.jsonl`; `klbudget.evaluation.summary.compute_all` then
recomputes every metric from the saved records into `RUN/eval/metrics.json`.

A KL-penalty run (`agent.kind = "penalty"`) has no budget: its agent plays at budget +inf
(records carry `"budget": Infinity`, nothing is spent, its observation sees budget_left 0),
and the base policy's episodes are played by a budget agent at budget 0, i.e. β exactly.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from klbudget.agent.actors import make_actor
from klbudget.agent.policy import Actor, Critic, budget_input, observation
from klbudget.agent.rollout import played_tokens, run_episode
from klbudget.base.protocol import WRITER_DEMONSTRATOR, WRITER_ENV, BasePolicy, help_action
from klbudget.compose import RewardFn, build_base, build_env, chat_format
from klbudget.config import Config, load
from klbudget.core.budget import spend
from klbudget.evaluation.summary import compute_all
from klbudget.runs import folder as rf
from klbudget.world.token_model import TeacherTokenModel


def load_agent(run_dir: Path, cfg: Config, base: BasePolicy) -> tuple[Actor, Critic]:
    """Actor and critic from the newest checkpoint of a run (a budget or a KL-penalty
    actor, as the run's `agent.kind` says)."""
    stem = rf.latest_checkpoint(run_dir)
    if stem is None:
        raise rf.RunFolderError(f"{run_dir} has no checkpoint to evaluate")
    obs_dim = base.feature_dim + 2
    actor = make_actor(obs_dim, base, cfg.agent.head, mixture=cfg.agent.kind != "penalty",
                       lora_rank=cfg.agent.lora_rank, lora_alpha=cfg.agent.lora_alpha)  # fmt: skip
    critic = Critic(obs_dim, cfg.agent.critic_hidden)
    rf.load_checkpoint(run_dir, stem, {"actor": actor, "critic": critic}, {}, {})
    return actor, critic


def tau_oracle(world: Path, base: BasePolicy, cfg: Config):
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
    heldout: int = 32,
    policies: tuple[str, ...] = ("agent", "base", "tau"),
    progress: bool = True,
    reward: RewardFn | None = None,
) -> dict:
    """Write evaluation episodes and `eval/metrics.json`; returns the metrics.

    With `world` (the folder the base model's demonstrations came from), τ plays too, every
    agent token carries the exact KL(π_t‖τ_t), teacher turns are annotated with τ's
    support and behaviour class, and `heldout` of the world's held-out demonstrations are
    scored teacher-forced for the calibration loss (`eval/heldout_<policy>.jsonl`).
    `policies` chooses who plays ("agent", "base", "tau"; τ only with a world). A `reward`
    function pays the student's replies instead of the config's sentiment reward.
    """
    saved = run_dir / "config.toml"
    if not saved.is_file():
        raise rf.RunFolderError(f"{run_dir} is not a run folder (no config.toml)")
    cfg = load(saved)
    lengths = lengths or [cfg.env.length, 2 * cfg.env.length]
    base, demonstrator = build_base(cfg)
    actor, critic = load_agent(run_dir, cfg, base)
    oracle = tau_oracle(world, base, cfg) if world is not None else None
    out = run_dir / "eval"
    out.mkdir(exist_ok=True)
    # A penalty agent has no budget (+inf); β alone is a budget agent at budget 0.
    agent_budget = cfg.budget.total if actor.mixture else math.inf
    # (A LoRA actor at budget 0 plays β too, but would run its LM for nothing.)
    plain = actor.mixture and actor.head != "lora"
    base_actor = actor if plain else Actor(base.feature_dim + 2, base.num_actions)
    unknown = set(policies) - {"agent", "base", "tau"}
    if unknown:
        raise ValueError(f"unknown policies {sorted(unknown)}; known: agent, base, tau")
    players = [("agent", actor, agent_budget), ("base", base_actor, 0.0)]
    if oracle is not None:
        players.append(("tau", base_actor, 0.0))
    players = [p for p in players if p[0] in policies]
    n_batches = math.ceil(episodes / cfg.env.n_envs)
    bar = tqdm(total=len(lengths) * len(players) * n_batches, desc="eval", disable=not progress)
    for length in lengths:
        lcfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, length=length))
        env = build_env(lcfg, base=base, demonstrator=demonstrator, reward=reward)
        for policy, player, budget in players:
            g = torch.Generator().manual_seed(seed)
            records = []
            for i in range(n_batches):
                ep = run_episode(
                    env, player, critic, budget=budget, mode=cfg.budget.mode,  # type: ignore[arg-type]
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
            _replace_jsonl(out / f"episodes_{policy}_L{length}.jsonl", records[:episodes])
    bar.close()
    if oracle is not None:
        held = heldout_logprobs(cfg, base, actor, oracle.tm, world, heldout)
        for policy, recs in held.items():
            if policy not in policies:
                continue
            _replace_jsonl(out / f"heldout_{policy}.jsonl", recs)
    return compute_all(run_dir)


def _replace_jsonl(path: Path, records: list[dict]) -> None:
    """Write `records` to `path` as JSONL, replacing it atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    rf.append_jsonl(tmp, records)
    os.replace(tmp, path)


@torch.no_grad()
def heldout_logprobs(
    cfg: Config,
    base: BasePolicy,
    actor: Actor,
    tm: TeacherTokenModel,
    world: Path,
    n_transcripts: int,
) -> dict[str, list[dict]]:
    """Teacher-forced log-probabilities of the teacher tokens of held-out demonstrations.

    For the agent (at the run's full budget, spent along the transcript as in an episode),
    for the base acting alone and for τ itself. Transcripts are cut at the training length.
    With a help action the probability of token v is x_v + x_help·τ_v (τ writes it), and
    the demonstrator's tokens are reported to the base as evidence (they are τ's).
    """
    from klbudget.world.corpus import load_split, record_turns
    from klbudget.world.tokenizer import encode, transcript_pieces

    fmt = chat_format(cfg)
    tok = base.tokenizer  # type: ignore[attr-defined]
    length = cfg.env.length
    help_v = help_action(base)
    observe = getattr(base, "observe", None)
    rows = []  # (ids, [(position, history, prefix)] for teacher tokens)
    for rec in load_split(world, "heldout")[:n_transcripts]:
        turns = record_turns(rec)
        pieces = [encode(tok, p) for p in transcript_pieces(fmt, turns)]
        ids = [t for p in pieces for t in p][:length]
        teacher, pos = [], len(pieces[0])
        for i, ((speaker, _), piece) in enumerate(zip(turns, pieces[1:], strict=True)):
            for j in range(len(piece)):
                if speaker == "teacher" and pos < len(ids):
                    teacher.append((pos, turns[:i], piece[:j]))
                pos += 1
        rows.append((ids, teacher))
    out: dict[str, list[dict]] = {"agent": [], "base": [], "tau": []}
    scale = max(cfg.budget.total, 1.0)
    eos = tok.eos_token_id if tok.eos_token_id is not None else 0
    for b0 in range(0, len(rows), cfg.env.n_envs):
        batch = rows[b0 : b0 + cfg.env.n_envs]
        n, width = len(batch), max(len(ids) for ids, _ in batch)
        x = torch.full((n, width), eos, dtype=torch.long)
        for r, (ids, _) in enumerate(batch):
            x[r, : len(ids)] = torch.tensor(ids)
        where = {(r, p): (h, y) for r, (_, tt) in enumerate(batch) for p, h, y in tt}
        t0 = min(p for _, tt in batch for p, _, _ in tt) if where else width
        step = base.reset(x[:, :t0], capacity=width)
        left = budget_input(actor, torch.full((n,), float(cfg.budget.total)))
        logs: dict[str, list[list[float]]] = {k: [[] for _ in range(n)] for k in out}
        for t in range(t0, width):
            rs = [r for r in range(n) if (r, t) in where]
            if rs:
                ri = torch.tensor(rs)
                v = x[ri, t]
                log_tau = torch.stack([
                    tm.next_token_logprobs(*where[(r, t)])[: base.vocab_size] for r in rs
                ]).float()  # fmt: skip
                o = observation(step.features[ri], torch.full((len(rs),), t / length),
                                left[ri], scale)  # fmt: skip
                played = actor(o, step.logp[ri], left[ri])
                for name, log_x in (("agent", played.log_x), ("base", step.logp[ri])):
                    log_x = played_tokens(log_x, log_tau, help_v)
                    for k, r in enumerate(rs):
                        logs[name][r].append(float(log_x[k, v[k]]))
                for k, r in enumerate(rs):
                    logs["tau"][r].append(float(log_tau[k, v[k]]))
                ratio = played.log_x.gather(-1, v[:, None]).squeeze(-1)
                ratio = ratio - step.logp[ri].gather(-1, v[:, None]).squeeze(-1)
                active = torch.full((len(rs),), actor.mixture, dtype=torch.bool)
                mode = cfg.budget.mode
                left[ri] = spend(left[ri], mode=mode, log_ratio=ratio, kl=played.kl, active=active)  # type: ignore[arg-type]
            if t + 1 < width:
                if observe is not None:
                    writers = torch.full((n,), WRITER_ENV)
                    for r in rs:
                        writers[r] = WRITER_DEMONSTRATOR
                    observe(writers)
                step = base.step(x[:, t])
        for name, per_row in logs.items():
            for r, lps in enumerate(per_row):
                out[name].append({
                    "transcript": b0 + r, "n": len(lps),
                    "teacher_logp": [lp if math.isfinite(lp) else None for lp in lps],
                })  # fmt: skip
    return out
