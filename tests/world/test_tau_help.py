"""τ answering help steps in the chat environment: one in-support token, or, after a prefix
τ could never write, a whole turn of its own (so help never yields an empty turn)."""

from __future__ import annotations

import torch

from klbudget.base.hf import HFBase
from klbudget.envs.chat import ChatEnv
from klbudget.world.oracle import TauOracle
from klbudget.world.token_model import TeacherTokenModel


def test_help_token_and_off_support_fallback(small_world, tiny_folder) -> None:
    base = HFBase(tiny_folder)
    tm = TeacherTokenModel(small_world.teacher, base.tokenizer, small_world.fmt, base.vocab_size)
    oracle = TauOracle(tm, base.num_actions)
    env = ChatEnv(base, base.tokenizer, lambda texts: [0.0] * len(texts), n_envs=1,
                  length=120, chat=small_world.fmt)  # fmt: skip
    env.reset(seed=0)
    # At the start of a turn, help is one token that τ could write there.
    for _ in range(20):
        (v,) = oracle.help(env, 0)
        assert tm.prefix_in_support([], [v])
    # After a first token no τ turn starts with, help is a whole τ turn.
    off = next(v for v in range(base.vocab_size) if not tm.prefix_in_support([], [v]))
    env.step(torch.tensor([off]))
    seq = oracle.help(env, 0)
    assert tm.is_complete(seq)
    for tok in seq:
        env.step(torch.tensor([tok]))
    assert len(env.teacher_turns[0]) == 1
    content = env.teacher_turns[0][0]
    whole = tm.tokenizer.decode(seq)
    assert content and tm.tau.in_support(tm.fmt.teacher_content(whole))
    assert content.endswith(tm.fmt.teacher_content(whole))


def test_annotation_marks_student_replies_in_taus_pool(small_world, tiny_folder) -> None:
    """A student reply that is word for word a teacher turn τ could write is marked
    `tau_pool` (the roles swapped); any other reply is not."""
    base = HFBase(tiny_folder)
    tm = TeacherTokenModel(small_world.teacher, base.tokenizer, small_world.fmt, base.vocab_size)
    oracle = TauOracle(tm, base.num_actions)
    fmt = small_world.fmt
    line = small_world.teacher.content(0, 3)
    assert small_world.teacher.in_support(line)

    def tok(text, speaker):
        return {"text": text, "speaker": speaker}

    record = {"tokens": [
        tok(fmt.prompt, "prompt"),
        tok(fmt.separator, "agent"), tok(fmt.student_tag, "env"),  # an empty teacher turn
        tok(f" {line}{fmt.to_teacher}", "env"),  # the student speaks τ's line
        tok(" Fine.", "agent"), tok(fmt.to_student, "agent"),
        tok(f" zzq qqz{fmt.to_teacher}", "env"),
    ]}  # fmt: skip
    oracle.annotate(record)
    students = [n for n in record["turns"] if n["speaker"] == "student"]
    assert [n["tau_pool"] for n in students] == [True, False]
    assert [n["empty"] for n in record["turns"] if n["speaker"] == "teacher"] == [True, False]
