"""The Python API: train a KL-budgeted agent, evaluate it, and write its report.

>>> import klbudget
>>> run = klbudget.train("models/smollm2", reward=my_reward, prompts=my_prompts,
...                      budget=5.0, steps=4096, out="runs/mine")      # doctest: +SKIP
>>> klbudget.evaluate(run, reward=my_reward)                          # doctest: +SKIP
>>> klbudget.write_report([run], "runs/mine.html")                    # doctest: +SKIP

The agent writes the teacher's turns of a chat whose student is the base model (at the
student temperature); `reward(replies)` pays each finished student reply, and the agent is
held within `budget` nats of the base on every episode (docs/design.md, "Invariants").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from klbudget import config as C
from klbudget.compose import RewardFn

__all__ = ["make_config", "train", "evaluate", "write_report"]


def make_config(
    model: str | Path,
    *,
    prompts: str | Sequence[str] | None = None,
    budget: float = 10.0,
    steps: int = 4096,
    seed: int = 0,
    preset: str = "cpu",
    settings: Mapping[str, Any] | None = None,
) -> C.Config:
    """A checked config: the preset with the model folder, the prompt(s), the per-episode
    budget (nats), the agent steps and the seed set; `settings` overrides any other field
    by its dotted name, e.g. ``{"env.length": 96, "ppo.actor_lr": 1e-3}``.

    Each prompt must end inside a teacher turn (with the teacher tag, by default
    ``"Teacher:"``); with several, each batch of episodes starts from one of them.
    """
    cfg = C.preset(preset)
    data: dict[str, dict[str, Any]] = {
        "model": {"path": str(model)},
        "budget": {"total": float(budget)},
        "train": {"total_agent_steps": int(steps), "seed": int(seed)},
    }
    if prompts is not None:
        listed = [prompts] if isinstance(prompts, str) else list(prompts)
        if not listed:
            raise C.ConfigError("prompts: give at least one prompt")
        data["env"] = {"prompt": listed[0], "prompts": tuple(listed[1:])}
    for key, value in (settings or {}).items():
        section, dot, name = key.partition(".")
        if not dot:
            raise C.ConfigError(f"settings key {key!r}: expected section.key")
        data.setdefault(section, {})[name] = value
    cfg = C.from_dict(data, cfg)
    if cfg.ppo.tokens_per_update > cfg.train.total_agent_steps:
        cfg = C.from_dict({"ppo": {"tokens_per_update": cfg.train.total_agent_steps}}, cfg)
    return cfg.validate()


def train(
    model: str | Path | C.Config,
    *,
    out: str | Path,
    reward: RewardFn | None = None,
    resume: bool = False,
    progress: bool = True,
    **config: Any,
) -> Path:
    """Train an agent against the base model in folder `model` (or as a whole `Config`),
    paid by `reward` (student replies in, one float each out; by default the config's
    sentiment reward), into the new run folder `out`; returns `out`. Keyword arguments
    other than these go to :func:`make_config`. ``resume=True`` continues the run in
    `out` from its newest checkpoint (the same `reward` must be given again)."""
    from klbudget.agent.trainer import Trainer
    from klbudget.compose import build_env

    out = Path(out)
    if resume:
        cfg = C.load(out / "config.toml")
    elif isinstance(model, C.Config):
        if config:
            raise TypeError("train: give a Config or make_config's arguments, not both")
        cfg = model.validate()
    else:
        cfg = make_config(model, **config)
    trainer = Trainer(cfg, out, resume=resume, progress=progress, env=build_env(cfg, reward=reward))
    trainer.learn()
    return out


def evaluate(
    run: str | Path,
    *,
    reward: RewardFn | None = None,
    episodes: int = 32,
    lengths: Sequence[int] | None = None,
    seed: int = 12345,
    progress: bool = True,
) -> dict:
    """Play the trained agent and the base alone on fresh episodes (at each of `lengths`,
    by default the training length and twice it), write `RUN/eval/`, and return the
    metrics (`eval/metrics.json`, as `klbudget.evaluation.summary` describes them)."""
    from klbudget.pipelines.evaluate import evaluate_run

    return evaluate_run(
        Path(run), episodes=episodes, lengths=list(lengths) if lengths else None, seed=seed,
        policies=("agent", "base"), progress=progress, reward=reward,
    )  # fmt: skip


def write_report(runs: Sequence[str | Path], out: str | Path) -> Path:
    """Write the HTML report of evaluated run folders to `out` (an .html file)."""
    from klbudget.report.html import build_report

    return build_report([Path(r) for r in runs], Path(out))
