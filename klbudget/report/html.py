"""`klbudget report`: runs side by side in one self-contained HTML file.

The report is rebuilt from run folders alone (docs/run-folder.md): metrics are
`eval/metrics.json` where evaluation wrote it from the very records the folder holds now,
else recomputed from the records with :func:`klbudget.evaluation.summary.compute_all`
(exactly what that file would hold; the run folder is not written; see
:func:`~klbudget.evaluation.summary.cached_metrics`), training curves come from the
training records, the configuration from `config.toml`, transcripts from `eval/`.

Self-contained and inert: CSS is inline, figures are base64 PNG data URLs (also saved as
PNG files in `<out_stem>_files/`), there is no JavaScript at all and a Content-Security-Policy
forbids any, so nothing in the file can run or reach the network. Every piece of text from a
run folder goes through :mod:`klbudget.report.escape`.
"""

from __future__ import annotations

import base64
import bisect
import html
import json
import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from klbudget.envs.format import ChatFormat
from klbudget.evaluation.metrics import empty_turn_fraction, episode_kl
from klbudget.evaluation.records import (
    Episode,
    RecordError,
    load_episodes,
    load_rows,
    split_turns,
)
from klbudget.evaluation.summary import (
    cached_metrics,
    eval_files,
    from_jsonable,
    run_format,
    to_jsonable,
    write_text_atomic,
)
from klbudget.report.escape import html_attr, html_text, visible
from klbudget.report.plots import PLOTS, POLICY_NAME, eval_keys, policy_rank, shortest_set

# Per-token KL(π‖β) colour scale: bin upper edges (nats) and background colours
# (ColorBrewer YlOrBr), dark bins get white text so tokens stay readable.
KL_EDGES = (0.001, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
KL_COLOURS = (
    "#ffffff",
    "#fff7bc",
    "#fee391",
    "#fec44f",
    "#fe9929",
    "#ec7014",
    "#cc4c02",
    "#8c2d04",
)
_DARK_BINS = (6, 7)
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
RUN_MARKERS = ("config.toml", "metrics.jsonl", "episodes.jsonl", "eval")


class ReportError(ValueError):
    """A run folder that cannot be reported on; the message is a single line."""


@dataclass
class RunData:
    """What the report knows about one run, read from its folder."""

    label: str  # unique display name
    path: Path
    config: dict[str, Any] | None
    metrics: dict[str, Any]  # compute_all's result, as metrics.json would hold it
    samples: list[tuple[str, Episode]] = field(default_factory=list)  # (caption, episode)
    notes: list[str] = field(default_factory=list)  # what is missing
    fmt: ChatFormat = field(default_factory=ChatFormat)  # the chat format it was played in


# ----------------------------------------------------------------------------- reading


def load_run(path: Path, *, fmt: ChatFormat | None = None, n_samples: int = 2) -> RunData:
    """Read one run folder; ReportError when it is not one or a record is malformed."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path}: not a run folder (no such directory)")
    if not any((path / name).exists() for name in RUN_MARKERS):
        raise ReportError(f"{path}: not a run folder (none of {', '.join(RUN_MARKERS)} found)")
    notes: list[str] = []
    config = None
    if (path / "config.toml").exists():
        try:
            config = tomllib.loads((path / "config.toml").read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ReportError(f"{path / 'config.toml'}: invalid TOML ({e})") from e
    else:
        notes.append("no config.toml")
    try:
        fmt = fmt or run_format(path)
        raw = cached_metrics(path, fmt=fmt)  # eval/metrics.json while it is current
        # Round-trip through metrics.json's encoding: the report shows what the file holds.
        metrics = from_jsonable(json.loads(json.dumps(to_jsonable(raw))))
        samples = _samples(path, n_samples, fmt)
    except RecordError as e:
        raise ReportError(str(e)) from e
    if metrics["training"] is None:
        notes.append("no training records (episodes.jsonl, metrics.jsonl)")
    if not metrics["eval"]:
        notes.append("no eval episodes (eval/episodes_<policy>_L<length>.jsonl)")
    return RunData(path.resolve().name, path, config, metrics, samples, notes, fmt)


def _samples(path: Path, n: int, fmt: ChatFormat) -> list[tuple[str, Episode]]:
    """`n` agent episodes at the longest eval length, the one with the most empty teacher
    turns first (the silent agent's transcript, when there is one), then one base episode
    there; without eval records, the last training episode."""
    files = eval_files(path)
    agent = sorted(k for k in files if k[0] == "agent")
    out: list[tuple[str, Episode]] = []
    if agent:
        length = agent[-1][1]
        episodes = load_episodes(files[("agent", length)])
        silent = max(episodes, key=lambda e: empty_turn_fraction(e, fmt) or 0.0, default=None)
        if silent is not None and (empty_turn_fraction(silent, fmt) or 0.0) > 0:
            episodes = [silent, *(e for e in episodes if e is not silent)]
        out += [("eval", e) for e in episodes[:n]]
        if ("base", length) in files:
            out += [("eval", e) for e in load_episodes(files[("base", length)])[:1]]
    elif (path / "episodes.jsonl").exists():
        out += [("training", e) for e in load_episodes(path / "episodes.jsonl")[-1:]]
    return out


def _updates(run: RunData) -> list[dict[str, Any]]:
    """The run's metrics.jsonl rows (one per PPO update); none when it has no such file."""
    path = run.path / "metrics.jsonl"
    try:
        return load_rows(path) if path.is_file() else []
    except RecordError as err:
        raise ReportError(str(err)) from err


def _unique_labels(runs: list[RunData]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        k = seen.get(run.label, 0)
        seen[run.label] = k + 1
        if k:
            run.label = f"{run.label} ({k + 1})"


# ----------------------------------------------------------------------------- formatting


def get(obj: Any, key: str) -> Any:
    """`obj["a"]["b"]...` for key "a.b..."; None when any step is missing."""
    for part in key.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


ZERO = 5e-5  # |x| below this prints as 0: a KL or fraction that is zero up to rounding


def fmt_num(x: Any) -> str:
    """A number for people: integers with thousands separators, 4 significant digits below
    10,000 (separators above), 0 for anything within round-off of zero, ∞ for infinity,
    — for no value."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x):
            return "—"
        if math.isinf(x):
            return "∞" if x > 0 else "−∞"
        if abs(x) < ZERO:
            return "0"
        if abs(x) >= 1e4:
            return f"{x:,.0f}"
        return f"{x:.4g}"
    return html_text(str(x))


def cell(run: RunData, key: str) -> str:
    """A table cell for metric `key` of `run`, tagged with the key and the exact value."""
    v = get(run.metrics, key)
    exact = "" if v is None else f' data-value="{html_attr(repr(v))}"'
    return (
        f'<td data-run="{html_attr(run.label)}" data-key="{html_attr(key)}"{exact}>'
        f"{fmt_num(v)}</td>"
    )


def run_header(runs: Sequence[RunData], first: str = "") -> str:
    heads = "".join(f'<th scope="col">{html_text(r.label)}</th>' for r in runs)
    return f"<thead><tr><th>{first}</th>{heads}</tr></thead>"


def metric_rows(runs: Sequence[RunData], rows: Sequence[tuple[str, str]]) -> str:
    return "".join(
        f'<tr><th scope="row">{name}</th>{"".join(cell(r, key) for r in runs)}</tr>'
        for key, name in rows
    )


BASE_NAMES = {"single": "β", "bayes": "ξ (Bayes mixture)", "pessimistic": "ν_α with help"}


def base_name(run: RunData) -> str:
    """The run's base as its config records it: β, ξ or ν_α with help."""
    kind = ((run.config or {}).get("base") or {}).get("kind", "single")
    return BASE_NAMES.get(kind, str(kind))


def policy_text(policy: str, runs: RunData | Sequence[RunData] | None = None) -> str:
    """Plain display name of a policy; "base" names the base of `runs` (one run, or several
    side by side: "base β / ν_α with help" when they differ)."""
    if policy == "base" and runs is not None:
        runs = [runs] if isinstance(runs, RunData) else list(runs)
        names = list(dict.fromkeys(base_name(r) for r in runs)) or ["β"]
        return "base " + " / ".join(names)
    return POLICY_NAME.get(policy, policy)


def policy_name(policy: str, runs: RunData | Sequence[RunData] | None = None) -> str:
    """HTML display name of a policy ("agent π", "base β", "τ", or the escaped name)."""
    return html_text(policy_text(policy, runs))


def set_title(policy: str, length: int, runs: Sequence[RunData] | None = None) -> str:
    return f"{policy_name(policy, runs)}, L = {length}"


# ----------------------------------------------------------------------------- sections

TRAINING_ROWS = (
    ("training.updates", "PPO updates"),
    ("training.agent_steps", "agent steps"),
    ("training.episodes", "training episodes"),
    ("training.reward.mean", "return, mean"),
    ("training.empty_turn_frac.mean", "empty-turn fraction, mean"),
    ("training.kl_to_base.exact.mean", "KL(π‖β) exact, mean per episode"),
)
SET_ROWS = (
    ("episodes", "episodes"),
    ("reward.mean", "return, mean"),
    ("reward.q50", "return, median"),
    ("empty_turn_frac.mean", "empty-turn fraction, mean"),
    ("kl_to_base.exact.mean", "KL(π‖β) exact, mean per episode"),
    ("kl_to_base.realized.mean", "KL(π‖β) realized (Σ log-ratio), mean"),
    ("kl_to_base.exact_max", "KL(π‖β) exact, max"),
    ("kl_to_base.over_budget_frac", "share of episodes over budget"),
    ("tau_support.violation_share", "τ-support violations (share of teacher turns)"),
    ("tau_support.kl_pi_tau_mean", "KL(π‖τ), mean per episode"),
    ("tau_support.kl_in_support_mean", "KL(π̃‖τ) over in-support turns, π̃ = π given τ's support"),
    ("tau_support.off_support_mass_mean", "mass π puts outside τ's support, mean per step"),
    ("help_rate", "help rate (share of agent steps)"),
)


HEADLINE = (
    ("reward.mean", "return"),
    ("empty_turn_frac.mean", "empty-turn fraction"),
    ("kl_to_base.exact.mean", "KL(π‖β) per episode"),
    ("tau_support.violation_share", "share of turns outside τ's support"),
)


def finding(r: RunData) -> str | None:
    """One sentence of what the run's agent did, built from its numbers: at the longest
    evaluation length, its empty-turn fraction and return beside its base's, the KL it
    spent of its budget, and its help rate where it has one."""
    sets = [s for s in (get(r.metrics, "eval") or {}).values() if isinstance(s, dict)]
    agent = [s for s in sets if s["policy"] == "agent"]
    if not agent:
        return None
    longest = max(s["length"] for s in agent)
    a = next(s for s in agent if s["length"] == longest)
    b = next((s for s in sets if s["policy"] == "base" and s["length"] == longest), {})
    cfg = r.config or {}
    penalty = (cfg.get("agent") or {}).get("kind") == "penalty"
    budget = (cfg.get("budget") or {}).get("total")
    steps = get(r.metrics, "training.agent_steps")
    held = (
        "under a KL penalty"
        if penalty
        else (f"held to {fmt_num(budget)} nats" if budget is not None else "with a KL budget")
    )
    against = f"against {base_name(r)}"
    text = (f"Trained {fmt_num(steps)} agent steps {held} {against}, the agent left "
            f"{_pct(get(a, 'empty_turn_frac.mean'))} of its teacher turns empty at "
            f"{longest} tokens (its base alone {_pct(get(b, 'empty_turn_frac.mean'))}), and "
            f"returned {fmt_num(get(a, 'reward.mean'))} (its base "
            f"{fmt_num(get(b, 'reward.mean'))}), spending "
            f"{fmt_num(get(a, 'kl_to_base.exact.mean'))} nats of KL per episode")  # fmt: skip
    if budget and not penalty and isinstance(get(a, "kl_to_base.exact.mean"), (int, float)):
        text += f" ({_pct(get(a, 'kl_to_base.exact.mean') / budget)} of its budget)"
    help_rate = get(a, "help_rate")
    if isinstance(help_rate, (int, float)) and not math.isnan(help_rate):
        text += f"; it asked τ for help on {_pct(help_rate)} of its steps"
    return html_text(text + ".")


def _pct(x: Any) -> str:
    if not isinstance(x, (int, float)) or math.isnan(x):
        return "—"
    return f"{100 * x:.1f}%"


def headline_section(runs: Sequence[RunData]) -> str:
    """Per run and policy, at the longest evaluation length: the four numbers that say what
    a policy does, before the details, after one sentence per run that says it in words."""
    rows = []
    for r in runs:
        sets = [s for s in (get(r.metrics, "eval") or {}).values() if isinstance(s, dict)]
        if not sets:
            continue
        longest = max(s["length"] for s in sets)
        for s in sorted((s for s in sets if s["length"] == longest),
                        key=lambda s: policy_rank(s["policy"])):  # fmt: skip
            values = "".join(
                f'<td data-headline="{html_attr(key)}">{fmt_num(get(s, key))}</td>'
                for key, _ in HEADLINE
            )
            rows.append(
                f'<tr><th scope="row">{html_text(r.label)}: {policy_name(s["policy"], r)}, '
                f"L = {longest}</th>{values}</tr>"
            )
    if not rows:
        return ""
    heads = "".join(f'<th scope="col">{name}</th>' for _, name in HEADLINE)
    found = "".join(
        f'<p class="finding"><strong>{html_text(r.label)}.</strong> {text}</p>'
        for r in runs
        if (text := finding(r))
    )
    return (
        f'<section id="headline"><h2>At a glance</h2>{found}<p>Each policy at the longest '
        "evaluation length; the summary below has the rest.</p>"
        f'<table class="summary"><thead><tr><th>policy</th>{heads}</tr></thead><tbody>'
        f"{''.join(rows)}</tbody></table></section>"
    )


def summary_section(runs: Sequence[RunData]) -> str:
    body = [f'<tr class="group"><th colspan="{len(runs) + 1}">training</th></tr>']
    body.append(metric_rows(runs, TRAINING_ROWS))
    for policy, length in eval_keys([(r.label, r.metrics) for r in runs]):
        prefix = f"eval.{policy}_L{length}."
        body.append(
            f'<tr class="group"><th colspan="{len(runs) + 1}">eval: '
            f"{set_title(policy, length, runs)}</th></tr>"
        )
        body.append(metric_rows(runs, [(prefix + k, name) for k, name in SET_ROWS]))
    policies = sorted(
        {p for r in runs for p in (get(r.metrics, "calibration") or {}) if p != "agent_minus_base"}
    )
    body.append(
        f'<tr class="group"><th colspan="{len(runs) + 1}">calibration (held-out '
        "log-loss, nats per teacher token)</th></tr>"
    )
    cal = [(f"calibration.{p}.loss", policy_name(p, runs)) for p in policies]
    body.append(metric_rows(runs, [*cal, ("calibration.agent_minus_base", "agent − base")]))
    return (
        '<section id="summary"><h2>Summary</h2>'
        "<p>One column per run. — means the records for a metric are absent.</p>"
        f'<table class="summary">{run_header(runs, "metric")}<tbody>{"".join(body)}'
        "</tbody></table></section>"
    )


def empty_frac_table(runs: Sequence[RunData]) -> str:
    rows = []
    for policy, length in eval_keys([(r.label, r.metrics) for r in runs]):
        key = f"eval.{policy}_L{length}.empty_turn_frac"
        cells = []
        for r in runs:
            st = get(r.metrics, key)
            text = (
                "—"
                if st is None
                else (
                    f"{fmt_num(st['mean'])} [{fmt_num(st['q25'])}, {fmt_num(st['q75'])}] "
                    f"<small>n={st['n']}</small>"
                )
            )
            cells.append(f"<td>{text}</td>")
        rows.append(
            f'<tr><th scope="row">{set_title(policy, length, runs)}</th>{"".join(cells)}</tr>'
        )
    return _table(runs, "eval set", rows, "mean [q25, q75] across episodes")


def kl_nth_table(runs: Sequence[RunData], max_n: int = 10) -> str:
    per_run = []
    for r in runs:
        s = shortest_set(r.metrics, "agent")
        per_run.append({row["n"]: row for row in (s or {}).get("kl_cost_nth_empty") or []})
    ns = sorted({n for d in per_run for n in d})[:max_n]
    rows = []
    for n in ns:
        cells = []
        for d in per_run:
            row = d.get(n)
            cells.append(
                "<td>—</td>"
                if row is None
                else (
                    f"<td>{fmt_num(row['q50'])} [{fmt_num(row['q25'])}, {fmt_num(row['q75'])}] "
                    f"<small>n={row['n_episodes']}</small></td>"
                )
            )
        rows.append(f'<tr><th scope="row">{n}</th>{"".join(cells)}</tr>')
    return _table(runs, "n", rows, "agent, shortest eval length: median [q25, q75] nats")


def length_table(runs: Sequence[RunData]) -> str:
    rows = [
        f"<tr><td>{html_text(r.label)}</td><td>{policy_name(e['policy'], r)}"
        f"</td><td>{e['L']}</td><td>{e['L2']}</td><td>{fmt_num(e['empty_frac_L'])}</td>"
        f"<td>{fmt_num(e['empty_frac_2L'])}</td><td>{fmt_num(e['delta'])}</td></tr>"
        for r in runs
        for e in r.metrics.get("length_effect") or []
    ]
    if not rows:
        return ""
    head = (
        "<tr><th>run</th><th>policy</th><th>L</th><th>2L</th><th>empty frac at L</th>"
        "<th>at 2L</th><th>2L − L</th></tr>"
    )
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def ledger_table(runs: Sequence[RunData]) -> str:
    parts = []
    for r in runs:
        ledgers = {
            p: (shortest_set(r.metrics, p) or {}).get("ledger") for p in ("tau", "base", "agent")
        }
        if not any(ledgers.values()):
            continue
        classes = sorted({c for led in ledgers.values() for c in led or {}})
        head = "".join(f"<th>{policy_name(p, r)}</th>" for p in ledgers)
        rows = "".join(
            f'<tr><th scope="row">{html_text(c)}</th>'
            + "".join(
                f"<td>{fmt_num(None if led is None else led.get(c, 0.0))}</td>"
                for led in ledgers.values()
            )
            + "</tr>"
            for c in classes
        )
        parts.append(
            f"<table><caption>{html_text(r.label)}</caption><thead><tr><th>class</th>{head}"
            f"</tr></thead><tbody>{rows}</tbody></table>"
        )
    return '<div class="tables">' + "".join(parts) + "</div>" if parts else ""


def repetition_table(runs: Sequence[RunData]) -> str:
    cols = [
        (r, p, (shortest_set(r.metrics, p) or {}).get("repetition"))
        for r in runs
        for p in ("agent", "base", "tau")
    ]
    cols = [c for c in cols if c[2]]
    if not cols:
        return ""
    head = "".join(f"<th>{html_text(r.label)}<br>{policy_name(p, r)}</th>" for r, p, _ in cols)
    rows = "".join(
        f'<tr><th scope="row">{n}</th>'
        + "".join(f"<td>{fmt_num(rep.get(str(n)))}</td>" for _, _, rep in cols)
        + "</tr>"
        for n in range(1, 11)
    )
    return f"<table><thead><tr><th>n</th>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _table(runs: Sequence[RunData], first: str, rows: list[str], caption: str) -> str:
    if not rows:
        return ""
    return (
        f"<table><caption>{caption}</caption>{run_header(runs, first)}"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


DESCRIPTIONS = {
    "training": "Return of training episodes in consecutive groups, in training order: median "
    "with the 10–90 % band; right: mean per-episode empty-turn fraction.",
    "empty_frac": "Empty teacher turns / completed teacher turns, per episode, for the agent "
    "π, the base policy β acting alone (budget 0) and the trusted policy τ.",
    "kl_nth_empty": "Σ KL(π‖β) over the tokens of the n-th empty turn of an episode, "
    "quartiles across the episodes that have at least n empty turns.",
    "length_effect": "Mean empty-turn fraction of the same policy at episode length L and 2L.",
    "ledger": "Share of teacher turns in each behaviour class (τ's classes, empty, novel) "
    "under τ, β and π.",
    "repetition": "Share of teacher n-grams (within a teacher turn, over token ids) that "
    "repeat an earlier teacher n-gram of the same transcript.",
    "calibration": "Mean −log p of each teacher token of held-out demonstrations under "
    "teacher forcing (nats per token).",
}
TABLES = {
    "empty_frac": empty_frac_table,
    "kl_nth_empty": kl_nth_table,
    "length_effect": length_table,
    "ledger": ledger_table,
    "repetition": repetition_table,
}


def plot_section(name: str, title: str, png: bytes | None, table: str) -> str:
    if png is None:
        fig = '<p class="none">No run has the records for this figure.</p>'
    else:
        data = base64.b64encode(png).decode("ascii")
        fig = f'<img alt="{html_attr(title)}" src="data:image/png;base64,{data}">'
    return (
        f'<section id="{name}"><h2>{html_text(title)}</h2>'
        f"<p>{html_text(DESCRIPTIONS.get(name, ''))}</p>{fig}{table}</section>"
    )


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables as dotted keys."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_section(runs: Sequence[RunData]) -> str:
    flat = [flatten(r.config) if r.config is not None else None for r in runs]
    keys = sorted({k for f in flat if f for k in f})
    missing = object()
    differ = (
        [k for k in keys if len({repr(f.get(k, missing)) if f else "?" for f in flat}) > 1]
        if len(runs) > 1
        else []
    )
    parts = ['<section id="config"><h2>Configuration</h2>']
    if differ:
        rows = "".join(
            f'<tr><th scope="row">{html_text(k)}</th>'
            + "".join(f"<td>{html_text(repr(f[k])) if f and k in f else '—'}</td>" for f in flat)
            + "</tr>"
            for k in differ
        )
        parts.append(
            f"<table><caption>keys that differ between runs</caption>"
            f"{run_header(runs, 'key')}<tbody>{rows}</tbody></table>"
        )
    elif len(runs) > 1:
        parts.append("<p>The runs' configurations do not differ.</p>")
    for r, f in zip(runs, flat, strict=True):
        if f is None:
            parts.append(f"<p>{html_text(r.label)}: no config.toml.</p>")
            continue
        rows = "".join(
            f'<tr><th scope="row">{html_text(k)}</th><td>{html_text(repr(v))}</td></tr>'
            for k, v in f.items()
        )
        parts.append(
            f"<details><summary>{html_text(r.label)}: full configuration</summary>"
            f"<table>{rows}</table></details>"
        )
    return "".join(parts) + "</section>"


# ----------------------------------------------------------------------------- transcripts


def kl_bin(kl: float) -> int:
    """Index of the colour bin of a per-token KL."""
    return bisect.bisect_right(KL_EDGES, kl)


def legend_html() -> str:
    labels = [f"&lt; {KL_EDGES[0]:g}"]
    labels += [f"{a:g} – {b:g}" for a, b in zip(KL_EDGES, KL_EDGES[1:], strict=False)]
    labels.append(f"≥ {KL_EDGES[-1]:g}")
    swatches = "".join(f'<span class="sw k{i}">{t}</span>' for i, t in enumerate(labels))
    return (
        '<div class="legend"><strong>KL(π‖β) of each teacher token, nats:</strong> '
        f'{swatches}<br><span class="prompt">prompt</span> '
        '<span class="student">student (not coloured)</span> '
        '<span class="turn teacher empty">empty teacher turn</span> '
        '<sup class="rw">r</sup> reward of a student reply '
        '<span class="tok help">token</span> written by the demonstrator (help) '
        '<span class="ctl">\\x07</span> <span class="ctl">↵</span> control characters '
        "shown as escapes</div>"
    )


def transcript_html(episode: Episode, fmt: ChatFormat | None = None) -> str:
    """The transcript as it was spoken, with each teacher token on a background coloured by
    its KL(π‖β); hover shows the exact numbers. All token text is escaped.

    A turn's box holds its content and the blank line that ends it, shown as one ¶; the
    speaker's tag the environment writes after it starts the next speaker's line. A reward
    stands after the student reply it pays for (the records file it under the agent's last
    token before that reply, where PPO credits it)."""
    fmt = fmt or ChatFormat()
    tokens = episode.tokens
    turns = split_turns(episode, fmt)
    paid: dict[int, float] = {}  # turn number → reward shown after that student turn
    for i, r in episode.rewards:
        k = next((k for k, t in enumerate(turns) if t.speaker == "student" and t.end > i), None)
        if k is not None:
            paid[k] = paid.get(k, 0.0) + r

    def token_span(i: int, text: str) -> str:
        t = tokens[i]
        tip = f"KL(π‖β) = {t.kl:.4g} nats, log-ratio = {t.log_ratio:.4g}"
        if t.kl_tau is not None:
            tip += f", KL(π‖τ) = {t.kl_tau:.4g}"
        if t.help:
            tip += ", written by the demonstrator"
        help_cls = " help" if t.help else ""
        return f'<span class="tok k{kl_bin(t.kl)}{help_cls}" title="{html_attr(tip)}">{text}</span>'

    parts: list[str] = []
    prompt = [i for i, t in enumerate(tokens) if t.speaker == "prompt"]
    if prompt:
        parts.append(
            f'<span class="prompt">{html_text("".join(tokens[i].text for i in prompt))}</span>'
        )
    for k, turn in enumerate(turns):
        cut, sep, before, after = _separator_span(tokens, turn.start, turn.end, fmt.separator)
        shown = []
        for i in range(turn.start, cut):
            if i not in sep:
                text = html_text(tokens[i].text)
            else:  # the blank line as one mark; a token's words before it stay
                text = html_text(before) if i == sep[0] else ""
                if i == sep[-1]:
                    text += '<span class="ctl" title="blank line">¶</span>'
            shown.append(token_span(i, text) if turn.speaker == "teacher" else text)
        if k in paid:
            mark = f'<sup class="rw">r {paid[k]:.3g}</sup>'
            shown.insert(len(shown) - len(sep) if sep and not before else len(shown), mark)
        cls = f"turn {turn.speaker}" + (" empty" if turn.empty else "")
        parts.append(f'<span class="{cls}">{"".join(shown)}</span>')
        if sep:
            parts.append("<br><br>")
        tag = after + "".join(tokens[i].text for i in range(cut, turn.end))
        if tag:  # the next speaker's tag, which the environment wrote
            nxt = "student" if turn.speaker == "teacher" else "teacher"
            parts.append(f'<span class="tag {nxt}">{html_text(tag)}</span>')
    return f'<div class="transcript">{"".join(parts)}</div>'


def _separator_span(
    tokens, start: int, end: int, separator: str
) -> tuple[int, list[int], str, str]:
    """Where the first separator in tokens[start:end] lies: (index after the token that
    completes it, the indices of the tokens that write it, the text of its first token
    before it, the text of its last token after it); (end, [], "", "") when there is none."""
    if not separator:
        return end, [], "", ""
    text, offsets = "", []
    for i in range(start, end):
        offsets.append(len(text))
        text += tokens[i].text
        pos = text.find(separator)
        if pos >= 0:
            first = max(k for k, off in enumerate(offsets) if off <= pos)
            sep = list(range(start + first, i + 1))
            return i + 1, sep, text[offsets[first] : pos], text[pos + len(separator) :]
    return end, [], "", ""


def transcripts_section(runs: Sequence[RunData], fmt: ChatFormat | None) -> str:
    parts = ['<section id="transcripts"><h2>Sample transcripts</h2>', legend_html()]
    for r in runs:
        fmt_r = fmt or r.fmt
        shown: set[str] = set()
        for source, e in r.samples:
            exact, realized = episode_kl(e)
            frac = empty_turn_fraction(e, fmt_r)
            head = (
                f"{html_text(r.label)} · {source} · {policy_name(e.policy, r)}"
                f" · L = {e.length} · episode {e.episode} · return {fmt_num(e.return_)}"
                f" · KL(π‖β) exact {fmt_num(exact)}, realized {fmt_num(realized)}"
                f" · empty-turn fraction {fmt_num(frac)}"
            )
            body = transcript_html(e, fmt_r)
            if e.policy not in shown:  # one transcript per policy in full, the rest folded
                shown.add(e.policy)
                parts.append(f"<h3>{head}</h3>{body}")
            else:
                parts.append(f"<details><summary>{head}</summary>{body}</details>")
        if not r.samples:
            parts.append(f"<p>{html_text(r.label)}: no episode records to show.</p>")
    return "".join(parts) + "</section>"


# ----------------------------------------------------------------------------- page

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 margin:0 auto;max-width:1200px;padding:1em 2em;color:#222;background:#fff}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;margin-top:1.6em}
h3{font-size:1em;font-weight:600;margin:1.2em 0 .3em}
nav a{margin-right:1em}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right;vertical-align:top}
th[scope=row],tbody th{text-align:left;font-weight:normal}
thead th{background:#f3f3f3}
caption{text-align:left;font-weight:600;padding:2px 0;white-space:nowrap}
tr.group th{background:#eef3fa;text-align:left;font-weight:600}
.tables{display:flex;flex-wrap:wrap;gap:1.5em}
img{max-width:100%;height:auto;display:block;margin:.4em 0}
.none,.notes{color:#777}
details{margin:.4em 0}summary{cursor:pointer}
.transcript{font:13px/1.9 ui-monospace,"DejaVu Sans Mono",monospace;white-space:pre-wrap;
 word-break:break-word;border:1px solid #ddd;padding:.6em;background:#fafafa}
.prompt{color:#888}.student,.turn.student{color:#1f4e8c}
.turn.teacher.empty{outline:2px dashed #c00;outline-offset:1px}
.tag{font-weight:600}.tag.student{color:#1f4e8c}.tag.teacher{color:#444}
.tok{border-radius:2px;box-shadow:inset -1px 0 0 rgba(0,0,0,.12)}
.tok.help{text-decoration:underline wavy #2a7}
.ctl{color:#a0a;background:#f4e8f4;font-size:.85em;border-radius:2px}
.rw{color:#070;font-size:.7em;margin-left:1px}
.legend{margin:.5em 0 1em;line-height:2.2}
.sw{padding:2px 6px;margin-right:2px;border:1px solid #ccc;font-size:12px}
""" + "".join(
    f".k{i}{{background:{c}{';color:#fff' if i in _DARK_BINS else ''}}}"
    for i, c in enumerate(KL_COLOURS)
)


HELP_STUDY_COLUMNS = (
    ("fraction", "share of the demonstrations"),
    ("transcripts", "transcripts"),
    ("help_rate", "help rate"),
    ("empty", "empty-turn fraction"),
    ("outside", "τ-support violations"),
    ("return", "return, mean"),
)


def help_study_section(runs: Sequence[RunData]) -> str:
    """The demo's help study (`help_study.json` beside the runs), when there is one."""
    parents = {r.path.resolve().parent for r in runs}
    path = parents.pop() / "help_study.json" if len(parents) == 1 else None
    if path is None or not path.is_file():
        return ""
    try:
        rows = json.loads(path.read_text())
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError("expected a list of objects")
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: {err}") from err
    head = "".join(f"<th>{html_text(t)}</th>" for _, t in HELP_STUDY_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{fmt_num(r.get(k))}</td>" for k, _ in HELP_STUDY_COLUMNS) + "</tr>"
        for r in rows
    )
    return (
        '<section id="help-study"><h2>Help rate and demonstration data</h2>'
        "<p>The pessimistic base ν_α acting alone (budget 0), with ensembles fitted on a share "
        "of the demonstrations.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></section>"
    )


def render(
    runs: Sequence[RunData], plots: dict[str, bytes | None], fmt: ChatFormat | None = None
) -> str:
    """The whole HTML page."""
    names = ", ".join(html_text(r.label) for r in runs)
    listing = "".join(
        f"<li><strong>{html_text(r.label)}</strong>: <code>{html_text(str(r.path))}</code>"
        + (f' <span class="notes">({html_text("; ".join(r.notes))})</span>' if r.notes else "")
        + "</li>"
        for r in runs
    )
    headline = headline_section(runs)
    sections = [headline, summary_section(runs), config_section(runs)]
    for name, title, _ in PLOTS:
        table = TABLES[name](runs) if name in TABLES else ""
        sections.append(plot_section(name, title, plots.get(name), table))
    study = help_study_section(runs)
    sections.append(study)
    sections.append(transcripts_section(runs, fmt))
    nav = "".join(
        f'<a href="#{n}">{html_text(t)}</a>'
        for n, t in [
            *([("headline", "At a glance")] if headline else []),
            ("summary", "Summary"),
            ("config", "Configuration"),
            *[(n, t) for n, t, _ in PLOTS],
            *([("help-study", "Help study")] if study else []),
            ("transcripts", "Transcripts"),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>klbudget report: {html.escape(visible(', '.join(r.label for r in runs)))}"
        f"</title><style>{STYLE}</style></head><body>"
        f"<h1>klbudget report</h1><p>Runs: {names}. Every number is recomputed from the run "
        f"folders' records.</p><ul>{listing}</ul><nav>{nav}</nav>"
        + "".join(sections)
        + "</body></html>\n"
    )


def build_report(
    run_dirs: Sequence[Path], out: Path, *, fmt: ChatFormat | None = None, n_samples: int = 2
) -> Path:
    """Write a self-contained HTML report comparing `run_dirs` to `out`, and its figures as
    PNG files to `<out_stem>_files/`. Returns `out`. ReportError for a bad run folder."""
    if not run_dirs:
        raise ReportError("no run folder given")
    out = Path(out)
    if out.is_dir():
        raise ReportError(f"{out}: is a directory, expected an .html file path")
    runs = [load_run(Path(p), fmt=fmt, n_samples=n_samples) for p in run_dirs]
    _unique_labels(runs)
    labelled = [(r.label, {**r.metrics, "base_name": base_name(r), "updates": _updates(r)})
                for r in runs]  # fmt: skip
    plots = {name: fn(labelled) for name, _, fn in PLOTS}
    page = render(runs, plots, fmt)  # before anything is written: a bad input writes nothing
    files = out.with_name(out.stem + "_files")
    files.mkdir(parents=True, exist_ok=True)
    for name, png in plots.items():
        target = files / f"{name}.png"
        if png is None:
            target.unlink(missing_ok=True)  # a figure from an older report would mislead
        else:
            target.write_bytes(png)
    write_text_atomic(out, page)
    return out
