"""The report in a real browser: headless Chromium via scripts/browser_check.py.

Chromium is Debian's `chromium` package. When it is missing, the set-up tries
`apt-get install -y chromium` once (only as root with apt-get); where that is impossible
the tests are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from klbudget.evaluation.handmade import HAND_BACK, HAND_OVER, EpisodeBuilder, write_run
from klbudget.report.html import build_report

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "browser_check.py"
BROWSERS = ("chromium", "chromium-browser")


def _find() -> str | None:
    return next((p for name in BROWSERS if (p := shutil.which(name))), None)


def _install() -> str:
    """One attempt at `apt-get install -y chromium` (after `apt-get update` if the package
    lists are stale); returns why it failed."""
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if res.returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=600)
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    lines = (res.stderr or res.stdout).strip().splitlines()
    return lines[-1] if lines else f"apt-get exited with {res.returncode}"


@pytest.fixture(scope="module")
def chromium() -> str:
    found = _find()
    if found:
        return found
    if os.name == "posix" and os.geteuid() == 0 and shutil.which("apt-get"):
        why = _install()
        if found := _find():
            return found
    else:
        why = "installing needs root and apt-get"
    pytest.skip(f"browser check skipped: chromium is not installed and could not be ({why})")


def run_check(report: Path, shot: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(report), "--screenshot", str(shot), *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


def hostile_run(path: Path) -> Path:
    b = EpisodeBuilder(length=32)
    b.teacher([" Hi", " there", HAND_OVER], kl=[0.005, 0.2, 0.05], reward=0.8, cls="greet")
    b.student([" <script>alert(1)</script>", "</div>", ' "q" \x07\x1b', HAND_BACK])
    b.teacher([HAND_OVER], kl=[2.5], reward=0.9, cls="empty", in_support=False, kl_tau=[None])
    b.student([" hi\x00", HAND_BACK])
    b.teacher([" ok", HAND_OVER], kl=[0.5, 0.02], reward=0.7, cls="greet", in_support=True)
    base = EpisodeBuilder(policy="base", length=32, budget=0.0)
    base.teacher([" Hello", HAND_OVER], reward=0.5, cls="greet").student([" hm", HAND_BACK])
    return write_run(
        path,
        config={"train": {"budget": 10.0}, "note": "<script>alert(2)</script>"},
        episodes=[b.record(), b.record()],
        metrics_rows=[{"time/agent_steps": 10}],
        eval_episodes={("agent", 32): [b.record()], ("base", 32): [base.record()]},
        heldout={"agent": [{"transcript": 0, "teacher_logp": [-1.0, -2.0], "n": 2}]},
    )


def test_report_renders_in_chromium_without_errors(tmp_path: Path, chromium: str) -> None:
    report = build_report([hostile_run(tmp_path / "<b>run<i>")], tmp_path / "report.html")
    shot = tmp_path / "report.png"
    res = run_check(report, shot, "--expect-text", "<script>alert(1)</script>",
                    "--expect-text", "</div>")  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK" in res.stdout
    width, height = png_size(shot)
    assert width == 1280 and height > 1000
    print(f"screenshot: {shot}")


def test_browser_check_fails_on_errors(tmp_path: Path, chromium: str) -> None:
    # The check itself must be able to fail: a page that logs an error, opens a dialog,
    # throws, and fetches from the network.
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><body><p>bad page</p>"
        '<script>console.error("boom"); alert("pwned"); throw new Error("bang");</script>'
        '<img src="http://127.0.0.1:9/x.png"></body></html>',
        encoding="utf-8",
    )
    res = run_check(bad, tmp_path / "bad.png", "--expect-text", "never shown")
    assert res.returncode == 1, res.stdout + res.stderr
    for needle in (
        "console.error: boom",
        "a JavaScript dialog opened",
        "uncaught exception",
        "external request: http://127.0.0.1:9/x.png",
        "<script> element",
        "does not show the text 'never shown'",
    ):
        assert needle in res.stderr, needle
