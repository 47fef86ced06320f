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
import re
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from klbudget.envs.format import DEFAULT_PROMPT, prompt_problem


class ConfigError(ValueError):
    """A configuration file, key or value that cannot be used."""


@dataclass(frozen=True)
class ModelConfig:
    path: str = "models/smollm2"  # local Hugging Face model folder of the base model
    temperature: float = 1.0  # temperature of the base policy β the agent is held to
    device: str = "cpu"  # torch device for the base model and the agent
    threads: int = 0  # torch CPU threads (0: torch's default)
    # how the frozen model runs: float32, bfloat16, or int8 (its blocks' linear layers, dynamic
    # quantization); the KL is exact against the model as run (benchmarks/precision.py)
    precision: str = "float32"


@dataclass(frozen=True)
class BaseConfig:
    kind: str = "single"  # "single" (model.path), "bayes" or "pessimistic" over an ensemble
    # comma-separated folders of the other ensemble members (model.path is 0); "tau": τ itself
    members: str = ""
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
    max_turn_tokens: int = 0  # a teacher turn this long is handed to the student (0: no cap)
    prompt: str = DEFAULT_PROMPT  # fixed start of every transcript; ends with the teacher tag
    # more prompts: each batch of episodes starts from one of (prompt, *prompts), drawn with
    # the environment's seed; all must end the same way after their last teacher tag
    prompts: tuple[str, ...] = ()
    teacher_tag: str = "Teacher:"  # tag of the agent's turns
    student_tag: str = "Student:"  # tag of the environment's turns
    separator: str = "\n\n"  # between turns


@dataclass(frozen=True)
class RewardConfig:
    kind: str = "vader"  # "vader" (offline lexicon) or "hf" (a local text classifier)
    model_dir: str = ""  # classifier folder when kind = "hf"
    # "reply": every student reply pays (s + 1)/2, so more replies pay more (the paper's);
    # "mean": an episode pays the mean of its replies' pay (klbudget.envs.chat.REWARD_PER)
    per: str = "reply"


@dataclass(frozen=True)
class AgentConfig:
    kind: str = "budget"  # "budget" (fixed-KL mixture and budget) or "penalty" ([penalty])
    critic_hidden: int = 256  # width of the critic MLP's two hidden layers
    kl_target_coef: float = 0.1  # weight of (KL(x‖β) − k)², which keeps k where it matters
    kl_target_grad: str = "scalar"  # what (KL − k)² trains: "scalar" (paper) or "both" (and z)
    head: str = "full"  # actor head: "full" (obs → every action) or "embed" (via the base's E)
    # or "lora": the base LM itself with LoRA adapters (klbudget.agent.lora)
    lora_rank: int = 8  # rank of the adapters (head = lora)
    lora_alpha: float = 16.0  # their scale numerator: updates are scaled by alpha / rank


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
    # rows per forward/backward pass within a minibatch (the same gradient, summed over the
    # parts); 0: as many as keep one (rows, actions) float32 tensor within 24 MB
    microbatch: int = 0
    ent_coef: float = 1e-4  # entropy bonus of the played distribution
    max_grad_norm: float = 0.1  # gradient-norm clip
    actor_lr: float = 2e-5  # Adam learning rate of the actor head
    critic_lr: float = 1e-4  # Adam learning rate of the critic
    adam_eps: float = 1e-8  # Adam ε; larger values damp coordinates whose gradients are noise
    tokens_per_update: int = 8000  # agent tokens collected between updates
    gae_lambda: float = 1.0  # λ of the λ-return (1: the Monte-Carlo return, as in the paper)


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
        """Check every field against its declared range (:data:`RULES`) and the relations
        between fields; the first failure raises ConfigError naming the field, the value and
        what is allowed. Returns self."""
        for key, rule in RULES.items():
            section, name = key.split(".")
            problem = rule.check(getattr(getattr(self, section), name))
            if problem:
                value = getattr(getattr(self, section), name)
                raise ConfigError(f"{key} = {_show(value)}: {problem}")
        e = self.env
        relations = [
            (
                not (
                    problem := prompt_problem(e.prompt, e.teacher_tag, e.student_tag, e.separator)
                ),
                f"env.prompt: {problem}",
            ),  # fmt: skip
            *(
                (
                    not (problem := prompt_problem(p, e.teacher_tag, e.student_tag, e.separator)),
                    f"env.prompts[{i}]: {problem}",
                )
                for i, p in enumerate(e.prompts)
            ),
            (
                all(
                    _opening(p, e.teacher_tag) == _opening(e.prompt, e.teacher_tag)
                    for p in e.prompts
                ),
                "env.prompts: every prompt must end as env.prompt does after its last teacher "
                f"tag ({_opening(e.prompt, e.teacher_tag)!r})",
            ),  # fmt: skip
            (
                not e.prompts or not self.base.world,
                "env.prompts: several prompts need base.world unset (τ reads one prompt)",
            ),
            (
                self.env.teacher_tag != self.env.student_tag,
                "env.teacher_tag and env.student_tag must differ",
            ),
            (
                self.ppo.tokens_per_update <= self.train.total_agent_steps,
                f"ppo.tokens_per_update = {self.ppo.tokens_per_update}: must be at most "
                f"train.total_agent_steps ({self.train.total_agent_steps})",
            ),
            (
                self.base.kind == "single" or bool(self.base.members.strip()),
                "base.members must name the other ensemble members when base.kind is not single",
            ),
            (
                self.base.kind != "pessimistic" or bool(self.base.world),
                "base.world must name a world folder when base.kind is pessimistic",
            ),
            (
                self.reward.kind != "hf" or bool(self.reward.model_dir),
                "reward.model_dir is needed when reward.kind is hf",
            ),  # fmt: skip
        ]
        for ok, msg in relations:
            if not ok:
                raise ConfigError(msg)
        return self


def _opening(prompt: str, teacher_tag: str) -> str:
    """What a prompt writes after its last teacher tag (``ChatFormat.opening``)."""
    return prompt[prompt.rfind(teacher_tag) + len(teacher_tag) :] if teacher_tag in prompt else ""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Rule:
    """What one field allows: numbers in [lo, hi] (open ends with lo_open/hi_open), always
    finite; or one of `choices`; or a string (non-empty unless `empty`, matching `pattern`)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] = ()
    empty: bool = True
    pattern: str = ""

    def check(self, v: Any) -> str:
        """'' when `v` is allowed, else what is allowed."""
        if self.choices:
            return "" if v in self.choices else f"must be one of {'|'.join(self.choices)}"
        if isinstance(v, tuple):  # a list of strings: every entry by the same rule
            return next((f"entry {i}: {p}" for i, x in enumerate(v) if (p := self.check(x))), "")
        if isinstance(v, str):
            if not self.empty and not v:
                return "must not be empty"
            if self.pattern and not re.fullmatch(self.pattern, v):
                return f"must match {self.pattern}"
            return ""
        if not math.isfinite(v):
            return "must be a finite number"
        lo_bad = self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo)
        hi_bad = self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi)
        if lo_bad or hi_bad:
            left = "(" if self.lo_open else "["
            right = ")" if self.hi_open else "]"
            lo = "-inf" if self.lo is None else _bound(self.lo)
            hi = "inf" if self.hi is None else _bound(self.hi)
            return f"must be in {left}{lo}, {hi}{right}"
        return ""


def _bound(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def check_ranges(obj: Any, rules: dict[str, Rule], what: str) -> None:
    """ValueError naming the first field of the dataclass `obj` whose value its rule refuses
    ("world.seed = -1: must be in [0, 2.14748e+09]"); booleans need no rule."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, bool):
            continue
        problem = rules[f.name].check(value) if f.name in rules else "has no range rule"
        if problem:
            raise ValueError(f"{what}.{f.name} = {_show(value)}: {problem}")


SEED = Rule(lo=0, hi=2**31 - 1)  # what every seed of the package accepts


def _pos(hi: float | None = None) -> Rule:
    return Rule(lo=0.0, lo_open=True, hi=hi)


def _nonneg(hi: float | None = None) -> Rule:
    return Rule(lo=0.0, hi=hi)


def _count(lo: int = 1, hi: int | None = None) -> Rule:
    return Rule(lo=lo, hi=hi)


# One rule per field of Config (tests/core/test_config_ranges.py checks that none is missing).
RULES: dict[str, Rule] = {
    "model.path": Rule(empty=False),
    "model.temperature": _pos(1e3),
    "model.device": Rule(pattern=r"cpu|cuda(:\d+)?|mps"),
    "model.threads": _count(0, 1024),
    "model.precision": Rule(choices=("float32", "bfloat16", "int8")),
    "base.kind": Rule(choices=("single", "bayes", "pessimistic")),
    "base.members": Rule(),
    "base.world": Rule(),
    "base.alpha": Rule(lo=0.0, lo_open=True, hi=1.0),
    "base.demo_tokens": _nonneg(1e9),
    "base.help": Rule(choices=("token", "turn")),
    "base.update_on": Rule(choices=("demonstrator", "teacher")),
    "env.n_envs": _count(1, 65_536),
    "env.length": _count(2, 1_000_000),
    "env.student_temperature": _pos(1e3),
    "env.max_reply_tokens": _count(1, 1_000_000),
    "env.max_turn_tokens": _count(0, 1_000_000),
    "env.prompt": Rule(empty=False),
    "env.prompts": Rule(empty=False),
    "env.teacher_tag": Rule(empty=False),
    "env.student_tag": Rule(empty=False),
    "env.separator": Rule(),
    "reward.kind": Rule(choices=("vader", "hf")),
    "reward.model_dir": Rule(),
    "reward.per": Rule(choices=("reply", "mean")),
    "agent.kind": Rule(choices=("budget", "penalty")),
    "agent.critic_hidden": _count(1, 8192),
    "agent.kl_target_coef": _nonneg(1e6),
    "agent.kl_target_grad": Rule(choices=("scalar", "both")),
    "agent.head": Rule(choices=("full", "embed", "lora")),
    "agent.lora_rank": _count(1, 1024),
    "agent.lora_alpha": _pos(1e6),
    "penalty.estimator": Rule(choices=("k1", "k2", "k3", "exact")),
    "penalty.where": Rule(choices=("reward", "loss")),
    "penalty.coef": _nonneg(1e6),
    "penalty.target": _nonneg(1e9),
    "penalty.horizon": _pos(1e12),
    "penalty.clip": _pos(1e3),
    "budget.total": _nonneg(1e9),
    "budget.mode": Rule(choices=("realized", "expected")),
    "budget.ramp_fraction": _nonneg(1.0),
    "ppo.clip": _pos(10.0),
    "ppo.epochs": _count(1, 10_000),
    "ppo.minibatch": _count(1, 1_000_000_000),
    "ppo.microbatch": _count(0, 1_000_000_000),
    "ppo.ent_coef": _nonneg(1e6),
    "ppo.max_grad_norm": _pos(1e12),
    "ppo.actor_lr": _pos(1e3),
    "ppo.critic_lr": _pos(1e3),
    # 2.65e-79 made the first update NaN (tests/cli/test_config_ranges.py found it).
    "ppo.adam_eps": Rule(lo=1e-12, hi=1e3),
    "ppo.tokens_per_update": _count(1, 1_000_000_000),
    "ppo.gae_lambda": _nonneg(1.0),
    "train.total_agent_steps": _count(1, 10**15),
    # Episode seeds are train.seed * 1_000_003 + episode, and torch's generators take at most
    # 2**63 - 1: a seed of 1.8e13 overflowed (tests/cli/test_config_ranges.py found it).
    "train.seed": _count(0, 2**32 - 1),
    "train.checkpoint_every": _count(1, 10**9),
    "train.keep_checkpoints": _count(1, 10**6),
}


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
    elif typing.get_origin(typ) is tuple:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{where}: expected a list of strings, got {_show(value)}")
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


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """`cfg` with fields set by dotted name to typed values (``{"budget.total": 20.0}``):
    checked like a TOML file's, never parsed from text. Not validated: call `.validate()`."""
    data: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, dot, name = key.partition(".")
        if not dot or not name:
            raise ConfigError(f"bad field name {key!r}; expected section.key")
        data.setdefault(section, {})[name] = value
    return from_dict(data, cfg)


def replace_typed(obj: Any, values: dict[str, Any], what: str) -> Any:
    """A frozen dataclass with fields set to typed values (checked like a TOML file's)."""
    hints = typing.get_type_hints(type(obj))
    unknown = [k for k in values if k not in hints]
    if unknown:
        raise ConfigError(f"unknown {what} field {unknown[0]!r}; keys: {', '.join(hints)}")
    changes = {k: _coerce(v, hints[k], f"{what}.{k}") for k, v in values.items()}
    try:
        return dataclasses.replace(obj, **changes)
    except ValueError as err:  # the dataclass's own checks (__post_init__)
        raise ConfigError(f"bad {what} value: {err}") from err


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
    try:
        return dataclasses.replace(obj, **changes)
    except ValueError as err:  # the dataclass's own checks (__post_init__)
        raise ConfigError(f"bad {what} override: {err}") from err


def to_toml(cfg: Config) -> str:
    import tomli_w

    return tomli_w.dumps(cfg.to_dict())
