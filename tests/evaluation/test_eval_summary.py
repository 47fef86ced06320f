"""compute_all: a hand-written run folder in, metrics.json out, with hand-worked numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from klbudget.evaluation.handmade import HAND_BACK, HAND_OVER, EpisodeBuilder, write_run
from klbudget.evaluation.records import RecordError
from klbudget.evaluation.summary import compute_all, load_metrics_json


def agent_episode(k: int, length: int, empties: int, annotate: bool = True) -> dict:
    """One content turn (KL 0.5) then `empties` empty turns (KL 1.0 each), rewards 0.5."""
    b = EpisodeBuilder(episode=k, length=length, budget=10.0)
    tau = {"kl_tau": [0.25, 0.25], "in_support": True, "cls": "explain"} if annotate else {}
    b.teacher([" Hi", HAND_OVER], kl=[0.25, 0.25], reward=0.5, **tau)
    for _ in range(empties):
        b.student([" ok", HAND_BACK])
        extra = {"kl_tau": [None], "in_support": False, "cls": "empty"} if annotate else {}
        b.teacher([HAND_OVER], kl=[1.0], reward=0.5, **extra)
    return b.record()


def base_episode(k: int, length: int) -> dict:
    b = EpisodeBuilder(episode=k, policy="base", length=length, budget=0.0)
    b.teacher([" Hi", HAND_OVER], reward=0.25, cls="explain", in_support=True, kl_tau=0.0)
    b.student([" ok", HAND_BACK])
    b.teacher([" Hi", HAND_OVER], reward=0.25, cls="explain", in_support=True, kl_tau=0.0)
    return b.record()


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return write_run(
        tmp_path / "run1",
        config={"train": {"budget": 10.0}},
        episodes=[agent_episode(k, 8, k % 2, annotate=False) for k in range(6)],
        metrics_rows=[
            {"time/agent_steps": 100, "reward/mean": 0.1},
            {"time/agent_steps": 200, "reward/mean": 0.2},
        ],  # fmt: skip
        eval_episodes={
            ("agent", 8): [agent_episode(0, 8, 1), agent_episode(1, 8, 3)],
            ("agent", 16): [agent_episode(0, 16, 3), agent_episode(1, 16, 3)],
            ("base", 8): [base_episode(0, 8)],
        },
        heldout={
            "agent": [{"transcript": 0, "teacher_logp": [-1.0, -3.0], "n": 2}],
            "base": [{"transcript": 0, "teacher_logp": [-0.5, -1.5], "n": 2}],
        },
    )


def test_compute_all_numbers(run: Path) -> None:
    got = compute_all(run)
    assert got["schema"] == 1 and got["run"] == "run1"
    assert set(got["eval"]) == {"agent_L8", "agent_L16", "base_L8"}
    a8 = got["eval"]["agent_L8"]
    assert a8["episodes"] == 2 and a8["policy"] == "agent" and a8["length"] == 8
    # Episode 0: 1 of 2 completed teacher turns empty; episode 1: 3 of 4.
    assert a8["empty_turn_frac"]["mean"] == pytest.approx((1 / 2 + 3 / 4) / 2)
    assert a8["reward"]["mean"] == pytest.approx((1.0 + 2.0) / 2)
    assert a8["replies"]["mean"] == pytest.approx((2 + 4) / 2)  # one reward per teacher turn
    assert a8["kl_to_base"]["exact"]["mean"] == pytest.approx((1.5 + 3.5) / 2)
    assert [r["n_episodes"] for r in a8["kl_cost_nth_empty"]] == [2, 1, 1]
    assert a8["ledger"] == {"empty": 4 / 6, "explain": 2 / 6}
    assert a8["tau_support"]["violation_share"] == pytest.approx(4 / 6)
    assert a8["tau_support"]["kl_pi_tau_mean"] == math.inf
    assert a8["tau_support"]["kl_in_support_mean"] == 0.5
    assert a8["help_rate"] is None  # no `help` annotation: null, not an error
    assert got["eval"]["base_L8"]["empty_turn_frac"]["mean"] == 0.0
    assert got["eval"]["base_L8"]["tau_support"]["kl_pi_tau_mean"] == 0.0
    assert got["length_effect"] == [
        {"policy": "agent", "L": 8, "L2": 16, "empty_frac_L": 0.625,
         "empty_frac_2L": 0.75, "delta": 0.125}
    ]  # fmt: skip
    assert got["calibration"]["agent"] == {"loss": 2.0, "tokens": 2, "transcripts": 1}
    assert got["calibration"]["agent_minus_base"] == 1.0
    tr = got["training"]
    assert (tr["updates"], tr["agent_steps"], tr["episodes"]) == (2, 200, 6)
    assert tr["empty_turn_frac"]["mean"] == 0.25  # episodes alternate 0 and 1/2
    assert tr["tau_support"] is None and tr["ledger"] is None
    assert sum(b["n"] for b in tr["reward_over_training"]) == 6


def test_metrics_json_is_strict_json_and_round_trips(run: Path) -> None:
    got = compute_all(run)
    path = run / "eval" / "metrics.json"

    def no_constants(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    raw = json.loads(path.read_text(encoding="utf-8"), parse_constant=no_constants)
    assert raw["eval"]["agent_L8"]["tau_support"]["kl_pi_tau_mean"] == "inf"
    assert load_metrics_json(path) == got
    assert [p.name for p in (run / "eval").iterdir() if p.name.startswith(".")] == []


def test_write_false_leaves_the_folder_alone(run: Path) -> None:
    compute_all(run, write=False)
    assert not (run / "eval" / "metrics.json").exists()


def test_run_without_eval_or_training(tmp_path: Path) -> None:
    run = write_run(tmp_path / "bare", config={"x": 1})
    got = compute_all(run)
    assert got["training"] is None and got["eval"] == {} and got["length_effect"] == []
    assert got["calibration"] == {"agent_minus_base": None}
    assert (run / "eval" / "metrics.json").exists()


def test_errors(tmp_path: Path, run: Path) -> None:
    with pytest.raises(RecordError, match="not a run folder"):
        compute_all(tmp_path / "missing")
    path = run / "eval" / "episodes_base_L8.jsonl"
    path.write_text(json.dumps(agent_episode(0, 8, 1)) + "\n", encoding="utf-8")
    with pytest.raises(RecordError, match="policy 'agent' at length 8, but the file name says"):
        compute_all(run)
    path.write_text('{"episode": 0}\n', encoding="utf-8")
    with pytest.raises(RecordError, match=r"episodes_base_L8\.jsonl:1: missing key"):
        compute_all(run)


def test_turns_are_split_with_the_runs_own_speaker_tags(tmp_path: Path) -> None:
    """A run played between named speakers: its empty turns are found with its own tags (from
    config.toml), not the default ones, in the metrics and in the report's transcripts."""
    from klbudget.envs.format import ChatFormat
    from klbudget.report.html import load_run

    fmt = ChatFormat(teacher_tag="Rose:", student_tag="Eve:", prompt="Eve: Hi!\n\nRose:")
    b = EpisodeBuilder(episode=0, length=16, budget=10.0, fmt=fmt)
    b.teacher([" Hi", fmt.to_student], kl=0.5).student([" ok", fmt.to_teacher])
    b.teacher([fmt.to_student], kl=1.0).student([" ok", fmt.to_teacher])
    b.teacher([fmt.to_student], kl=1.0)
    env = {"teacher_tag": fmt.teacher_tag, "student_tag": fmt.student_tag, "prompt": fmt.prompt}
    run = write_run(tmp_path / "named", config={"env": env},
                    eval_episodes={("agent", 16): [b.record()]})  # fmt: skip
    got = compute_all(run)["eval"]["agent_L16"]
    assert got["empty_turn_frac"]["mean"] == pytest.approx(2 / 3)
    assert [r["n"] for r in got["kl_cost_nth_empty"]] == [1, 2]
    # The same records read with the default tags find no completed teacher turn at all.
    default = compute_all(run, fmt=ChatFormat(), write=False)["eval"]["agent_L16"]
    assert default["empty_turn_frac"] is None
    data = load_run(run)
    assert data.fmt == fmt and data.samples  # the silent episode is the one shown first
    bad = write_run(tmp_path / "bad", config={"env": {"prompt": "no tag at the end"}},
                    eval_episodes={("agent", 16): [b.record()]})  # fmt: skip
    with pytest.raises(RecordError, match="teacher tag"):
        compute_all(bad)
