"""The README's Python examples run as written, and the API's pieces keep their promises:
several prompts are all used, the reward function pays the replies, bad input is refused."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import klbudget
from klbudget.config import ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("## From Python") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture
def in_tiny_project(tmp_path, fitted_tiny_model):
    """A working folder whose models/smollm2 is the tiny model."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "smollm2").symlink_to(fitted_tiny_model)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(cwd)


def test_readme_examples_run_as_written(in_tiny_project, capsys):
    blocks = _python_blocks()
    assert len(blocks) == 2
    scope: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), scope)  # noqa: S102
    run = in_tiny_project / "runs" / "questions"
    assert (run / "checkpoints" / "latest.json").is_file()
    assert (in_tiny_project / "runs" / "questions.html").is_file()
    agent = scope["metrics"]["eval"]["agent_L64"]
    assert agent["kl_to_base"]["exact_max"] <= 5.0 + 1e-6
    assert agent["kl_to_base"]["over_budget_frac"] == 0.0
    # The reward function paid the replies: every reward is 0 or 1 per reply.
    episodes = [json.loads(x) for x in (run / "episodes.jsonl").read_text().splitlines()]
    paid = [r for ep in episodes for _, r in ep["rewards"]]
    assert paid and set(paid) <= {0.0, 1.0}
    # Both prompts opened training episodes.
    starts = {"".join(t["text"] for t in ep["tokens"][:6]) for ep in episodes}
    assert any(s.startswith("Student: What") for s in starts), starts
    assert any(s.startswith("Student: Can") for s in starts), starts
    assert scope["out"].kl.shape == (4,) and (scope["out"].kl <= 2.0).all()
    printed = capsys.readouterr().out.split()
    assert float(printed[1]) <= 5.0 + 1e-6


def test_make_config_sets_and_checks_fields(fitted_tiny_model):
    cfg = klbudget.make_config(
        fitted_tiny_model, prompts=["Teacher:", "Student: Hi\n\nTeacher:"], budget=3.0,
        steps=500, settings={"env.length": 40},
    )  # fmt: skip
    assert cfg.env.prompt == "Teacher:" and cfg.env.prompts == ("Student: Hi\n\nTeacher:",)
    assert cfg.budget.total == 3.0 and cfg.env.length == 40
    assert cfg.ppo.tokens_per_update <= 500
    with pytest.raises(ConfigError, match=r"env.prompts\[0\]"):
        klbudget.make_config(fitted_tiny_model, prompts=["Teacher:", "no tag here"])
    with pytest.raises(ConfigError, match="must end as env.prompt does"):
        klbudget.make_config(fitted_tiny_model, prompts=["Teacher:", "Teacher: Do you"])
    with pytest.raises(ConfigError, match="at least one prompt"):
        klbudget.make_config(fitted_tiny_model, prompts=[])
    with pytest.raises(ConfigError, match="section.key"):
        klbudget.make_config(fitted_tiny_model, settings={"length": 3})
    with pytest.raises(ConfigError, match="budget.total"):
        klbudget.make_config(fitted_tiny_model, budget=-1.0)


@pytest.mark.parametrize(
    "bad", [lambda replies: [], lambda replies: [float("nan")] * len(replies)], ids=["count", "nan"]
)
def test_a_reward_that_returns_the_wrong_count_is_refused(tmp_path, fitted_tiny_model, bad):
    from klbudget.envs.chat import RewardError

    with pytest.raises(RewardError, match="one finite float per reply"):
        klbudget.train(
            fitted_tiny_model, reward=bad, out=tmp_path / "run", steps=64,
            prompts="Teacher:",
            settings={"env.length": 40, "env.n_envs": 4}, progress=False,
        )  # fmt: skip


def test_names_are_exported_lazily():
    import klbudget.report.html  # noqa: F401  (a subpackage must not shadow an API name)

    assert set(klbudget.__all__) <= set(dir(klbudget))
    assert all(callable(getattr(klbudget, name)) for name in klbudget.__all__)
    assert klbudget.load_config is klbudget.config.load
    with pytest.raises(AttributeError):
        klbudget.no_such_name  # noqa: B018
