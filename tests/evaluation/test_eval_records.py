"""Episode records: validation errors and turn splitting on hand-made transcripts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from klbudget.envs.format import ChatFormat
from klbudget.evaluation.handmade import HAND_BACK, HAND_OVER, EpisodeBuilder, write_jsonl
from klbudget.evaluation.records import (
    RecordError,
    load_episodes,
    load_heldout,
    parse_episode,
    split_turns,
)


def two_turn_record() -> dict:
    b = EpisodeBuilder(length=16)
    b.teacher([" Hi", HAND_OVER], kl=[0.1, 0.2], reward=0.5)
    b.student([" ok", HAND_BACK])
    b.teacher([HAND_OVER], kl=[1.0])
    return b.record()


def test_parse_keeps_fields_and_infinite_nulls() -> None:
    rec = two_turn_record()
    rec["tokens"][1] |= {"kl_tau": None, "tau_logp": None, "help": True}
    rec["tokens"][2] |= {"kl_tau": 0.25, "tau_logp": -1.5, "help": False}
    ep = parse_episode(rec)
    assert [t.speaker for t in ep.tokens] == ["prompt", "agent", "agent", "env", "env", "agent"]
    assert ep.tokens[1].kl_tau == math.inf and ep.tokens[1].tau_logp == -math.inf
    assert ep.tokens[2].kl_tau == 0.25 and ep.tokens[2].help is False
    assert ep.tokens[3].kl_tau is None and ep.tokens[3].help is None  # absent: not annotated
    assert ep.rewards == ((2, 0.5),) and ep.return_ == 0.5
    assert ep.turns is None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.pop("tokens"), "missing key 'tokens'"),
        (lambda r: r["tokens"][1].update(speaker="robot"), "tokens[1]: 'speaker' must be one of"),
        (lambda r: r["tokens"][2].update(kl="0.3"), "tokens[2]: 'kl' must be a finite number"),
        (lambda r: r["tokens"][2].update(kl=-0.5), "'kl' must be >= 0"),
        (lambda r: r["tokens"][0].update(id=True), "'id' must be an integer"),
        (lambda r: r.update(rewards=[[99, 1.0]]), "token index 99 is out of range"),
        (lambda r: r.update(rewards=[[1]]), "rewards[0] must be [token_index, reward]"),
        (
            lambda r: r.update(turns=[{"speaker": "teacher", "start": 3, "end": 1}]),
            "need 0 <= start <= end",
        ),
        (lambda r: r.update(turns=[{"speaker": "x", "start": 0, "end": 1}]), "'speaker' must"),
        (lambda r: r["tokens"][1].update(help="yes"), "'help' must be true, false or null"),
    ],
)
def test_malformed_episode_names_file_and_line(tmp_path: Path, edit, message: str) -> None:
    good, bad = two_turn_record(), two_turn_record()
    edit(bad)
    path = write_jsonl(tmp_path / "episodes.jsonl", [good, bad])
    with pytest.raises(RecordError) as info:
        load_episodes(path)
    text = str(info.value)
    assert text.startswith(f"{path}:2: ")  # the second line is the bad one
    assert message in text
    assert "\n" not in text


def test_invalid_json_line(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps(two_turn_record()) + "\n\n{not json\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"e\.jsonl:3: invalid JSON"):
        load_episodes(path)


def test_record_error_is_a_value_error() -> None:
    assert issubclass(RecordError, ValueError)


def test_heldout_validation(tmp_path: Path) -> None:
    ok = {"transcript": 0, "teacher_logp": [-1.0, None], "n": 2}
    path = write_jsonl(tmp_path / "h.jsonl", [ok])
    (rec,) = load_heldout(path)
    assert rec.teacher_logp == (-1.0, -math.inf)
    write_jsonl(path, [ok, {"transcript": 1, "teacher_logp": [-1.0], "n": 3}])
    with pytest.raises(RecordError, match=r"h\.jsonl:2: 'n' is 3 but teacher_logp has 1"):
        load_heldout(path)
    write_jsonl(path, [{"transcript": 1, "teacher_logp": [0.5], "n": 1}])
    with pytest.raises(RecordError, match=r"must be a number <= 0"):
        load_heldout(path)


def test_split_turns_by_speaker_runs() -> None:
    ep = parse_episode(two_turn_record())
    turns = split_turns(ep)
    assert [(t.speaker, t.start, t.end) for t in turns] == [
        ("teacher", 1, 3),
        ("student", 3, 5),
        ("teacher", 5, 6),
    ]
    assert [t.completed for t in turns] == [True, True, True]
    assert [t.empty for t in turns] == [False, False, True]
    assert turns[0].text == " Hi" + HAND_OVER


def test_split_turns_decides_on_text_not_tokens() -> None:
    # The hand-over split over three tokens and a whitespace-only content: still one
    # completed, empty teacher turn (docs/design.md, "Mechanics": by content, on decoded text).
    b = EpisodeBuilder()
    b.teacher(["  ", "\n\n", "Student", ":"])
    b.student([" hi", HAND_BACK])
    b.teacher([" So", "\n"])  # unfinished when the episode ended
    turns = split_turns(parse_episode(b.record()))
    assert [(t.speaker, t.completed, t.empty) for t in turns] == [
        ("teacher", True, True),
        ("student", True, False),
        ("teacher", False, False),
    ]


def test_split_turns_uses_the_given_format() -> None:
    fmt = ChatFormat(teacher_tag="T:", student_tag="S:", separator="\n", prompt="hello\nT:")
    b = EpisodeBuilder(fmt=fmt)
    b.teacher([" x", "\nS:"]).student([" y", "\nT:"]).teacher(["\nS:"])
    turns = split_turns(parse_episode(b.record()), fmt)
    assert [t.empty for t in turns if t.speaker == "teacher"] == [False, True]
    # Under the default format neither turn has a hand-over, so neither is completed.
    assert not any(t.completed for t in split_turns(parse_episode(b.record())))
