"""The frontier page of `klbudget frontier`: return and empty-turn fraction against mean
KL(π‖β), one curve per method (after Gao, Schulman, Hilton 2022), and the table.

Self-contained and inert like the run report (klbudget.report.html): inline CSS, figures as
base64 PNG data URLs, no JavaScript, a Content-Security-Policy that forbids any.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from klbudget.evaluation.summary import write_text_atomic
from klbudget.report.html import CSP, STYLE
from klbudget.report.plots import _legend, _render, colour

METHOD_NAME = {
    "budget": "budget agent (B)",
    "fixed": "KL penalty, fixed λ",
    "adaptive": "KL penalty, adaptive λ (target)",
    "best_of_n": "best-of-n (n)",
}
REFERENCE = {"base": ("β", "s"), "tau": ("τ", "*")}
HEADERS = (
    ("method", "method", None), ("value", "setting", "g"), ("return", "return", ".2f"),
    ("kl_mean", "KL(π‖β) mean", ".2f"), ("kl_max", "max", ".2f"),
    ("empty_frac", "empty", ".3f"), ("tau_outside", "∉supp τ", ".3f"),
    ("kl_tau_in", "KL(π̃‖τ) in supp", ".2f"), ("calibration", "calibration", ".3f"),
    ("budget_equiv", "B* at equal KL", ".2f"), ("over_budget", "episodes > B*", ".2f"),
)  # fmt: skip


def _curve(rows: Sequence[dict], method: str, key: str) -> tuple[list, list, list]:
    pts = sorted(
        (r["kl_mean"], r[key], r["value"])
        for r in rows
        if r["method"] == method and math.isfinite(r["kl_mean"]) and math.isfinite(r[key])
    )
    return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]


def frontier_plot(rows: Sequence[dict], key: str, ylabel: str) -> bytes | None:
    """``key`` against mean KL(π‖β) per method; β and τ as single points."""

    def draw(fig: Figure) -> bool:
        ax = fig.add_subplot()
        drawn = False
        for i, method in enumerate(METHOD_NAME):
            x, y, v = _curve(rows, method, key)
            if not x:
                continue
            ax.plot(x, y, "-o", color=colour(i), label=METHOD_NAME[method], markersize=4)
            for xi, yi, vi in zip(x, y, v, strict=True):
                ax.annotate(f"{vi:g}", (xi, yi), fontsize=7, xytext=(3, 3),
                            textcoords="offset points", color=colour(i))  # fmt: skip
            drawn = True
        for method, (name, marker) in REFERENCE.items():
            for r in rows:
                if r["method"] == method and math.isfinite(r[key]) and math.isfinite(r["kl_mean"]):
                    ax.plot([r["kl_mean"]], [r[key]], marker, color="black", label=name)
        ax.set_xlabel("mean exact KL(π‖β) per episode, nats")
        ax.set_ylabel(ylabel)
        _legend(ax)
        return drawn

    return _render(draw, (6.4, 4.0))


def _cell(value: object, spec: str | None) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        return format(0.0 if abs(value) < 5e-4 and spec != "g" else value, spec or "g")
    return html.escape(str(value))


def frontier_report(rows: Sequence[dict], out: Path, minutes: float | None = None) -> Path:
    """Write the frontier page to ``out`` and its figures to ``<stem>_files/``."""
    plots = {
        "frontier_return": frontier_plot(rows, "return", "episode return"),
        "frontier_empty": frontier_plot(rows, "empty_frac", "empty teacher turns / teacher turns"),
        "frontier_outside": frontier_plot(rows, "tau_outside", "turns outside τ's support"),
    }
    files = out.with_name(out.stem + "_files")
    files.mkdir(parents=True, exist_ok=True)
    figs = []
    for name, png in plots.items():
        if png is None:
            continue
        (files / f"{name}.png").write_bytes(png)
        data = base64.b64encode(png).decode("ascii")
        figs.append(f'<figure><img alt="{name}" src="data:image/png;base64,{data}"></figure>')
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in HEADERS)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(r.get(k), spec)}</td>" for k, _, spec in HEADERS) + "</tr>"
        for r in rows
    )
    took = f" ({minutes:.1f} min)" if minutes is not None else ""
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
        f"<title>klbudget frontier</title><style>{STYLE}</style></head><body>"
        f"<h1>Return–KL frontier{html.escape(took)}</h1>"
        "<p>Every policy played the same evaluation episodes; every KL is exact, from the "
        "records. Best-of-n: the exact KL of best-of-n under the β pool's empirical return "
        "distribution; its largest per-episode log-ratio is log n. B*: the budget at which "
        "the budget agents' mean KL equals the penalty agent's; 'episodes &gt; B*': the share "
        "of its episodes whose KL exceeds B*.</p>"
        + "".join(figs)
        + f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>"
    )
    write_text_atomic(out, page)
    return out
