"""build_report: self-contained HTML from run folders, hostile text, hand-edited records."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from klbudget.evaluation.handmade import HAND_BACK, HAND_OVER, EpisodeBuilder, write_run
from klbudget.evaluation.summary import compute_all
from klbudget.report.html import ReportError, build_report
from klbudget.report.plots import PLOTS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HOSTILE_TOKENS = [
    "<script>alert(1)</script>",
    "</div>",
    "\"double\" 'single'",
    "".join(chr(c) for c in range(32)),
    "\u202e\ud800",
]


class Page(HTMLParser):
    """The parts of a report the tests look at."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.cells: dict[tuple[str, str], str | None] = {}
        self.opened: dict[str, int] = {}
        self.closed: dict[str, int] = {}
        self.images: list[str] = []
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.opened[tag] = self.opened.get(tag, 0) + 1
        if tag == "td" and "data-key" in a:
            self.cells[(a["data-run"] or "", a["data-key"] or "")] = a.get("data-value")
        if tag == "img":
            self.images.append(a.get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        self.closed[tag] = self.closed.get(tag, 0) + 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def value(self, run: str, key: str) -> float | None:
        raw = self.cells[(run, key)]
        return None if raw is None else float(raw)


def agent_records() -> list[dict]:
    """Two agent episodes. Episode 0: teacher turns [content KL 0.6, empty KL 1.0, content
    " Good" KL 0.1, empty KL 0.25, unfinished KL 0.5]; episode 1: [empty KL 2.0, content
    KL 0.6]."""
    b0 = EpisodeBuilder(episode=0, length=32)
    b0.teacher([" Hi", " there", HAND_OVER], kl=[0.1, 0.2, 0.3], reward=0.5)
    b0.student([" ok", HAND_BACK]).teacher([HAND_OVER], kl=[1.0], reward=0.7)
    b0.student([" yes", HAND_BACK]).teacher([" Good", HAND_OVER], kl=[0.05, 0.05], reward=0.9)
    b0.student([" hm", HAND_BACK]).teacher([HAND_OVER], kl=[0.25], reward=0.4)
    b0.student([" k", HAND_BACK]).teacher([" So"], kl=[0.5])
    b1 = EpisodeBuilder(episode=1, length=32)
    b1.teacher([HAND_OVER], kl=[2.0], reward=0.6).student([" hey", HAND_BACK])
    b1.teacher([" Yes", HAND_OVER], kl=[0.5, 0.1], reward=0.8).student([" fine", HAND_BACK])
    return [b0.record(), b1.record()]


def make_run(path: Path, **extra: object) -> Path:
    base = EpisodeBuilder(policy="base", length=32, budget=0.0)
    base.teacher([" Hello", HAND_OVER], reward=0.5).student([" hi", HAND_BACK])
    return write_run(
        path,
        config={"train": {"budget": 10.0, "length": 32}},
        episodes=agent_records(),
        # Deliberately wrong trainer summary: the report must not use it.
        metrics_rows=[{"time/agent_steps": 64, "episodes/empty_turn_frac": 0.99}],
        eval_episodes={("agent", 32): agent_records(), ("base", 32): [base.record()]},
        heldout={"agent": [{"transcript": 0, "teacher_logp": [-1.0, -2.0], "n": 2}]},
        **extra,
    )


def edit_line(path: Path, line: int, edit) -> None:
    """Change one record of a JSONL file in place, as a person would with an editor."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[line])
    edit(rec)
    lines[line] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One report of the standard run, shared by the read-only tests below."""
    tmp = tmp_path_factory.mktemp("built")
    out = build_report([make_run(tmp / "runA")], tmp / "out" / "report.html")
    return out, out.read_text(encoding="utf-8")


def test_report_is_self_contained(built: tuple[Path, str]) -> None:
    out, html = built
    page = Page(html)
    assert "<script" not in html.lower() and "<link" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", html, re.I)
    assert "Content-Security-Policy" in html
    saved = sorted((out.parent / "report_files").glob("*.png"))
    assert len(page.images) == len(saved) >= 5
    names = [name for name, _, _ in PLOTS]
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png.startswith(PNG_MAGIC)
        assert any(png == p.read_bytes() for p in saved)  # the same figure beside the page
    assert {p.stem for p in saved} <= set(names)
    # Every <section>/<table>/<div> that opens also closes.
    for tag in ("section", "table", "div", "span"):
        assert page.opened.get(tag) == page.closed.get(tag), tag


def test_summary_shows_numbers_from_records(built: tuple[Path, str]) -> None:
    page = Page(built[1])
    assert page.value("runA", "eval.agent_L32.empty_turn_frac.mean") == 0.5
    assert page.value("runA", "eval.agent_L32.kl_to_base.exact.mean") == pytest.approx(2.525)
    assert page.value("runA", "training.empty_turn_frac.mean") == 0.5  # not the 0.99 row
    assert page.value("runA", "calibration.agent.loss") == 1.5
    assert page.value("runA", "eval.agent_L32.help_rate") is None  # not annotated: shown as —
    assert page.value("runA", "training.agent_steps") == 64


def test_hand_edited_records_change_the_numbers_as_predicted(tmp_path: Path) -> None:
    run = make_run(tmp_path / "runA")
    before = compute_all(run)["eval"]["agent_L32"]
    assert before["empty_turn_frac"]["mean"] == 0.5  # (2/4 + 1/2) / 2
    assert before["kl_to_base"]["exact"]["mean"] == pytest.approx((2.45 + 2.6) / 2)
    assert [r["q50"] for r in before["kl_cost_nth_empty"]] == [1.5, 0.25]

    agent_file = run / "eval" / "episodes_agent_L32.jsonl"

    def blank_good(rec: dict) -> None:  # " Good" → " ": episode 0's third turn is now empty
        (tok,) = [t for t in rec["tokens"] if t["text"] == " Good"]
        tok["text"] = " "

    def raise_kl(rec: dict) -> None:  # episode 1's first empty turn: KL 2.0 → 3.0
        (tok,) = [t for t in rec["tokens"] if t["speaker"] == "agent"][:1]
        tok["kl"] = 3.0

    edit_line(agent_file, 0, blank_good)
    edit_line(agent_file, 1, raise_kl)

    after = compute_all(run)["eval"]["agent_L32"]
    # Episode 0: 3 of 4 completed turns empty; episode 1 unchanged at 1/2.
    assert after["empty_turn_frac"]["mean"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    # Episode 1's exact KL: 2.6 + 1.0.
    assert after["kl_to_base"]["exact"]["mean"] == pytest.approx((2.45 + 3.6) / 2)
    # n = 1: episode 0's 1.0 and episode 1's 3.0; n = 2: the blanked turn (0.05 + 0.05);
    # n = 3: episode 0's last empty turn.
    assert [r["q50"] for r in after["kl_cost_nth_empty"]] == pytest.approx([2.0, 0.1, 0.25])
    assert [r["n_episodes"] for r in after["kl_cost_nth_empty"]] == [2, 1, 1]
    saved = json.loads((run / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert saved["eval"]["agent_L32"]["empty_turn_frac"]["mean"] == pytest.approx(0.625)

    html = build_report([run], tmp_path / "r.html").read_text(encoding="utf-8")
    page = Page(html)
    assert page.value("runA", "eval.agent_L32.empty_turn_frac.mean") == pytest.approx(0.625)
    assert page.value("runA", "eval.agent_L32.kl_to_base.exact.mean") == pytest.approx(3.025)
    assert "episode 0 · return 2.5 · KL(π‖β) exact 2.45, realized 2.45 · empty-turn " \
        "fraction 0.75" in html  # fmt: skip


def test_hostile_text_is_shown_not_run(tmp_path: Path) -> None:
    b = EpisodeBuilder(length=32)
    b.teacher([*HOSTILE_TOKENS, HAND_OVER], kl=[0.5] * 6, cls='<i>"x"</i>', in_support=True)
    b.student(["</span></div><script>alert(2)</script>", HAND_BACK])
    run = write_run(
        tmp_path / "<img src=x onerror=alert(3)>",
        config={"note": "</td><script>alert(4)</script>", "<b>": 1},
        eval_episodes={("agent", 32): [b.record()]},
    )
    html = build_report([run], tmp_path / "r.html").read_text(encoding="utf-8")
    page = Page(html)

    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;/span&gt;&lt;/div&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(3)&gt;" in html and "<img src=x" not in html
    assert "&lt;/td&gt;&lt;script&gt;alert(4)" in html
    assert "&lt;i&gt;&quot;x&quot;&lt;/i&gt;" in html
    assert "&quot;double&quot; &#x27;single&#x27;" in html
    # Control characters: none raw in the page, each shown as a visible escape.
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f\u202e]", html)
    for c in [*range(0, 9), *range(11, 32)]:
        expected = {9: "\\t", 13: "\\r"}.get(c, f"\\x{c:02x}")
        assert f'<span class="ctl">{expected}</span>' in html
    assert '<span class="ctl">\\u202e</span><span class="ctl">\\ud800</span>' in html
    # As a browser would read it: the markup is text, and the page structure is intact.
    text = "".join(page.text)
    assert "<script>alert(1)</script>" in text and "</span></div><script>alert(2)" in text
    for tag in ("div", "span", "table", "section", "td"):
        assert page.opened.get(tag) == page.closed.get(tag), tag


def test_runs_side_by_side_and_missing_eval(tmp_path: Path) -> None:
    full = make_run(tmp_path / "a" / "run")
    bare = write_run(tmp_path / "b" / "run", config={"train": {"budget": 20.0, "length": 32}},
                     metrics_rows=[{"time/agent_steps": 8}])  # fmt: skip
    html = build_report([full, bare], tmp_path / "r.html").read_text(encoding="utf-8")
    page = Page(html)
    # Same folder name twice: the second gets a suffix; one column each.
    assert page.value("run", "eval.agent_L32.empty_turn_frac.mean") == 0.5
    assert page.value("run (2)", "eval.agent_L32.empty_turn_frac.mean") is None
    assert page.value("run (2)", "training.agent_steps") == 8
    assert "no eval episodes" in html
    assert '<th scope="row">train.budget</th><td>10.0</td><td>20.0</td>' in html

    only_bare = build_report([bare], tmp_path / "bare.html").read_text(encoding="utf-8")
    assert "No run has the records for this figure." in only_bare
    assert "no episode records to show" in only_bare


def test_bad_run_folders(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no such directory"):
        build_report([tmp_path / "nope"], tmp_path / "r.html")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="not a run folder"):
        build_report([tmp_path / "empty"], tmp_path / "r.html")
    run = make_run(tmp_path / "runA")
    edit_line(run / "eval" / "episodes_agent_L32.jsonl", 1, lambda r: r.pop("rewards"))
    with pytest.raises(ReportError, match=r"episodes_agent_L32\.jsonl:2: missing key 'rewards'"):
        build_report([run], tmp_path / "r.html")
    (run / "config.toml").write_text("x = [", encoding="utf-8")
    with pytest.raises(ReportError, match="invalid TOML") as info:
        build_report([run], tmp_path / "r.html")
    assert "\n" not in str(info.value)
    assert issubclass(ReportError, ValueError)
    assert not (tmp_path / "r.html").exists()


def test_help_study_section_and_corrupt_study(tmp_path: Path) -> None:
    run = make_run(tmp_path / "demo" / "runA")
    study = tmp_path / "demo" / "help_study.json"
    study.write_text('[{"fraction": 0.5, "transcripts": 20, "help_rate": 0.25, "empty": 0.0, '
                     '"outside": "<script>x</script>", "return": 1.5}]')  # fmt: skip
    page = build_report([run], tmp_path / "r.html").read_text()
    assert "Help rate and demonstration data" in page and "<td>0.25</td>" in page
    assert "<script>x" not in page and "&lt;script&gt;x" in page
    study.write_text('{"bad": ')
    with pytest.raises(ReportError, match="help_study.json"):
        build_report([run], tmp_path / "r2.html")
    assert not (tmp_path / "r2.html").exists() and not (tmp_path / "r2_files").exists()


def test_numbers_for_people() -> None:
    from klbudget.report.html import fmt_num

    assert fmt_num(1234567) == "1,234,567"
    assert fmt_num(123456.7) == "123,457"
    assert fmt_num(1e-9) == "0" and fmt_num(-3e-6) == "0"  # zero up to rounding
    assert fmt_num(0.012345) == "0.01235" and fmt_num(2.525) == "2.525"
    assert fmt_num(float("nan")) == "—" and fmt_num(float("inf")) == "∞"


def test_headline_panel_comes_first(built: tuple[Path, str]) -> None:
    html = built[1]
    assert html.index('id="headline"') < html.index('id="summary"')
    panel = html[html.index('id="headline"') : html.index('id="summary"')]
    # runA's agent at L = 32: empty-turn fraction 0.5 and KL 2.525 from the records.
    assert 'data-headline="empty_turn_frac.mean">0.5<' in panel
    assert 'data-headline="kl_to_base.exact.mean">2.525<' in panel


def test_report_reads_a_run_killed_mid_write(tmp_path: Path) -> None:
    run = make_run(tmp_path / "runA")
    whole = build_report([run], tmp_path / "whole.html").read_text()
    for name in ("episodes.jsonl", "metrics.jsonl"):
        with open(run / name, "a", encoding="utf-8") as f:
            f.write('{"episode": 99, "policy": "ag')  # the line a SIGKILL cut short
    with pytest.warns(UserWarning, match="truncated last line"):
        cut = build_report([run], tmp_path / "cut.html").read_text()
    # The same numbers as before the cut line was added (the file paths aside).
    assert Page(cut).cells == Page(whole).cells


def test_base_labels_name_each_runs_own_base(tmp_path: Path) -> None:
    """A pessimistic run's base is ν_α with help wherever the report names it, a single
    run's β; a header shared by both names both."""
    pess = make_run(tmp_path / "pess")
    (pess / "config.toml").write_text('[base]\nkind = "pessimistic"\n', encoding="utf-8")
    single = make_run(tmp_path / "single")
    html = build_report([pess], tmp_path / "p.html").read_text(encoding="utf-8")
    assert "base ν_α with help" in html
    assert "base β" not in html
    both = build_report([pess, single], tmp_path / "b.html").read_text(encoding="utf-8")
    assert "pess: base ν_α with help" in both and "single: base β" in both
    assert "base ν_α with help / β" in both


def test_each_run_opens_with_a_sentence_of_its_numbers(tmp_path: Path) -> None:
    run = make_run(tmp_path / "runB")
    (run / "config.toml").write_text("[budget]\ntotal = 10.0\n", encoding="utf-8")
    html = build_report([run], tmp_path / "r.html").read_text(encoding="utf-8")
    panel = html[html.index('id="headline"') : html.index('id="summary"')]
    # runB's agent at L = 32: empty 0.5, base 0; KL 2.525 of 10 nats from the records.
    sentence = panel[panel.index('<p class="finding">') : panel.index("</p>")]
    assert "held to 10 nats against β" in sentence
    assert "left 50.0% of its teacher turns empty at 32 tokens" in sentence
    assert "(its base alone 0.0%)" in sentence
    assert "spending 2.525 nats of KL per episode (25.3% of its budget)" in sentence


def test_one_transcript_per_policy_in_full_and_a_budget_curve(built: tuple[Path, str]) -> None:
    out, html = built
    section = html[html.index('id="transcripts"') :]
    # Two agent episodes and one base episode: the second agent episode is folded.
    assert section.count("<h3>") == 2 and section.count("<details><summary>") == 1
    assert (out.parent / "report_files" / "budget.png").is_file()
    assert 'id="budget"' in html


def test_transcripts_are_drawn_as_spoken() -> None:
    """The environment's tags start the next speaker's line, a reward stands after the reply
    it pays for, and a blank line is one mark."""
    from klbudget.evaluation.records import parse_episode
    from klbudget.report.html import transcript_html

    html = transcript_html(parse_episode(agent_records()[0], "test"))
    body = html[html.index('<span class="turn teacher">') :]
    # teacher " Hi there" ¶ | Student: " ok" r 0.5 ¶ | Teacher: [empty] ¶ | Student: " yes" r 0.7
    order = [" Hi", "¶", 'class="tag student">Student:', " ok", "r 0.5", "¶",
             'class="tag teacher">Teacher:', 'class="turn teacher empty"', "¶",
             'class="tag student">Student:', " yes", "r 0.7"]  # fmt: skip
    at = 0
    for piece in order:
        at = body.index(piece, at) + len(piece)
    assert "↵" not in body  # no newline glyph inside the turns: one ¶ per blank line
    empty_box = body[body.index('class="turn teacher empty"') :]
    assert "Student:" not in empty_box[: empty_box.index("</span></span>")]


def test_report_reuses_current_metrics_and_recomputes_stale_ones(tmp_path, monkeypatch) -> None:
    """eval/metrics.json is read, not recomputed, while the records it came from are
    unchanged; once one changes (size or time), the report computes afresh."""
    from klbudget.evaluation import summary

    run = make_run(tmp_path / "runA")
    compute_all(run)  # what evaluation writes
    calls = []
    real = summary.compute_all

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(summary, "compute_all", counting)
    first = build_report([run], tmp_path / "a.html").read_text(encoding="utf-8")
    assert calls == []
    edit_line(run / "eval" / "episodes_agent_L32.jsonl", 0, lambda r: r.update({"return": 9.0}))
    second = build_report([run], tmp_path / "b.html").read_text(encoding="utf-8")
    assert len(calls) == 1
    assert Page(first).value("runA", "eval.agent_L32.reward.mean") != Page(second).value(
        "runA", "eval.agent_L32.reward.mean"
    )
