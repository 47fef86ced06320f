"""The empty-turn prior (klbudget.pipelines.prior): each cost is the base's own teacher-forced
−log-probability of the empty turn's tokens in the transcript the environment wrote, and the
command refuses bad input with one line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

from klbudget.base.hf import HFBase
from klbudget.compose import chat_format
from klbudget.config import apply_overrides, preset
from klbudget.envs.format import ChatFormat
from klbudget.pipelines.prior import empty_turn_costs
from klbudget.world.corpus import load_world


def test_costs_match_teacher_forced_scores(tiny_folder, small_dir) -> None:
    cfg = apply_overrides(preset("demo"), [f"model.path={tiny_folder}", "env.length=120"])
    res = empty_turn_costs(cfg, episodes=3, turns=3, first_tau=1, world=small_dir, seed=5)
    base = HFBase(tiny_folder)
    fmt = chat_format(cfg)  # the demo preset's speakers
    empty = base.tokenizer(fmt.to_student, add_special_tokens=False)["input_ids"]
    sep = len(base.tokenizer("\n\n", add_special_tokens=False)["input_ids"])  # the agent's part
    logp = base.score(torch.tensor(res.ids)).numpy()  # (E, T-1): log p(x_t | x_<t) at t-1
    checked = 0
    for e in range(3):
        for n in range(3):
            s = res.starts[e, n]
            if s < 0 or not np.isfinite(res.costs[e, n]):
                continue
            # An empty turn written at the end of the episode is whole (the agent wrote its
            # separator) though the hand-over after it does not fit.
            got = res.ids[e, s : s + len(empty)].tolist()
            assert len(got) >= sep and got == empty[: len(got)]
            expected = -logp[e, s - 1 : s - 1 + sep].sum()
            assert abs(res.costs[e, n] - expected) < 1e-3
            checked += 1
    assert checked >= 3
    # τ wrote the first teacher turn (in its support), the next ones are empty.
    world = load_world(small_dir)
    turns = fmt.split_turns(base.tokenizer.decode(res.ids[0].tolist()))
    teacher = [c for speaker, c in turns if speaker == "teacher"]
    assert world.teacher.in_support(teacher[0])
    assert len(teacher) >= 2 and all(c == "" for c in teacher[1:])
    assert [r["n"] for r in res.summary()][:1] == [1]


def test_prior_command_bad_input(tiny_folder, small_dir, tmp_path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "klbudget.cli", "base", "prior", *args],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    r = run("--model", str(tiny_folder), "--world", str(tmp_path))
    assert r.returncode == 2 and "not a world folder" in r.stderr
    r = run("--model", str(tiny_folder), "--world", str(small_dir), "--first-tau", "x")
    assert r.returncode == 2 and "--first-tau" in r.stderr
    r = run("--model", str(tmp_path / "none"), "--world", str(small_dir))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = run("--model", str(tiny_folder), "--world", str(small_dir), "--episodes", "2",
            "--turns", "2", "--first-tau", "0", "--set", "env.length=100")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "n-th empty teacher turn" in r.stdout
    r = run("--model", str(tiny_folder), "--world", str(small_dir), "--speakers", "-1")
    assert r.returncode == 2 and "--speakers" in r.stderr
    r = run("--model", str(tiny_folder), "--world", str(small_dir), "--names", "Rose,Rose")
    assert r.returncode == 2 and "--names" in r.stderr and len(r.stderr.splitlines()) == 1
    r = run("--model", str(tiny_folder), "--world", str(small_dir), "--episodes", "2",
            "--turns", "2", "--first-tau", "0", "--set", "env.length=120",
            "--names", "Teacher,Student", "--tag")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "the student's tag after it" in r.stdout


def test_named_speakers(tiny_folder, small_dir) -> None:
    """with_speakers renames both tags everywhere in the format; the survey costs the silent
    teacher under each pair and under the renamed format τ still writes its first turns."""
    from klbudget.pipelines.prior import speaker_pairs, speaker_survey, with_speakers

    pairs = speaker_pairs(3)
    assert pairs == speaker_pairs(3) and all(t != s for t, s in pairs)
    cfg = apply_overrides(preset("demo"), [f"model.path={tiny_folder}", "env.length=120"])
    named = with_speakers(cfg, "Rose", "Eve")
    assert named.env.teacher_tag == "Rose:" and named.env.student_tag == "Eve:"
    assert named.env.prompt.endswith("\n\nEve: Hi! Can you help me with something?\n\nRose:")
    assert "Teacher:" not in named.env.prompt and "Student:" not in named.env.prompt
    swapped = with_speakers(cfg, "Student", "Teacher")  # names equal to the other tag
    assert swapped.env.prompt.endswith("Teacher: Hi! Can you help me with something?\n\nStudent:")
    res = empty_turn_costs(named, episodes=2, turns=2, first_tau=1, world=small_dir)
    base = HFBase(tiny_folder)
    fmt = ChatFormat(teacher_tag="Rose:", student_tag="Eve:", prompt=named.env.prompt)
    teacher = [c for who, c in fmt.split_turns(base.tokenizer.decode(res.ids[0].tolist()))
               if who == "teacher"]  # fmt: skip
    assert load_world(small_dir).teacher.in_support(teacher[0]), teacher
    assert len(teacher) >= 2 and teacher[1] == "", teacher
    table = speaker_survey(cfg, 2, [0], episodes=2, turns=2, world=small_dir)
    assert all(f"{t:>14} {s:>14}" in table for t, s in speaker_pairs(2))
    assert "median over pairs" in table


def test_tag_costs_are_the_teacher_forced_tag(tiny_folder, small_dir) -> None:
    """tag_costs: −log β of the student's tag right after each empty turn's separator."""
    from klbudget.pipelines.prior import tag_costs

    cfg = apply_overrides(preset("demo"), [f"model.path={tiny_folder}", "env.length=120"])
    res = empty_turn_costs(cfg, episodes=2, turns=2)
    tags = tag_costs(cfg, res)
    base = HFBase(tiny_folder)
    fmt = chat_format(cfg)
    sep = base.tokenizer(fmt.separator, add_special_tokens=False)["input_ids"]
    tag = base.tokenizer(fmt.to_student, add_special_tokens=False)["input_ids"][len(sep) :]
    logp = base.score(torch.tensor(res.ids)).numpy()
    checked = 0
    for e, n in zip(*np.nonzero(np.isfinite(tags.costs)), strict=True):
        s = res.starts[e, n] + len(sep)
        assert res.ids[e, s : s + len(tag)].tolist() == tag  # the environment wrote it
        assert abs(tags.costs[e, n] + logp[e, s - 1 : s - 1 + len(tag)].sum()) < 1e-4
        checked += 1
    assert checked >= 2


def test_tau_in_the_class_makes_silence_impossible(tiny_folder, small_dir) -> None:
    """base.members = "tau" puts τ itself in the pessimistic class (the realizable case of the
    guarantee, ν_α ≤ τ): τ never writes an empty turn, so under ν_α silence costs +inf, while
    under β alone the same command gives a finite cost."""
    sets = [f"model.path={tiny_folder}", "env.length=120", f"base.world={small_dir}"]
    single = apply_overrides(preset("demo"), sets)
    assert np.isfinite(empty_turn_costs(single, episodes=2, turns=1).costs).all()
    cfg = apply_overrides(single, ["base.kind=pessimistic", "base.members=tau"]).validate()
    res = empty_turn_costs(cfg, episodes=2, turns=1)
    assert np.isposinf(res.costs).all(), res.costs
    assert res.member_costs is not None and np.isfinite(res.member_costs[0]).all()
    assert np.isposinf(res.member_costs[1]).all()  # τ's own price of the empty turn


def test_the_silent_fixed_teacher_pays_the_empty_turn_prior(tiny_folder, small_dir) -> None:
    """fixed_teacher(''): the same conversations as empty_turn_costs (same seed), so the same
    costs turn by turn; its KL is their sum, its return the rewards the environment paid, and
    a non-empty turn's replies are sorted into the world's pools."""
    from klbudget.pipelines.prior import fixed_teacher, fixed_teacher_table

    cfg = apply_overrides(preset("demo"), [f"model.path={tiny_folder}", "env.length=120"])
    prior = empty_turn_costs(cfg, episodes=3, turns=2, seed=4)
    silent = fixed_teacher(cfg, "", episodes=3, seed=4, world=small_dir)
    both = np.isfinite(prior.costs) & np.isfinite(silent.costs[:, :2])
    assert both.sum() >= 3
    np.testing.assert_allclose(silent.costs[:, :2][both], prior.costs[both], rtol=1e-6)
    np.testing.assert_allclose(silent.kl, np.nansum(silent.costs, axis=1))
    assert (silent.replies >= 1).all() and (silent.returns > 0).all()
    assert silent.pools is not None and abs(sum(silent.pools.values()) - 1.0) < 1e-9
    said = fixed_teacher(cfg, "Hello there.", episodes=2, seed=4)
    assert said.pools is None and np.nanmin(said.costs) > 0.0  # a tiny model never says it
    table = fixed_teacher_table([silent, said])
    assert "''" in table and "'Hello there.'" in table
    # Without turns before it, the reward per reply is the episodes' paid reward per reply.
    assert abs(silent.per_reply - silent.returns.sum() / silent.replies.sum()) < 1e-6  # float32


def test_fixed_teacher_after_other_turns_costs_only_the_fixed_ones(tiny_folder) -> None:
    """``before``: those turns are written first and cost nothing in the table; the fixed
    turns that follow are the silent teacher's, costed from the first of them."""
    from klbudget.pipelines.prior import fixed_teacher

    cfg = apply_overrides(preset("demo"), [f"model.path={tiny_folder}", "env.length=120"])
    plain = fixed_teacher(cfg, "", episodes=2, seed=4)
    after = fixed_teacher(cfg, "", episodes=2, seed=4, before=["Hello there.", "Thanks."])
    said = fixed_teacher(cfg, "Hello there.", episodes=2, seed=4)
    # The first costed turn is a silence, not the greeting that cost many nats.
    assert np.nanmax(after.costs[:, 0]) < np.nanmin(said.costs[:, 0])
    assert np.isfinite(after.costs[:, 0]).all()
    # Fewer turns are costed: two of the episode's teacher turns were the prefix.
    assert np.isfinite(after.costs).sum() < np.isfinite(plain.costs).sum()
    assert 0.0 <= after.per_reply <= 1.0


def test_fixed_command_bad_input(tiny_folder, tmp_path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "klbudget.cli", "base", "fixed", "--model", str(tiny_folder),
             *args, ""],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    for args, message in [
        (("--world", str(tmp_path)), "not a world folder"),
        (("--names", "Eve,Eve"), "--names"),
        (("--episodes", "0"), "--episodes"),
        (("--seed", "-1"), "--seed"),
    ]:
        r = run(*args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
