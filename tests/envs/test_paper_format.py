"""The paper's transcript format: a prompt that ends inside the teacher's first turn
("Teacher: Do you"), whose words belong to that turn, so that handing over at once is a
short turn, not an empty one."""

from __future__ import annotations

import json

import pytest
import torch

from klbudget.compose import build_env
from klbudget.config import ConfigError, apply_overrides, preset
from klbudget.envs.chat import SPEAKERS
from klbudget.envs.format import ChatFormat
from klbudget.evaluation.metrics import empty_turn_fraction
from klbudget.evaluation.records import Episode, Token, split_turns

PAPER = preset("paper_smollm2").env.prompt


def test_the_paper_prompt_opens_the_first_teacher_turn():
    fmt = ChatFormat(prompt=PAPER)
    assert PAPER.endswith("Teacher: Do you")
    assert fmt.opening == " Do you"
    assert ChatFormat().opening == ""
    # The first turn's content is the opening and what follows it.
    turns = fmt.split_turns(PAPER + " like it?\n\nStudent: No.\n\nTeacher:\n\nStudent:")
    assert turns[0] == ("teacher", "Do you like it?")
    assert turns[2] == ("teacher", "")  # the second teacher turn is empty
    with pytest.raises(ValueError, match="ends with the teacher tag"):
        fmt.render([("teacher", "hi")])


@pytest.mark.parametrize(
    "prompt",
    [
        "Student: hi\n\nTeacher: Do you\n\n",  # the teacher turn is over
        "Teacher: Yes.\n\nStudent: No",  # the last turn is the student's
        "Student: hi",  # no teacher tag at all
    ],
)
def test_a_prompt_that_does_not_end_in_a_teacher_turn_is_refused(prompt):
    with pytest.raises(ValueError, match="teacher"):
        ChatFormat(prompt=prompt)
    cfg = apply_overrides(preset("cpu"), [f"env.prompt={json.dumps(prompt)}"])
    with pytest.raises(ConfigError, match="env.prompt"):
        cfg.validate()


def _paper_cfg(model, length=360):
    return apply_overrides(preset("paper_smollm2"), [
        f"model.path={model}", "env.n_envs=2", f"env.length={length}",
    ]).validate()  # fmt: skip


def test_handing_over_at_once_is_not_an_empty_turn_but_the_next_one_is(tiny_model):
    """In the environment and in the records the metrics read: the first turn keeps the
    prompt's "Do you"; a later hand-over with nothing before it is empty."""
    env = build_env(_paper_cfg(tiny_model))
    sep = env.text.encode(env.chat.separator)
    env.reset(seed=0)
    while env.t < env.length:  # the agent hands over at once, every turn
        env.step(torch.full((env.n_envs,), sep[0], dtype=torch.long))
    assert env.teacher_turns[0][:3] == ["Do you", "", ""]
    ids = env.ids[0].tolist()
    kinds = [SPEAKERS[k] for k in env.speaker[0].tolist()]
    tokens = tuple(Token(i, env.text[i], k, 0.0, 0.0) for i, k in zip(ids, kinds, strict=True))
    episode = Episode(0, "agent", env.length, 0.0, 0.0, (), tokens, None)
    teacher = [t for t in split_turns(episode, env.chat) if t.speaker == "teacher"]
    assert [t.empty for t in teacher[:3]] == [False, True, True]
    # The metric the report shows: one short turn, then empty ones.
    done = [t for t in teacher if t.completed]
    assert empty_turn_fraction(episode, env.chat) == pytest.approx((len(done) - 1) / len(done))
