"""The measurements of docs/design.md, "Metrics" as pure functions of saved records.

Records in (:class:`Episode`, :class:`Heldout` from :mod:`klbudget.evaluation.records`),
numbers out: nothing here reads files, logs or touches a trainer, so every number in a
report can be rebuilt from a run folder alone. A metric whose inputs are absent (an optional
annotation that was not written, a set with no teacher turns) is `None`, never an error.

Conventions: KL and log-losses are in nats; "share" means a pooled ratio of counts over all
given episodes; quantiles use linear interpolation (numpy's default).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from klbudget.envs.format import ChatFormat
from klbudget.evaluation.records import Episode, Heldout, Turn, split_turns

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
QUARTILES = (0.25, 0.5, 0.75)
NGRAM_SIZES = tuple(range(1, 11))
# Relative slack when checking an episode's KL against its budget: the trainer's own sums
# are float32, so an exact-budget episode may exceed it by round-off.
_BUDGET_SLACK = 1e-5


# ----------------------------------------------------------------------------- helpers


def quantiles(values: Sequence[float], qs: Sequence[float] = QUANTILES) -> dict[str, float]:
    """Quantiles q of `values` keyed "q10", "q25", ... (linear interpolation); {} when empty."""
    if len(values) == 0:
        return {}
    got = np.quantile(np.asarray(values, dtype=float), list(qs))
    return {f"q{round(q * 100)}": float(v) for q, v in zip(qs, got, strict=True)}


def describe(values: Sequence[float], qs: Sequence[float] = QUANTILES) -> dict[str, float] | None:
    """{"n", "mean", "q10", ...} of `values`; None when there are none."""
    if len(values) == 0:
        return None
    return {"n": len(values), "mean": float(np.mean(values)), **quantiles(values, qs)}


def teacher_turns(episode: Episode, fmt: ChatFormat | None = None) -> list[Turn]:
    """The teacher turns of an episode (runs of agent tokens), in order."""
    return [t for t in split_turns(episode, fmt) if t.speaker == "teacher"]


def binned(
    episodes: Sequence[Episode],
    value: Callable[[Episode], float | None],
    n_bins: int = 20,
    qs: Sequence[float] = (0.1, 0.5, 0.9),
) -> list[dict[str, float]]:
    """Split episodes, ordered by their counter, into `n_bins` consecutive groups of (nearly)
    equal size and describe `value` in each: the curve "over training" of a per-episode value.

    Each bin reports `episode` (the last episode counter in it), `n`, `mean` and quantiles.
    Episodes whose value is None are left out of their bin.
    """
    ordered = sorted(episodes, key=lambda e: e.episode)
    out: list[dict[str, float]] = []
    if not ordered:
        return out
    for chunk in np.array_split(np.arange(len(ordered)), min(n_bins, len(ordered))):
        if len(chunk) == 0:
            continue
        vals = [v for k in chunk if (v := value(ordered[int(k)])) is not None]
        stats = describe(vals, qs)
        if stats is not None:
            out.append({"episode": ordered[int(chunk[-1])].episode, **stats})
    return out


# ----------------------------------------------------------------------------- reward


def reward_summary(episodes: Sequence[Episode]) -> dict[str, float] | None:
    """Mean episode return (undiscounted sum of rewards) and its quantiles across episodes."""
    return describe([e.return_ for e in episodes])


def replies_summary(episodes: Sequence[Episode]) -> dict[str, float] | None:
    """Paid student replies per episode (each finished reply earns one reward) and quantiles:
    how much the student talked."""
    return describe([float(len(e.rewards)) for e in episodes])


def reward_over_training(episodes: Sequence[Episode], n_bins: int = 20) -> list[dict[str, float]]:
    """Quantiles (10/50/90 %) and mean of the episode return in `n_bins` consecutive groups
    of training episodes, in training order."""
    return binned(episodes, lambda e: e.return_, n_bins)


# ----------------------------------------------------------------------------- empty turns


def empty_turn_fraction(episode: Episode, fmt: ChatFormat | None = None) -> float | None:
    """(empty teacher turns) / (completed teacher turns) of one episode; None when no teacher
    turn was completed. A teacher turn is completed when its hand-over to the student was
    written; it is empty when it has no content (docs/design.md, "Empty response")."""
    done = [t for t in teacher_turns(episode, fmt) if t.completed]
    if not done:
        return None
    return sum(t.empty for t in done) / len(done)


def empty_turn_summary(
    episodes: Sequence[Episode], fmt: ChatFormat | None = None
) -> dict[str, float] | None:
    """Mean and quantiles across episodes of the per-episode empty-turn fraction; episodes
    without a completed teacher turn are left out (`n` counts the episodes used)."""
    fracs = [f for e in episodes if (f := empty_turn_fraction(e, fmt)) is not None]
    return describe(fracs)


def empty_turn_kl_costs(
    episode: Episode, fmt: ChatFormat | None = None, realized: bool = False
) -> list[float]:
    """[c_1, c_2, ...] with c_n the cost of the n-th empty teacher turn of the episode:
    Σ_t KL(π_t‖β_t) over its tokens (exact per-token KL, the record's `kl`), or with
    ``realized`` Σ_t log π_t(y_t)/β_t(y_t) (the record's `log_ratio`), what the paper's budget
    charges for the tokens actually written."""
    return [
        sum(tok.log_ratio if realized else tok.kl for tok in episode.tokens[t.start : t.end])
        for t in teacher_turns(episode, fmt)
        if t.empty
    ]


def kl_cost_by_empty_index(
    episodes: Sequence[Episode], fmt: ChatFormat | None = None, realized: bool = False
) -> list[dict[str, float]]:
    """For n = 1, 2, ...: quartiles across episodes of the cost of the n-th empty turn
    (exact KL, or realized log-ratio, see :func:`empty_turn_kl_costs`), over the episodes
    that have at least n empty turns (`n_episodes` of them).

    docs/design.md, "The question": most KL is paid for the first empty turns, later ones get cheap.
    """
    by_n: dict[int, list[float]] = {}
    for e in episodes:
        for n, cost in enumerate(empty_turn_kl_costs(e, fmt, realized), start=1):
            by_n.setdefault(n, []).append(cost)
    return [
        {"n": n, "n_episodes": len(c), "mean": float(np.mean(c)), **quantiles(c, QUARTILES)}
        for n, c in sorted(by_n.items())
    ]


def length_effect(
    short: Sequence[Episode], long: Sequence[Episode], fmt: ChatFormat | None = None
) -> dict[str, float] | None:
    """Mean empty-turn fraction of the same policy at episode length L (`short`) and 2L
    (`long`), and their difference 2L − L; None when either side has no completed turn."""
    a, b = empty_turn_summary(short, fmt), empty_turn_summary(long, fmt)
    if a is None or b is None:
        return None
    return {"empty_frac_L": a["mean"], "empty_frac_2L": b["mean"], "delta": b["mean"] - a["mean"]}


# ----------------------------------------------------------------------------- KL(π‖β)


def episode_kl(episode: Episode) -> tuple[float, float]:
    """(exact, realized) KL(π‖β) of one episode: exact = Σ_t KL(π_t‖β_t) (the chain rule of
    KL makes this the episode-level KL), realized = Σ_t log π_t(a_t)/β_t(a_t), a one-sample
    estimate of the same. Sums run over agent tokens; other tokens carry 0 by the schema."""
    agent = [t for t in episode.tokens if t.speaker == "agent"]
    return sum(t.kl for t in agent), sum(t.log_ratio for t in agent)


def episode_kl_summary(episodes: Sequence[Episode]) -> dict[str, object] | None:
    """Across episodes: the exact and realized KL(π‖β) described, the largest exact KL, and
    the share of episodes whose exact KL exceeds their budget (None for τ, which plays
    without a budget)."""
    if not episodes:
        return None
    pairs = [episode_kl(e) for e in episodes]
    exact = [p[0] for p in pairs]
    over = [
        x > e.budget * (1 + _BUDGET_SLACK) + _BUDGET_SLACK
        for x, e in zip(exact, episodes, strict=True)
    ]
    return {
        "exact": describe(exact),
        "realized": describe([p[1] for p in pairs]),
        "exact_max": max(exact),
        "over_budget_frac": None
        if all(e.policy == "tau" for e in episodes)
        else sum(over) / len(over),
    }


# ----------------------------------------------------------------------------- τ


def tau_support(episode: Episode) -> dict[str, float] | None:
    """τ-support of one episode from its `turns` annotation (docs/design.md, "Metrics").

    Returns `judged` (teacher turns with a known `in_support`), `violations` (those with
    in_support false: turns τ could never produce), `kl_in_support` = Σ KL(π̃_t‖τ_t) over the
    agent tokens of in-support teacher turns, where π̃_t is π_t conditioned on τ_t's support
    (`kl_tau_in`; it equals KL(π_t‖τ_t) when π_t stays inside, and a token without it counts
    its `kl_tau`; None when neither is recorded there), and `kl_pi_tau` = inf when
    violations > 0, else `kl_in_support`.
    None when the episode has no annotation.
    """
    if episode.turns is None:
        return None
    notes = [n for n in episode.turns if n.speaker == "teacher" and n.in_support is not None]
    violations = sum(not n.in_support for n in notes)
    kl_in: float | None = 0.0
    for note in notes:
        if not note.in_support:
            continue
        for tok in episode.tokens[note.start : note.end]:
            if tok.speaker != "agent":
                continue
            value = tok.kl_tau if tok.kl_tau_in is None else tok.kl_tau_in
            if value is None or math.isnan(value):
                kl_in = None
                break
            kl_in += value
        if kl_in is None:
            break
    kl_pi_tau = math.inf if violations > 0 else kl_in
    return {
        "judged": len(notes),
        "violations": violations,
        "kl_in_support": kl_in,
        "kl_pi_tau": kl_pi_tau,
    }


def tau_support_summary(episodes: Sequence[Episode]) -> dict[str, float] | None:
    """Pooled τ-support over episodes.

    `violation_share` = violating teacher turns / judged teacher turns;
    `episodes_with_violation` = share of episodes with at least one violation;
    `kl_pi_tau_mean` = mean over episodes of KL(π‖τ): inf as soon as any episode violates;
    `kl_in_support_mean` = mean over episodes of the in-support part;
    `off_support_mass_mean` = mean over agent tokens of the mass π_t put outside τ_t's
    support (`tau_out`; None when not recorded).
    None when no episode has a judged teacher turn.
    """
    per = [s for e in episodes if (s := tau_support(e)) is not None and s["judged"] > 0]
    if not per:
        return None
    judged = sum(s["judged"] for s in per)
    violations = sum(s["violations"] for s in per)
    kl_in = [s["kl_in_support"] for s in per]
    kl_in_mean = None if any(k is None for k in kl_in) else float(np.mean(kl_in))
    out = [t.tau_out for e in episodes for t in e.tokens if t.speaker == "agent"]
    out = [x for x in out if x is not None and not math.isnan(x)]
    return {
        "judged_turns": judged,
        "violation_share": violations / judged,
        "episodes_with_violation": sum(s["violations"] > 0 for s in per) / len(per),
        "kl_pi_tau_mean": math.inf if violations > 0 else kl_in_mean,
        "kl_in_support_mean": kl_in_mean,
        "off_support_mass_mean": float(np.mean(out)) if out else None,
    }


def behaviour_ledger(episodes: Sequence[Episode]) -> dict[str, float] | None:
    """Share of annotated teacher turns in each behaviour class (τ's own classes, "empty",
    "novel"), pooled over episodes; classes sorted by name. None without annotations."""
    counts: Counter[str] = Counter()
    for e in episodes:
        for note in e.turns or ():
            if note.speaker == "teacher" and note.cls is not None:
                counts[note.cls] += 1
    total = sum(counts.values())
    if total == 0:
        return None
    return {c: counts[c] / total for c in sorted(counts)}


def role_swap(episodes: Sequence[Episode]) -> dict[str, float | int | None] | None:
    """How often the student's reply is a turn τ could have written as the teacher (its
    exact words: `tau_pool` of the turn notes), for the replies right after an empty
    teacher turn and after any other teacher turn, pooled over episodes; None without
    annotations. A base that answers silence by writing the teacher's lines in the
    student's place shows a high share after empty turns."""
    counts = {True: [0, 0], False: [0, 0]}  # after an empty turn? → [in τ's pool, replies]
    annotated = False
    for e in episodes:
        previous = None
        for note in e.turns or ():
            if note.speaker == "student" and note.tau_pool is not None:
                annotated = True
                if previous is not None and previous.empty is not None:
                    c = counts[bool(previous.empty)]
                    c[0] += int(note.tau_pool)
                    c[1] += 1
            previous = note if note.speaker == "teacher" else None
    if not annotated:
        return None
    return {
        "after_empty": counts[True][0] / counts[True][1] if counts[True][1] else None,
        "after_other": counts[False][0] / counts[False][1] if counts[False][1] else None,
        "replies_after_empty": counts[True][1],
        "replies_after_other": counts[False][1],
    }


# ----------------------------------------------------------------------------- repetition


def teacher_id_runs(episode: Episode) -> list[list[int]]:
    """Token ids of each teacher turn (maximal run of agent tokens), in order."""
    runs: list[list[int]] = []
    previous = None
    for tok in episode.tokens:
        if tok.speaker == "agent":
            if previous != "agent":
                runs.append([])
            runs[-1].append(tok.id)
        previous = tok.speaker
    return runs


def _count_repeats(runs: list[list[int]], n: int) -> tuple[int, int]:
    seen: set[tuple[int, ...]] = set()
    repeats = total = 0
    for ids in runs:
        for k in range(len(ids) - n + 1):
            gram = tuple(ids[k : k + n])
            total += 1
            if gram in seen:
                repeats += 1
            else:
                seen.add(gram)
    return repeats, total


def repetition_counts(episode: Episode, n: int) -> tuple[int, int]:
    """(repeats, total) teacher n-grams of one episode.

    A teacher n-gram is n consecutive transcript tokens all written by the teacher, i.e.
    inside one teacher turn: tokens of two turns were never adjacent, so no n-gram spans a
    turn boundary. It repeats when the same token ids occurred as a teacher n-gram starting
    earlier in the same transcript. The hand-over tokens are teacher tokens and count too.
    """
    return _count_repeats(teacher_id_runs(episode), n)


def repetition(
    episodes: Sequence[Episode], sizes: Sequence[int] = NGRAM_SIZES
) -> dict[str, float | None]:
    """For each n in `sizes`: repeating teacher n-grams / all teacher n-grams (as in
    :func:`repetition_counts`), pooled over episodes (keys are str(n)); None for an n with no
    teacher n-gram at all."""
    per_episode = [teacher_id_runs(e) for e in episodes]
    out: dict[str, float | None] = {}
    for n in sizes:
        counts = [_count_repeats(runs, n) for runs in per_episode]
        total = sum(c[1] for c in counts)
        out[str(n)] = sum(c[0] for c in counts) / total if total else None
    return out


# ----------------------------------------------------------------------------- other


def calibration_loss(records: Sequence[Heldout]) -> float | None:
    """Log-loss on held-out demonstrations: mean over all teacher tokens of −log p(token)
    under teacher forcing (nats per token, pooled over transcripts); None with no token."""
    logps = [lp for r in records for lp in r.teacher_logp]
    if not logps:
        return None
    return -float(np.mean(logps))


def help_rate(episodes: Sequence[Episode]) -> float | None:
    """Share of agent steps at which the demonstrator was asked to act (`help` true), over
    agent tokens that carry the annotation; None when none does (no pessimistic base)."""
    flags = [t.help for e in episodes for t in e.tokens if t.speaker == "agent"]
    known = [f for f in flags if f is not None]
    if not known:
        return None
    return sum(known) / len(known)
