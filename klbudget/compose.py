"""The composition layer: a config turned into the parts of a run (docs/design.md, "Layers").

The base policy (one model, or an ensemble with τ's help), the chat format, and the
environment with its reward. The trainer, the evaluator, the pipelines and the benchmarks
get their parts here and build none themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from klbudget.base.hf import HFBase
from klbudget.base.protocol import BasePolicy
from klbudget.config import Config, ConfigError
from klbudget.envs.chat import ChatEnv
from klbudget.envs.format import ChatFormat
from klbudget.rewards.sentiment import make_sentiment

Demonstrator = Callable[[ChatEnv, int], list[int]]  # help: the tokens τ writes
RewardFn = Callable[[Sequence[str]], Sequence[float]]  # student replies → one reward each


def chat_format(cfg: Config) -> ChatFormat:
    e = cfg.env
    return ChatFormat(
        teacher_tag=e.teacher_tag, student_tag=e.student_tag, separator=e.separator, prompt=e.prompt
    )


def build_base(cfg: Config) -> tuple[BasePolicy, Demonstrator | None]:
    """The base policy a config describes, and τ as demonstrator when it has a help action.

    `base.kind = "single"` is model.path alone; "bayes" and "pessimistic" are
    `klbudget.base.ensemble.EnsembleBase` over model.path (member 0: the student and the
    agent's features) and base.members, with the prior from each member's held-out log-loss
    (its imitator.json) tempered by base.demo_tokens.
    """
    m, b = cfg.model, cfg.base
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(m.device.split(":")[0], True):
        raise ConfigError(f"model.device = {m.device!r}: no such device on this machine")
    first = HFBase(m.path, temperature=m.temperature, device=m.device, precision=m.precision)
    if b.kind == "single":
        return first, None
    from klbudget.base.ensemble import EnsembleBase, demo_log_prior
    from klbudget.world.oracle import TauBase, TauOracle

    paths = [m.path] + [p.strip() for p in b.members.split(",") if p.strip()]
    tm = teacher_model(cfg, first) if b.kind == "pessimistic" or TAU_MEMBER in paths else None
    members: list = [first]
    for p in paths[1:]:
        members.append(
            TauBase(tm, max_length=first.max_length) if p == TAU_MEMBER
            else HFBase(p, temperature=m.temperature, device=m.device, precision=m.precision)
        )  # fmt: skip
    vocab = first.tokenizer.get_vocab()
    for p, member in zip(paths[1:], members[1:], strict=True):
        if p != TAU_MEMBER and member.tokenizer.get_vocab() != vocab:
            raise ConfigError(f"base member {p} has a different tokenizer from {m.path}")
    losses = [0.0] * len(paths)
    if b.demo_tokens > 0:
        # τ's own held-out log-loss is its entropy, which member 0's report records.
        tau = heldout_logloss(Path(m.path), "tau_teacher_logloss")
        losses = [tau if p == TAU_MEMBER else heldout_logloss(Path(p)) for p in paths]
    try:
        base = EnsembleBase(
            members, kind=b.kind, log_prior=demo_log_prior(losses, b.demo_tokens),
            alpha=b.alpha, update_on=b.update_on,
        )  # fmt: skip
    except ValueError as err:
        raise ConfigError(f"base: {err}") from err
    if b.kind != "pessimistic":
        return base, None
    oracle = TauOracle(tm, base.num_actions, help_mode=b.help)
    return base, oracle.help


# In base.members: τ itself (klbudget.world.oracle.TauBase), the realizable model class of
# the paper's guarantee (τ ∈ M^α gives ν_α ≤ τ).
TAU_MEMBER = "tau"


def teacher_model(cfg: Config, first: HFBase):
    """τ's token-level model of base.world in member 0's tokens and the run's chat format:
    for the help demonstrator and for τ as a member, built once."""
    from klbudget.world import TeacherTokenModel, load_world

    world = Path(cfg.base.world)
    if not (world / "world.json").is_file():
        raise ConfigError(f"base.world: {world} is not a world folder (no world.json)")
    return TeacherTokenModel(
        load_world(world).teacher, first.tokenizer, chat_format(cfg), first.vocab_size
    )


def heldout_logloss(folder: Path, key: str = "imitator_teacher_logloss") -> float:
    """A member's held-out log-loss on teacher tokens, from its imitator.json."""
    from klbudget.world import read_report

    try:
        return float(read_report(folder)["heldout"][key])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"base member {folder} has no held-out log-loss in imitator.json; "
            "set base.demo_tokens=0 for a uniform prior"
        ) from err


def build_env(
    cfg: Config,
    base: BasePolicy | None = None,
    n_envs: int | None = None,
    demonstrator: Demonstrator | None = None,
    reward: RewardFn | None = None,
) -> ChatEnv:
    """The chat environment a config describes (builds the base policy unless given). A
    `reward` function (replies in, one float each out) is paid instead of the config's
    sentiment reward."""
    if cfg.model.threads > 0:
        torch.set_num_threads(cfg.model.threads)
    if base is None:
        base, demonstrator = build_base(cfg)
    try:
        return ChatEnv(
            base,
            base.tokenizer,  # type: ignore[attr-defined]
            None if reward is not None else make_sentiment(cfg.reward.kind, cfg.reward.model_dir),
            n_envs=n_envs or cfg.env.n_envs,
            length=cfg.env.length,
            chat=chat_format(cfg),
            student_temperature=cfg.env.student_temperature,
            max_reply_tokens=cfg.env.max_reply_tokens,
            max_turn_tokens=cfg.env.max_turn_tokens,
            device=cfg.model.device,
            demonstrator=demonstrator,
            prompts=cfg.env.prompts,
            reward=reward,
            reward_per=cfg.reward.per,
        )
    except ValueError as err:  # the relations a config cannot check without the model
        raise ConfigError(str(err)) from err
