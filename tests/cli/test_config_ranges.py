"""Every config field has a declared range; any value either trains with finite records or
is refused with one line and exit 2 (never a traceback, never a NaN in the records)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from klbudget.cli import EXIT_BAD_INPUT, main
from klbudget.config import RULES, Config, ConfigError, from_dict

pytestmark = pytest.mark.slow


def test_every_field_has_a_rule():
    cfg = Config()
    fields = {
        f"{section.name}.{f.name}"
        for section in dataclasses.fields(cfg)
        for f in dataclasses.fields(getattr(cfg, section.name))
    }
    assert fields == set(RULES)


@pytest.mark.parametrize(
    "section,key,value,needle",
    [
        ("budget", "total", math.inf, "budget.total = inf: must be a finite number"),
        ("ppo", "clip", -1.0, "ppo.clip = -1.0: must be in (0, 10]"),
        ("ppo", "adam_eps", 2.65e-79, "ppo.adam_eps = 2.65e-79: must be in [1e-12, 1000]"),
        ("base", "alpha", 0.0, "base.alpha = 0.0: must be in (0, 1]"),
        ("train", "seed", -1, "train.seed = -1: must be in [0, "),
        ("train", "seed", 18_446_688_733_644, "train.seed = 18446688733644: must be in [0, "),
        ("agent", "head", "wide", "agent.head = 'wide': must be one of full|embed"),
        ("model", "device", "gpu", "model.device = 'gpu': must match"),
        ("env", "teacher_tag", "", "env.teacher_tag = '': must not be empty"),
    ],
)
def test_one_line_names_field_value_and_range(section, key, value, needle):
    with pytest.raises(ConfigError) as err:
        from_dict({section: {key: value}}).validate()
    assert needle in str(err.value) and "\n" not in str(err.value)


CONFIG = """preset = "cpu"
[model]
path = "{model}"
[env]
prompt = "Student: Hi!\\n\\nTeacher:"
n_envs = 2
length = 30
[ppo]
tokens_per_update = 24
minibatch = 16
epochs = 1
[train]
total_agent_steps = 48
"""

VALUES = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "", "abc", "true", "1e400", "-0"]),
    st.floats(min_value=-1e3, max_value=1e3, allow_nan=False),
    st.integers(min_value=-3, max_value=48),
    st.integers(min_value=10**12, max_value=10**30),
)


def refuse(token: str):
    pytest.fail(f"non-strict JSON token {token} in the records")


# Each draw is a short training run (~1 s). The default profile (tests/conftest.py) draws the
# same 40 on every run; HYPOTHESIS_PROFILE=explore draws 400 new ones.
EXPLORE = os.environ.get("HYPOTHESIS_PROFILE") == "explore"


@settings(
    max_examples=400 if EXPLORE else 40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(field=st.sampled_from(sorted(RULES)), value=VALUES)
def test_any_value_trains_or_exits_2_with_one_line(tiny_model, field, value):
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "run.toml"
        cfg.write_text(CONFIG.format(model=tiny_model))
        out = Path(tmp) / "run"
        err = io.StringIO()
        with contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rc = main(["train", "--config", str(cfg), "--out", str(out), "--no-progress",
                       "--set", f"{field}={value}"])  # fmt: skip
        assert rc in (0, EXIT_BAD_INPUT), (field, value, rc, err.getvalue())
        if rc == EXIT_BAD_INPUT:
            lines = err.getvalue().strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("klbudget: error:"), lines
            assert not (out / "metrics.jsonl").exists()  # refused before anything was written
            return
        for name in ("metrics.jsonl", "episodes.jsonl"):
            for line in (out / name).read_text().splitlines():
                row = json.loads(line, parse_constant=refuse)
                if name == "metrics.jsonl":
                    bad = {k: v for k, v in row.items() if v is None or v in ("inf", "-inf")}
                    assert not bad, (field, value, bad)


@pytest.mark.parametrize("name", ["cpu", "demo", "paper", "frontier", "frontier_long", "smollm2"])
def test_every_preset_is_valid(name):
    from klbudget.config import preset

    cfg = preset(name).validate()
    assert cfg.env.prompt.endswith(cfg.env.teacher_tag)


def test_smollm2_preset_speaks_the_model_chat_format():
    from klbudget.compose import chat_format
    from klbudget.config import preset

    fmt = chat_format(preset("smollm2"))
    assert fmt.to_student == "<|im_end|>\n<|im_start|>user\n"
    assert fmt.to_teacher == "<|im_end|>\n<|im_start|>assistant\n"
    assert fmt.is_empty_teacher_turn(fmt.to_student)
    assert preset("smollm2").agent.head == "embed"
