"""The report in a real browser: headless Chromium driven by Playwright
(klbudget.report.browser, scripts/browser_check.py).

Chromium is the system's (Debian's `chromium` package, installed by scripts/setup.sh);
the tests skip, with the reason, only where Playwright or Chromium is missing.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from klbudget.evaluation.handmade import HAND_BACK, HAND_OVER, EpisodeBuilder, write_run
from klbudget.report.browser import check_page, find_chromium, unavailable
from klbudget.report.html import build_report

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "browser_check.py"
BAD_PAGE = (
    "<!DOCTYPE html><html><body><p>bad page</p>"
    '<script>console.error("boom"); alert("pwned"); throw new Error("bang");</script>'
    '<img src="http://127.0.0.1:9/x.png"></body></html>'
)


@pytest.fixture(scope="module")
def chromium() -> str:
    if why := unavailable():
        pytest.skip(f"browser check skipped: {why}")
    found = find_chromium()
    assert found is not None
    return found


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
    problems = check_page(
        report, shot, expect_text=["<script>alert(1)</script>", "</div>"], executable=chromium
    )
    assert problems == []
    width, height = png_size(shot)
    assert width == 1280 and height > 1000
    print(f"screenshot: {shot}")


def test_browser_check_fails_on_errors(tmp_path: Path, chromium: str) -> None:
    # The check itself must be able to fail: a page that logs an error, opens a dialog,
    # throws, runs a script and fetches from the network (blocked, and reported).
    bad = tmp_path / "bad.html"
    bad.write_text(BAD_PAGE, encoding="utf-8")
    problems = check_page(bad, tmp_path / "bad.png", expect_text=["never shown"])
    text = "\n".join(problems)
    for needle in (
        "console.error: boom",
        "a JavaScript dialog opened: alert 'pwned'",
        "uncaught exception: Error: bang",
        "external request: http://127.0.0.1:9/x.png",
        "the page has 1 <script> element",
        "1 of 1 images did not load",
        "does not show the text 'never shown'",
    ):
        assert needle in text, f"{needle!r} not in {problems}"


def test_command_line(tmp_path: Path, chromium: str) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text(BAD_PAGE, encoding="utf-8")
    good = tmp_path / "good.html"
    good.write_text("<!DOCTYPE html><html><body><p>fine</p></body></html>", encoding="utf-8")
    shot = tmp_path / "good.png"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, str(SCRIPT), *args, "--chromium", chromium]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    res = run(str(good), "--screenshot", str(shot), "--expect-text", "fine")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK" in res.stdout and png_size(shot)[0] == 1280
    res = run(str(bad))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAIL: external request: http://127.0.0.1:9/x.png" in res.stderr
    assert run(str(tmp_path / "missing.html")).returncode == 2


def test_page_reads_at_1400_pixels(tmp_path: Path, chromium: str) -> None:
    """At 1400 pixels wide: no horizontal scroll, the finding first, every plot loaded (the
    KL-against-budget curve among them), one transcript per policy open and the rest
    folded; the pessimistic run's base named as such."""
    from playwright.sync_api import sync_playwright

    runs = [hostile_run(tmp_path / "single"), hostile_run(tmp_path / "pess")]
    (runs[1] / "config.toml").write_text('[base]\nkind = "pessimistic"\n', encoding="utf-8")
    more = EpisodeBuilder(episode=1, length=32)
    more.teacher([" Yo", HAND_OVER], kl=[0.1, 0.1], reward=0.5).student([" k", HAND_BACK])
    with open(runs[0] / "eval" / "episodes_agent_L32.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(more.record()) + "\n")
    report = build_report(runs, tmp_path / "report.html", n_samples=2)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(report.as_uri())
        assert page.evaluate("document.documentElement.scrollWidth") <= 1400
        first = page.evaluate("document.querySelector('#headline .finding').innerText")
        assert first.startswith("single.") and "agent left" in first
        broken = page.evaluate(
            "[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length"
        )
        assert broken == 0
        assert page.evaluate("!!document.querySelector('#budget img')")
        closed = page.evaluate("[...document.querySelectorAll('#transcripts details')]"
                               ".filter(d => !d.open).length")  # fmt: skip
        assert closed >= 1
        text = page.evaluate("document.body.innerText")
        assert "pess: base ν_α with help" in text and "single: base β" in text
        browser.close()
