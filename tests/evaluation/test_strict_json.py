"""Strict JSON in run folders, and readers that survive a run killed mid-write."""

from __future__ import annotations

import json
import math

import pytest

from klbudget.evaluation.records import RecordError, iter_jsonl, load_episodes, load_rows
from klbudget.runs.folder import append_jsonl


def strict_loads(text: str):
    def refuse(token: str):
        raise ValueError(f"non-strict JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def episode(budget: float) -> dict:
    tok = {"id": 1, "text": "hi", "speaker": "agent", "kl": 0.1, "log_ratio": 0.2,
           "budget_left": budget}  # fmt: skip
    return {"episode": 0, "policy": "agent", "length": 1, "return": 0.5, "budget": budget,
            "rewards": [], "tokens": [tok]}  # fmt: skip


def test_writer_never_writes_nan_or_infinity(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, [{"a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.5}])
    (line,) = path.read_text().splitlines()
    assert strict_loads(line) == {"a": None, "b": "inf", "c": "-inf", "d": 1.5}
    (row,) = load_rows(path)
    assert math.isnan(row["a"]) and row["b"] == math.inf and row["c"] == -math.inf


def test_unbounded_budget_round_trips(tmp_path):
    path = tmp_path / "episodes.jsonl"
    append_jsonl(path, [episode(math.inf), episode(3.0)])
    for line in path.read_text().splitlines():
        strict_loads(line)
    a, b = load_episodes(path)
    assert a.budget == math.inf and a.tokens[0].budget_left == math.inf
    assert b.budget == 3.0 and b.tokens[0].budget_left == 3.0


def test_truncated_last_line_is_skipped_with_a_warning(tmp_path):
    path = tmp_path / "episodes.jsonl"
    append_jsonl(path, [episode(1.0), episode(2.0)])
    whole = path.read_bytes()
    path.write_bytes(whole + json.dumps(episode(3.0)).encode()[:37])  # killed mid-line
    with pytest.warns(UserWarning, match="truncated last line"):
        eps = load_episodes(path)
    assert [e.budget for e in eps] == [1.0, 2.0]
    # A last line that is whole but lacks its newline is still read.
    path.write_bytes(whole + json.dumps(episode(3.0)).encode())
    assert [e.budget for e in load_episodes(path)] == [1.0, 2.0, 3.0]
    # A cut inside a multi-byte character of the last line is a truncation too.
    path.write_bytes(whole + '{"x": "é'.encode()[:-1])
    with pytest.warns(UserWarning):
        assert len(load_episodes(path)) == 2


def test_corrupt_line_elsewhere_is_an_error(tmp_path):
    path = tmp_path / "episodes.jsonl"
    lines = [json.dumps(episode(1.0)), '{"episode": 1, "pol', json.dumps(episode(2.0))]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError, match=r"episodes.jsonl:2: invalid JSON"):
        list(iter_jsonl(path))
    path.write_text("\n".join(lines[:2]) + "\n")  # the bad line ends with a newline: finished
    with pytest.raises(RecordError, match="invalid JSON"):
        list(iter_jsonl(path))
