"""The benchmark scripts refuse bad arguments before any work: a usage line, one error line,
exit status 2, and nothing built or run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize(
    "script,args,says",
    [
        ("rollout.py", ["--model", "/nonexistent"], "not a model folder (no config.json)"),
        ("rollout.py", ["--tiny", "1m", "--batch", "0"], "--batch and --length must be >= 1"),
        ("rollout.py", ["--tiny", "1m", "--tokenizer-from", "{tmp}"], "no tokenizer files"),
        ("training.py", ["--tiny", "1m", "--preset", "nope"], "unknown preset 'nope'"),
        ("training.py", ["--tiny", "1m", "--heads", "full,wide"], "unknown heads ['wide']"),
        ("mixture.py", ["--tiny", "1m"], "--model is required here"),
        ("mixture.py", ["--model", "/nonexistent"], "not a model folder (no config.json)"),
        (
            "mixture.py",
            ["--model", "{model}", "--against", "{model}/config.json"],
            "not a Python file defining fixed_kl_mixture",
        ),
        (
            "mixture.py",
            ["--model", "{model}", "--against", "/nonexistent.py"],
            "not a Python file defining fixed_kl_mixture",
        ),
        (
            "rollout.py",
            ["--tiny", "1m", "--against", "{model}/config.json"],
            "not a Python file defining fixed_kl_mixture",
        ),
        (
            "ppo_update.py",
            ["--run", "{model}", "--against", "/nonexistent.py"],
            "not a Python file defining fixed_kl_mixture",
        ),
        ("ppo_update.py", ["--run", "{tmp}"], "not a run folder (no config.toml)"),
        (
            "rollout.py",
            ["--tiny", "1m", "--count-calls", "--against", "/nonexistent.py"],
            "--against and --count-calls are two different runs",
        ),
    ],
)
def test_bad_arguments_are_refused_in_one_line(
    tmp_path, tmp_path_factory, script, args, says
) -> None:
    model = tmp_path_factory.mktemp("model")  # passes the folder check, outside tmp_path
    (model / "config.json").write_text("{}")
    args = [a.replace("{tmp}", str(tmp_path)).replace("{model}", str(model)) for a in args]
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert errors == [errors[0]] and says in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran
