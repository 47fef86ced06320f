"""Report figures drawn from metrics.json dictionaries (one per run), as PNG bytes.

Each function takes `[(run_label, metrics), ...]` as returned by
:func:`klbudget.evaluation.summary.compute_all` and returns PNG bytes, or None when no run
has the data. Runs are told apart by colour, one line (or bar) per run. Figures use the
object API with the Agg canvas, so no global pyplot state or display is involved.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from klbudget.report.escape import visible

RunMetrics = tuple[str, dict[str, Any]]
POLICY_ORDER = ("agent", "base", "tau")
POLICY_STYLE = {"agent": "-", "base": "--", "tau": ":"}
POLICY_NAME = {"agent": "agent π", "base": "base β", "tau": "τ"}
# Labels come from folder names and records: no mathtext, so "$" is just a dollar sign.
_RC = {"text.parse_math": False, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3}


def pname(policy: str, runs: Sequence[RunMetrics] | dict[str, Any]) -> str:
    """Display name of a policy; "base" names the base the runs record (`base_name`, set
    by the report from each run's config): β, ξ or ν_α with help, joined when they differ."""
    if policy != "base":
        return POLICY_NAME.get(policy, label(policy))
    metrics = [runs] if isinstance(runs, dict) else [mt for _, mt in runs]
    names = list(dict.fromkeys(mt.get("base_name", "β") for mt in metrics)) or ["β"]
    return "base " + " / ".join(names)


def colour(i: int) -> str:
    """Colour of the i-th run (matplotlib's tab10 cycle)."""
    return f"C{i % 10}"


def label(text: str) -> str:
    """A run or class name made safe and short for a figure."""
    return visible(text, limit=40)


def policy_rank(policy: str) -> tuple[int, str]:
    """Sort key: agent, base, tau, then any other policy by name."""
    return (
        (POLICY_ORDER.index(policy), "") if policy in POLICY_ORDER else (len(POLICY_ORDER), policy)
    )


def eval_keys(runs: Sequence[RunMetrics]) -> list[tuple[str, int]]:
    """(policy, length) of every eval set in any run: agent, base, tau, then by length."""
    keys = {(s["policy"], s["length"]) for _, mt in runs for s in mt.get("eval", {}).values()}
    return sorted(keys, key=lambda k: (k[1], policy_rank(k[0])))


def eval_set(mt: dict[str, Any], policy: str, length: int) -> dict[str, Any] | None:
    """The metrics of one eval set of a run, or None."""
    return mt.get("eval", {}).get(f"{policy}_L{length}")


def shortest_set(mt: dict[str, Any], policy: str) -> dict[str, Any] | None:
    """A policy's eval set at the shortest length the run has for it."""
    sets = [s for s in mt.get("eval", {}).values() if s["policy"] == policy]
    return min(sets, key=lambda s: s["length"]) if sets else None


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _band(ax: Axes, x: list, lo: list, hi: list, color: str, alpha: float) -> None:
    """A quantile band between ``lo`` and ``hi``."""
    ax.fill_between(x, lo, hi, color=color, alpha=alpha, linewidth=0)


def _legend(ax: Axes) -> None:
    """A legend when something was labelled (an empty one only draws a warning)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best")


def _render(draw: Callable[[Figure], bool], size: tuple[float, float]) -> bytes | None:
    """Draw on a fresh figure; PNG bytes, or None when `draw` found nothing to show."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=size, dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        if not draw(fig):
            return None
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    return buf.getvalue()


def budget_plot(runs: Sequence[RunMetrics]) -> bytes | None:
    """Per PPO update against agent steps (`metrics.jsonl`, as the report hands it over
    under "updates"): the KL spent per episode beside the budget in force (dashed), the
    return and the share of empty teacher turns."""

    def draw(fig: Figure) -> bool:
        ax_k, ax_r, ax_e = fig.subplots(1, 3)
        drawn = False
        for i, (name, mt) in enumerate(runs):
            rows = [r for r in mt.get("updates") or [] if _finite(r.get("time/agent_steps"))]
            if not rows:
                continue
            x = [r["time/agent_steps"] for r in rows]
            spent = [r.get("budget/spent", r.get("kl/episode_mean")) for r in rows]
            ax_k.plot(x, spent, ".-", color=colour(i), label=f"{label(name)}: spent")
            if any(_finite(r.get("budget/full")) for r in rows):
                ax_k.plot(x, [r.get("budget/full") for r in rows], "--", color=colour(i),
                          label=f"{label(name)}: budget")  # fmt: skip
            ax_r.plot(x, [r.get("reward/mean") for r in rows], ".-", color=colour(i))
            ax_e.plot(x, [r.get("episodes/empty_turn_frac") for r in rows], ".-", color=colour(i))
            drawn = True
        ax_k.set(title="KL per episode against the budget", xlabel="agent steps", ylabel="nats")
        ax_r.set(title="return per episode (mean)", xlabel="agent steps")
        ax_e.set(title="empty teacher turns (share)", xlabel="agent steps", ylim=(-0.02, 1.02))
        if drawn:
            _legend(ax_k)
        return drawn

    return _render(draw, (11.5, 3.4))


def training_plot(runs: Sequence[RunMetrics]) -> bytes | None:
    """Episode return over training (median line, 10–90 % band) and the mean empty-turn
    fraction over training, per run, from training episodes binned in order."""

    def draw(fig: Figure) -> bool:
        ax_r, ax_e = fig.subplots(1, 2)
        drawn = False
        for i, (name, mt) in enumerate(runs):
            tr = mt.get("training") or {}
            bins = tr.get("reward_over_training") or []
            if bins:
                x = [b["episode"] for b in bins]
                _band(ax_r, x, [b["q10"] for b in bins], [b["q90"] for b in bins], colour(i), 0.2)
                ax_r.plot(x, [b["q50"] for b in bins], ".-", color=colour(i), label=label(name))
                drawn = True
            ebins = tr.get("empty_turn_frac_over_training") or []
            if ebins:
                ax_e.plot(
                    [b["episode"] for b in ebins],
                    [b["mean"] for b in ebins],
                    ".-",
                    color=colour(i),
                    label=label(name),
                )
        ax_r.set(
            title="episode return (median, 10–90 % band)",
            xlabel="training episode",
            ylabel="return",
        )
        ax_e.set(
            title="empty-turn fraction (mean)",
            xlabel="training episode",
            ylabel="empty / completed teacher turns",
            ylim=(-0.02, 1.02),
        )
        _legend(ax_r)
        return drawn

    return _render(draw, (10, 3.6))


def empty_frac_plot(runs: Sequence[RunMetrics]) -> bytes | None:
    """Mean empty-turn fraction (bar) with its interquartile range across episodes (whisker)
    for every eval set (agent π, base β, τ at each length), one bar per run."""
    keys = eval_keys(runs)

    def draw(fig: Figure) -> bool:
        ax = fig.subplots()
        width = 0.8 / max(len(runs), 1)
        drawn = False
        for i, (name, mt) in enumerate(runs):
            xs, ys, lo, hi = [], [], [], []
            for k, (policy, length) in enumerate(keys):
                s = eval_set(mt, policy, length)
                st = s and s.get("empty_turn_frac")
                if st:
                    xs.append(k + (i - (len(runs) - 1) / 2) * width)
                    ys.append(st["mean"])
                    lo.append(max(st["mean"] - st["q25"], 0))
                    hi.append(max(st["q75"] - st["mean"], 0))
            if xs:
                ax.bar(
                    xs,
                    ys,
                    width=width,
                    color=colour(i),
                    label=label(name),
                    yerr=[lo, hi],
                    capsize=2,
                    error_kw={"elinewidth": 0.8},
                )
                drawn = True
        ax.set_xticks(range(len(keys)), [f"{pname(p, runs)}\nL={n}" for p, n in keys])
        ax.set(
            ylabel="empty / completed teacher turns",
            ylim=(0, 1.05),
            title="empty-turn fraction per episode (mean, IQR whiskers)",
        )
        _legend(ax)
        return drawn

    return _render(draw, (8, 3.6))


def kl_nth_empty_plot(runs: Sequence[RunMetrics]) -> bytes | None:
    """The realized cost (Σ log-ratio, left) and the exact KL (right) paid for the n-th empty
    turn of an episode against n: median line and interquartile band across episodes, per
    run and agent eval length."""

    def draw(fig: Figure) -> bool:
        axes = fig.subplots(1, 2)
        drawn = False
        for ax, key, ylabel, title in (
            (axes[0], "realized_cost_nth_empty", "Σ log π/β over the turn (nats)",
             "realized cost of the n-th empty turn"),
            (axes[1], "kl_cost_nth_empty", "Σ KL(π‖β) over the turn (nats)",
             "exact KL of the n-th empty turn"),
        ):  # fmt: skip
            drawn = _nth_empty_panel(ax, runs, key) or drawn
            ax.set(xlabel="n (n-th empty turn of the episode)", ylabel=ylabel,
                   title=f"{title} (median, IQR)")  # fmt: skip
        _legend(axes[0])
        return drawn

    return _render(draw, (11, 3.8))


def _nth_empty_panel(ax: Axes, runs: Sequence[RunMetrics], key: str) -> bool:
    """One panel of :func:`kl_nth_empty_plot`; whether anything was drawn."""
    drawn = False
    for i, (name, mt) in enumerate(runs):
        for j, s in enumerate(
            sorted(
                (s for s in mt.get("eval", {}).values() if s["policy"] == "agent"),
                key=lambda s: s["length"],
            )
        ):
            rows = s.get(key) or []
            if not rows:
                continue
            n = [r["n"] for r in rows]
            style = ("-", "--", ":", "-.")[j % 4]
            _band(ax, n, [r["q25"] for r in rows], [r["q75"] for r in rows], colour(i), 0.15)
            ax.plot(
                n,
                [r["q50"] for r in rows],
                style,
                marker="o",
                markersize=3,
                color=colour(i),
                label=f"{label(name)} L={s['length']}",
            )
            drawn = True
    return drawn


def length_effect_plot(runs: Sequence[RunMetrics]) -> bytes | None:
    """Mean empty-turn fraction at episode length L and 2L for the same policy, per run."""

    def draw(fig: Figure) -> bool:
        ax = fig.subplots()
        drawn = False
        for i, (name, mt) in enumerate(runs):
            for row in mt.get("length_effect") or []:
                ax.plot(
                    [row["L"], row["L2"]],
                    [row["empty_frac_L"], row["empty_frac_2L"]],
                    POLICY_STYLE.get(row["policy"], "-."),
                    marker="o",
                    color=colour(i),
                    label=f"{label(name)}: {pname(row['policy'], mt)}",
                )
                drawn = True
        lengths = sorted(
            {x for _, mt in runs for r in mt.get("length_effect") or [] for x in (r["L"], r["L2"])}
        )
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.set(
            xlabel="episode length (tokens)",
            ylabel="empty-turn fraction (mean)",
            ylim=(-0.02, 1.02),
            title="length effect: empty turns at L and 2L",
        )
        _legend(ax)
        return drawn

    return _render(draw, (7, 3.6))


def ledger_plot(runs: Sequence[RunMetrics]) -> bytes | None:
    """Behaviour ledger: share of teacher turns per class under τ, base β and agent π (at the
    shortest eval length of each), one panel per run."""
    have = [
        (n, mt)
        for n, mt in runs
        if any((s := shortest_set(mt, p)) and s.get("ledger") for p in POLICY_ORDER)
    ]

    def draw(fig: Figure) -> bool:
        if not have:
            return False
        axes = fig.subplots(1, len(have), squeeze=False)[0]
        for ax, (name, mt) in zip(axes, have, strict=True):
            ledgers = {
                p: (shortest_set(mt, p) or {}).get("ledger") or {} for p in ("tau", "base", "agent")
            }
            classes = sorted({c for led in ledgers.values() for c in led})
            width = 0.8 / 3
            for j, (p, led) in enumerate(ledgers.items()):
                ax.bar(
                    [k + (j - 1) * width for k in range(len(classes))],
                    [led.get(c, 0.0) for c in classes],
                    width=width,
                    label=pname(p, mt),
                    color=("0.55", "C0", "C3")[j],
                )
            ax.set_xticks(range(len(classes)), [label(c) for c in classes], rotation=30, ha="right")
            ax.set(title=label(name), ylabel="share of teacher turns", ylim=(0, 1.05))
            _legend(ax)
        return True

    return _render(draw, (max(5.0, 4.5 * len(have)), 3.8))


def repetition_plot(runs: Sequence[RunMetrics]) -> bytes | None:
    """Share of teacher n-grams repeating an earlier one in the transcript against n, per run
    (colour) and policy (line style), at each policy's shortest eval length."""

    def draw(fig: Figure) -> bool:
        ax = fig.subplots()
        drawn = False
        for i, (name, mt) in enumerate(runs):
            for p in POLICY_ORDER:
                s = shortest_set(mt, p)
                rep = (s or {}).get("repetition") or {}
                pts = [(int(n), v) for n, v in rep.items() if _finite(v)]
                if pts:
                    ax.plot(
                        [n for n, _ in pts],
                        [v for _, v in pts],
                        POLICY_STYLE[p],
                        marker=".",
                        color=colour(i),
                        label=f"{label(name)}: {pname(p, mt)}",
                    )
                    drawn = True
        ax.set_xticks(range(1, 11))
        ax.set(
            xlabel="n",
            ylabel="repeated / all teacher n-grams",
            ylim=(-0.02, 1.02),
            title="n-gram repetition",
        )
        _legend(ax)
        return drawn

    return _render(draw, (7, 3.6))


def calibration_plot(runs: Sequence[RunMetrics]) -> bytes | None:
    """Held-out log-loss (nats per teacher token) of each policy, one bar group per run."""

    def draw(fig: Figure) -> bool:
        ax = fig.subplots()
        policies = sorted(
            {
                p
                for _, mt in runs
                for p, v in (mt.get("calibration") or {}).items()
                if isinstance(v, dict)
            },
            key=policy_rank,
        )
        width = 0.8 / max(len(policies), 1)
        drawn = False
        for j, p in enumerate(policies):
            xs, ys = [], []
            for i, (_, mt) in enumerate(runs):
                loss = ((mt.get("calibration") or {}).get(p) or {}).get("loss")
                if _finite(loss):
                    xs.append(i + (j - (len(policies) - 1) / 2) * width)
                    ys.append(loss)
            if xs:
                ax.bar(xs, ys, width=width, label=pname(p, runs))
                drawn = True
        ax.set_xticks(range(len(runs)), [label(n) for n, _ in runs])
        ax.set(ylabel="nats per teacher token", title="calibration: held-out log-loss")
        _legend(ax)
        return drawn

    return _render(draw, (max(5.0, 1.6 * len(runs) + 3), 3.6))


# (file stem, section title, function): the report's figures in order.
PLOTS: tuple[tuple[str, str, Callable[[Sequence[RunMetrics]], bytes | None]], ...] = (
    ("budget", "KL spent against the budget over training", budget_plot),
    ("training", "Reward over training", training_plot),
    ("empty_frac", "Empty-turn fraction: agent, base, τ", empty_frac_plot),
    ("kl_nth_empty", "KL cost of the n-th empty turn", kl_nth_empty_plot),
    ("length_effect", "Length effect", length_effect_plot),
    ("ledger", "Behaviour ledger", ledger_plot),
    ("repetition", "n-gram repetition", repetition_plot),
    ("calibration", "Calibration loss", calibration_plot),
)
