"""Run configuration: one frozen dataclass per component, read from TOML.

A config file has one table per component (`[model]`, `[env]`, ...); every key maps 1:1
onto a field below and onto a CLI override `--set section.field=value`. Unknown keys and
values of the wrong type are errors (`ConfigError`, a one-line message), never ignored.
Presets live in `klbudget/presets/*.toml`; a file may start from one with
`preset = "cpu"` at the top level.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from klbudget.envs.format import DEFAULT_PROMPT


class ConfigError(ValueError):
    """A configuration file, key or value that cannot be used."""


@dataclass(frozen=True)
class ModelConfig:
    path: str = "models/smollm2"  # local Hugging Face model folder of the base model
    temperature: float = 1.0  # temperature of the base policy β the agent is held to
    device: str = "cpu"  # torch device for the base model and the agent
    threads: int = 0  # torch CPU threads (0: torch's default)


@dataclass(frozen=True)
class BaseConfig:
    kind: str = "single"  # "single" (model.path), "bayes" or "pessimistic" over an ensemble
    members: str = ""  # comma-separated folders of the other ensemble members (model.path is 0)
    world: str = ""  # world folder whose τ answers help steps (kind = "pessimistic")
    alpha: float = 0.05  # plausible set: members with posterior weight >= alpha
    demo_tokens: float = 200.0  # held-out teacher tokens of demonstration evidence in the prior
    help: str = "token"  # what τ writes for a help step: "token" or "turn" (the rest of it)
    update_on: str = "demonstrator"  # transcript evidence: "demonstrator" or every "teacher" token


@dataclass(frozen=True)
class EnvConfig:
    n_envs: int = 16  # conversations advanced in lockstep, one forward pass per token
    length: int = 128  # an episode ends when the transcript holds this many tokens
    student_temperature: float = 0.05  # the environment samples the student at this temperature
    max_reply_tokens: int = 48  # a student reply longer than this is handed back to the teacher
    prompt: str = DEFAULT_PROMPT  # fixed start of every transcript; ends with the teacher tag
    teacher_tag: str = "Teacher:"  # tag of the agent's turns
    student_tag: str = "Student:"  # tag of the environment's turns
    separator: str = "\n\n"  # between turns


@dataclass(frozen=True)
class RewardConfig:
    kind: str = "vader"  # "vader" (offline lexicon) or "hf" (a local text classifier)
    model_dir: str = ""  # classifier folder when kind = "hf"


@dataclass(frozen=True)
class AgentConfig:
    kind: str = "budget"  # "budget" (fixed-KL mixture and budget) or "penalty" ([penalty])
    critic_hidden: int = 256  # width of the critic MLP's two hidden layers
    kl_target_coef: float = 0.1  # weight of (KL(x‖β) − k)², which keeps k where it matters
    kl_target_grad: str = "scalar"  # what (KL − k)² trains: "scalar" (paper) or "both" (and z)
    head: str = "full"  # actor head: "full" (obs → every action) or "embed" (via the base's E)


@dataclass(frozen=True)
class PenaltyConfig:
    estimator: str = "k1"  # per-token KL estimate: "k1", "k2", "k3" or "exact" (klbudget.core.kl)
    where: str = "reward"  # "reward" (−λ·estimate in each agent step's reward) or "loss" (+λ·mean)
    coef: float = 0.05  # λ, the initial penalty coefficient
    target: float = 0.0  # per-episode KL target in nats; > 0 turns on the adaptive controller
    horizon: float = 10000.0  # adaptive controller's horizon, in episodes
    clip: float = 0.2  # adaptive controller's clip on its proportional error


@dataclass(frozen=True)
class BudgetConfig:
    total: float = 10.0  # per-episode KL budget B in nats
    mode: str = "realized"  # "realized" (paper: spend log x(a) − log β(a)) or "expected"
    ramp_fraction: float = 0.3  # share of training over which the budget ramps 0 → B


@dataclass(frozen=True)
class PPOConfig:
    clip: float = 0.1  # PPO ratio clip ε
    epochs: int = 8  # passes over each batch
    minibatch: int = 512  # agent steps per gradient step
    ent_coef: float = 1e-4  # entropy bonus of the played distribution
    max_grad_norm: float = 0.1  # gradient-norm clip
    actor_lr: float = 2e-5  # Adam learning rate of the actor head
    critic_lr: float = 1e-4  # Adam learning rate of the critic
    adam_eps: float = 1e-8  # Adam ε; larger values damp coordinates whose gradients are noise
    tokens_per_update: int = 8000  # agent tokens collected between updates


@dataclass(frozen=True)
class TrainConfig:
    total_agent_steps: int = 3_000_000  # agent tokens to train on
    seed: int = 0  # seeds torch, sampling and the environment
    checkpoint_every: int = 1  # save a checkpoint every this many updates
    keep_checkpoints: int = 2  # newest checkpoints kept on disk


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    penalty: PenaltyConfig = field(default_factory=PenaltyConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @property
    def digest(self) -> str:
        """Stable short hash of every field."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def validate(self) -> Config:
        """Check values a type cannot express; returns self."""
        checks = [
            (self.budget.mode in ("realized", "expected"), "budget.mode must be realized|expected"),
            (self.budget.total >= 0, "budget.total must be >= 0"),
            (0 <= self.budget.ramp_fraction <= 1, "budget.ramp_fraction must be in [0, 1]"),
            (self.env.n_envs >= 1, "env.n_envs must be >= 1"),
            (self.env.length >= 2, "env.length must be >= 2"),
            (self.env.max_reply_tokens >= 1, "env.max_reply_tokens must be >= 1"),
            (self.env.student_temperature > 0, "env.student_temperature must be > 0"),
            (self.model.temperature > 0, "model.temperature must be > 0"),
            (self.reward.kind in ("vader", "hf"), "reward.kind must be vader|hf"),
            (
                self.agent.kl_target_grad in ("scalar", "both"),
                "agent.kl_target_grad must be scalar|both",
            ),
            (self.agent.kind in ("budget", "penalty"), "agent.kind must be budget|penalty"),
            (self.agent.head in ("full", "embed"), "agent.head must be full|embed"),
            (
                self.penalty.estimator in ("k1", "k2", "k3", "exact"),
                "penalty.estimator must be k1|k2|k3|exact",
            ),
            (self.penalty.where in ("reward", "loss"), "penalty.where must be reward|loss"),
            (
                math.isfinite(self.penalty.coef) and self.penalty.coef >= 0,
                "penalty.coef must be finite and >= 0",
            ),
            (
                math.isfinite(self.penalty.target) and self.penalty.target >= 0,
                "penalty.target must be finite and >= 0",
            ),
            (
                math.isfinite(self.penalty.horizon) and self.penalty.horizon > 0,
                "penalty.horizon must be finite and > 0",
            ),
            (
                math.isfinite(self.penalty.clip) and self.penalty.clip > 0,
                "penalty.clip must be finite and > 0",
            ),
            (
                self.base.kind in ("single", "bayes", "pessimistic"),
                "base.kind must be single|bayes|pessimistic",
            ),
            (
                self.base.kind == "single" or bool(self.base.members.strip()),
                "base.members must name the other ensemble members when base.kind is not single",
            ),
            (
                self.base.kind != "pessimistic" or bool(self.base.world),
                "base.world must name a world folder when base.kind is pessimistic",
            ),
            (0 < self.base.alpha <= 1, "base.alpha must be in (0, 1]"),
            (self.base.demo_tokens >= 0, "base.demo_tokens must be >= 0"),
            (self.base.help in ("token", "turn"), "base.help must be token|turn"),
            (
                self.base.update_on in ("demonstrator", "teacher"),
                "base.update_on must be demonstrator|teacher",
            ),
            (self.ppo.epochs >= 1 and self.ppo.minibatch >= 1, "ppo.epochs, ppo.minibatch >= 1"),
            (self.ppo.tokens_per_update >= 1, "ppo.tokens_per_update must be >= 1"),
            (self.train.total_agent_steps >= 1, "train.total_agent_steps must be >= 1"),
            (self.train.checkpoint_every >= 1, "train.checkpoint_every must be >= 1"),
            (self.train.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1"),
            (
                self.env.prompt.endswith(self.env.teacher_tag),
                "env.prompt must end with teacher_tag",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        return self


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Check/convert a TOML or CLI value to the field's type."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str and isinstance(value, str):
        return value
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"{where}: expected {name}, got {value!r}")


_SECTIONS = {f.name: f for f in dataclasses.fields(Config)}


def _section_type(name: str) -> type:
    hints = typing.get_type_hints(Config)
    return hints[name]


def from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    """Overlay `data` ({section: {field: value}}) on `base` (defaults if None)."""
    cfg = base or Config()
    updates: dict[str, Any] = {}
    for section, values in data.items():
        if section not in _SECTIONS:
            raise ConfigError(f"unknown config section [{section}]; known: {', '.join(_SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table")
        sec_type = _section_type(section)
        hints = typing.get_type_hints(sec_type)
        current = getattr(cfg, section)
        changes = {}
        for key, value in values.items():
            if key not in hints:
                known = ", ".join(hints)
                raise ConfigError(f"unknown key {section}.{key}; known: {known}")
            changes[key] = _coerce(value, hints[key], f"{section}.{key}")
        updates[section] = dataclasses.replace(current, **changes)
    return dataclasses.replace(cfg, **updates)


def preset(name: str) -> Config:
    """A named preset from klbudget/presets/NAME.toml."""
    names = sorted(
        p.name[:-5]
        for p in resources.files("klbudget.presets").iterdir()
        if p.name.endswith(".toml")
    )
    if name not in names:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(names)}")
    data = tomllib.loads(resources.files("klbudget.presets").joinpath(f"{name}.toml").read_text())
    parent = data.pop("preset", None)
    return from_dict(data, preset(parent) if parent else None)


def load(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a TOML config (or the `cpu` preset when path is None) and apply overrides."""
    if path is None:
        cfg = preset("cpu")
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{p} is not valid TOML: {err}") from err
        base_name = data.pop("preset", None)
        base = preset(base_name) if base_name else Config()
        cfg = from_dict(data, base)
    cfg = apply_overrides(cfg, overrides or [])
    return cfg.validate()


def _parse_value(raw: str) -> Any:
    """A CLI value parsed as TOML where possible; bare words stay strings (paths, modes)."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `section.key=value` strings (values parsed as TOML where possible)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"bad override {item!r}; expected section.key=value")
        cfg = from_dict({section: {name: _parse_value(raw)}}, cfg)
    return cfg


def replace_fields(obj: Any, overrides: list[str], what: str) -> Any:
    """A frozen dataclass with `key=value` overrides applied (same parsing as `--set`)."""
    hints = typing.get_type_hints(type(obj))
    changes = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in hints:
            known = ", ".join(hints)
            raise ConfigError(f"bad {what} override {item!r}; keys: {known}")
        changes[key] = _coerce(_parse_value(raw), hints[key], f"{what}.{key}")
    return dataclasses.replace(obj, **changes)


def to_toml(cfg: Config) -> str:
    import tomli_w

    return tomli_w.dumps(cfg.to_dict())
