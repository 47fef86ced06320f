"""Every metric (docs/design.md, "Metrics") on hand-made transcripts whose answers are worked out by
hand."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from klbudget.evaluation import metrics as m
from klbudget.evaluation.handmade import HAND_BACK, HAND_OVER, EpisodeBuilder
from klbudget.evaluation.records import Episode, Heldout, parse_episode


def episode(b: EpisodeBuilder) -> Episode:
    return parse_episode(b.record())


def chat(*empty_costs_or_content: float | str, episode_id: int = 0) -> Episode:
    """Teacher turns each followed by a student reply: a float is an empty turn costing that
    much KL (on its hand-over token), a string a one-token content turn with KL 0.1 per token."""
    b = EpisodeBuilder(episode=episode_id)
    for turn in empty_costs_or_content:
        if isinstance(turn, str):
            b.teacher([turn, HAND_OVER], kl=0.1)
        else:
            b.teacher([HAND_OVER], kl=[turn])
        b.student([" ok", HAND_BACK])
    return episode(b)


# ----------------------------------------------------------------------------- helpers


def test_quantiles_and_describe() -> None:
    assert m.quantiles([1.0, 2.0, 3.0, 4.0, 5.0]) == {
        "q10": 1.4, "q25": 2.0, "q50": 3.0, "q75": 4.0, "q90": pytest.approx(4.6)
    }  # fmt: skip
    assert m.describe([]) is None
    assert m.describe([2.0, 4.0]) == pytest.approx(
        {"n": 2, "mean": 3.0, "q10": 2.2, "q25": 2.5, "q50": 3.0, "q75": 3.5, "q90": 3.8}
    )


# ----------------------------------------------------------------------------- reward


def test_reward_summary_uses_episode_returns() -> None:
    eps = []
    for k, r in enumerate([1.0, 2.0, 3.0, 4.0]):
        b = EpisodeBuilder(episode=k)
        b.teacher([" a", HAND_OVER], reward=r / 2).student([" b", HAND_BACK])
        b.teacher([HAND_OVER], reward=r / 2)
        eps.append(episode(b))
    s = m.reward_summary(eps)
    assert s is not None and s["mean"] == 2.5 and s["q50"] == 2.5 and s["n"] == 4
    assert m.reward_summary([]) is None


def test_reward_over_training_bins_in_episode_order() -> None:
    def ep(k: int, r: float) -> Episode:
        return episode(EpisodeBuilder(episode=k).teacher([HAND_OVER], reward=r))

    # Given out of order: the bins follow the episode counter, not list order.
    eps = [ep(3, 40.0), ep(0, 10.0), ep(2, 30.0), ep(1, 20.0)]
    bins = m.reward_over_training(eps, n_bins=2)
    assert [b["episode"] for b in bins] == [1, 3]
    assert [b["mean"] for b in bins] == [15.0, 35.0]
    assert [b["n"] for b in bins] == [2, 2]
    assert bins[0]["q10"] == pytest.approx(11.0) and bins[1]["q90"] == pytest.approx(39.0)


# ----------------------------------------------------------------------------- empty turns


def test_empty_turn_fraction_counts_completed_turns_only() -> None:
    b = EpisodeBuilder()
    b.teacher([" Hi", HAND_OVER]).student([" a", HAND_BACK])
    b.teacher([HAND_OVER]).student([" b", HAND_BACK])
    b.teacher([" ", "\n", HAND_OVER]).student([" c", HAND_BACK])  # whitespace only: empty
    b.teacher([" Well", HAND_OVER]).student([" d", HAND_BACK])
    b.teacher([" unfinished"])  # no hand-over: not completed, not counted
    assert m.empty_turn_fraction(episode(b)) == 2 / 4
    assert m.empty_turn_fraction(episode(EpisodeBuilder().teacher([" Hm"]))) is None


def test_empty_turn_summary_skips_episodes_without_completed_turns() -> None:
    eps = [chat(1.0, " x"), chat(1.0, 1.0), episode(EpisodeBuilder().teacher([" Hm"]))]
    s = m.empty_turn_summary(eps)
    assert s is not None and s["n"] == 2 and s["mean"] == 0.75


def test_kl_cost_of_each_empty_turn() -> None:
    b = EpisodeBuilder()
    b.teacher([" Hi", HAND_OVER], kl=[0.3, 0.3]).student([" a", HAND_BACK])
    b.teacher(["\n\n", "Student:"], kl=[1.25, 0.5]).student([" b", HAND_BACK])
    b.teacher([HAND_OVER], kl=[0.125]).student([" c", HAND_BACK])
    b.teacher(["\n"], kl=[9.0])  # no content yet, but unfinished: not an empty turn
    assert m.empty_turn_kl_costs(episode(b)) == [1.75, 0.125]


def test_kl_cost_by_empty_index_quartiles_across_episodes() -> None:
    eps = [chat(2.0, " x", 1.0), chat(4.0), chat(3.0, 0.5, 0.25)]
    rows = m.kl_cost_by_empty_index(eps)
    assert [r["n"] for r in rows] == [1, 2, 3]
    assert [r["n_episodes"] for r in rows] == [3, 2, 1]
    assert (rows[0]["q25"], rows[0]["q50"], rows[0]["q75"]) == (2.5, 3.0, 3.5)
    assert (rows[1]["q25"], rows[1]["q50"], rows[1]["q75"]) == (0.625, 0.75, 0.875)
    assert rows[2]["mean"] == 0.25


def test_length_effect() -> None:
    short = [chat(1.0, " a"), chat(" a", " b")]  # fractions 0.5 and 0
    long = [chat(1.0, 1.0), chat(1.0, " a")]  # fractions 1 and 0.5
    assert m.length_effect(short, long) == {
        "empty_frac_L": 0.25,
        "empty_frac_2L": 0.75,
        "delta": 0.5,
    }
    assert m.length_effect(short, []) is None


# ----------------------------------------------------------------------------- KL(π‖β)


def test_kl_to_base_exact_and_realized() -> None:
    b = EpisodeBuilder(budget=1.0)
    b.teacher([" a", HAND_OVER], kl=[0.25, 0.5], log_ratio=[1.0, -0.5])
    b.student([" b", HAND_BACK])
    b.teacher([HAND_OVER], kl=[0.125], log_ratio=[0.25])
    assert m.episode_kl(episode(b)) == (0.875, 0.75)


def test_kl_to_base_summary_counts_episodes_over_budget() -> None:
    eps = [
        episode(EpisodeBuilder(budget=1.0).teacher([HAND_OVER], kl=[0.5])),
        episode(EpisodeBuilder(budget=1.0).teacher([HAND_OVER], kl=[1.5])),
        episode(EpisodeBuilder(budget=2.0).teacher([HAND_OVER], kl=[1.5])),
        episode(EpisodeBuilder(budget=1.0).teacher([HAND_OVER], kl=[1.0])),  # on the budget
    ]
    s = m.episode_kl_summary(eps)
    assert s is not None
    assert s["over_budget_frac"] == 0.25
    assert s["exact_max"] == 1.5 and s["exact"]["mean"] == 1.125
    assert m.episode_kl_summary([]) is None


# ----------------------------------------------------------------------------- τ


def tau_episode(kl_tau_first: float | None = 0.25) -> Episode:
    b = EpisodeBuilder()
    b.teacher([" a", HAND_OVER], kl_tau=[kl_tau_first, 0.5], in_support=True, cls="explain")
    b.student([" s", HAND_BACK], annotate=True)
    b.teacher([" zzz", HAND_OVER], kl_tau=[None, 0.0], in_support=False, cls="novel")
    b.student([" s", HAND_BACK])
    b.teacher([HAND_OVER], kl_tau=[2.0], in_support=True, cls="empty")
    b.student([" s", HAND_BACK])
    b.teacher([" ?", HAND_OVER], kl_tau=[9.0, 9.0], annotate=True)  # in_support unknown
    return episode(b)


def test_tau_support_one_episode() -> None:
    s = m.tau_support(tau_episode())
    # Judged: 3 turns (the 4th has in_support null); 1 violation; in-support KL over the
    # agent tokens of turns 1 and 3 = 0.25 + 0.5 + 2.0; KL(π‖τ) is infinite.
    assert s == {"judged": 3, "violations": 1, "kl_in_support": 2.75, "kl_pi_tau": math.inf}


def test_tau_support_without_violation_is_finite() -> None:
    b = EpisodeBuilder()
    b.teacher([" a", HAND_OVER], kl_tau=[0.25, 0.5], in_support=True)
    s = m.tau_support(episode(b))
    assert s is not None and s["kl_pi_tau"] == 0.75 and s["violations"] == 0


def test_tau_support_missing_annotations() -> None:
    assert m.tau_support(chat(1.0)) is None  # no `turns`
    b = EpisodeBuilder().teacher([" a", HAND_OVER], in_support=True)  # no kl_tau
    s = m.tau_support(episode(b))
    assert s is not None and s["kl_in_support"] is None and s["kl_pi_tau"] is None
    assert m.tau_support_summary([chat(1.0)]) is None


def test_tau_support_summary_pools_turns() -> None:
    clean = EpisodeBuilder().teacher([" a", HAND_OVER], kl_tau=[0.25, 0.25], in_support=True)
    s = m.tau_support_summary([tau_episode(), episode(clean)])
    assert s == {
        "judged_turns": 4,
        "violation_share": 0.25,
        "episodes_with_violation": 0.5,
        "kl_pi_tau_mean": math.inf,
        "kl_in_support_mean": (2.75 + 0.5) / 2,
        "off_support_mass_mean": None,
    }
    only_clean = m.tau_support_summary([episode(clean)])
    assert only_clean is not None and only_clean["kl_pi_tau_mean"] == 0.5


def test_tau_support_uses_the_support_conditioned_kl() -> None:
    # π_t put mass 0.1 and 0.3 outside τ_t's support: KL(π_t‖τ_t) is infinite (null) at
    # both tokens, KL(π̃_t‖τ_t) of π conditioned on the support is 0.2 and 0.1.
    b = EpisodeBuilder()
    b.teacher([" a", HAND_OVER], kl_tau=None, kl_tau_in=[0.2, 0.1], tau_out=[0.1, 0.3],
              in_support=True)  # fmt: skip
    s = m.tau_support(episode(b))
    assert s is not None and s["kl_in_support"] == pytest.approx(0.3)
    summary = m.tau_support_summary([episode(b)])
    assert summary is not None and summary["off_support_mass_mean"] == pytest.approx(0.2)


def test_behaviour_ledger() -> None:
    b = EpisodeBuilder()
    for cls in ["explain", "praise", "explain", "empty", "novel"]:
        b.teacher([" t", HAND_OVER], cls=cls).student([" s", HAND_BACK], annotate=True)
    b.teacher([" ?", HAND_OVER], annotate=True)  # annotated without a class: not counted
    ledger = m.behaviour_ledger([episode(b), tau_episode()])
    assert ledger == {"empty": 2 / 8, "explain": 3 / 8, "novel": 2 / 8, "praise": 1 / 8}
    assert m.behaviour_ledger([chat(1.0)]) is None


def test_role_swap_after_empty_and_other_turns() -> None:
    b = EpisodeBuilder()
    b.teacher([HAND_OVER], annotate=True).student([" Great job!", HAND_BACK], tau_pool=True)
    b.teacher([HAND_OVER], annotate=True).student([" ok", HAND_BACK], tau_pool=False)
    b.teacher([" t", HAND_OVER], annotate=True).student([" Nice", HAND_BACK], tau_pool=True)
    b.teacher([" t", HAND_OVER], annotate=True).student([" no", HAND_BACK], tau_pool=False)
    b.teacher([" t", HAND_OVER], annotate=True).student([" hm", HAND_BACK], tau_pool=False)
    c = EpisodeBuilder()
    c.teacher([HAND_OVER], annotate=True).student([" Well done", HAND_BACK], tau_pool=True)
    c.student([" and more", HAND_BACK], tau_pool=True)  # no teacher turn before it: not counted
    swap = m.role_swap([episode(b), episode(c)])
    assert swap == {"after_empty": 2 / 3, "after_other": 1 / 3, "replies_after_empty": 3,
                    "replies_after_other": 3}  # fmt: skip
    assert m.role_swap([chat(1.0)]) is None  # no annotation


# ----------------------------------------------------------------------------- repetition


def test_repetition_counts_within_turns() -> None:
    # Teacher tokens A B A B H | A B H (H = hand-over). No n-gram spans the two turns.
    b = EpisodeBuilder()
    b.teacher([" A", " B", " A", " B", HAND_OVER]).student([" s", HAND_BACK])
    b.teacher([" A", " B", HAND_OVER])
    ep = episode(b)
    assert m.repetition_counts(ep, 1) == (5, 8)  # A B A* B* H A* B* H*
    assert m.repetition_counts(ep, 2) == (3, 6)  # AB BA AB* BH AB* BH*
    assert m.repetition_counts(ep, 3) == (1, 4)  # ABA BAB ABH ABH*  (no BHA, HAB)
    assert m.repetition_counts(ep, 5) == (0, 1)
    assert m.repetition_counts(ep, 6) == (0, 0)
    shares = m.repetition([ep, ep], sizes=(1, 3, 6))
    assert shares == {"1": 5 / 8, "3": 1 / 4, "6": None}
    assert list(m.repetition([ep])) == [str(n) for n in range(1, 11)]


def test_repetition_uses_ids_not_text() -> None:
    rec = EpisodeBuilder().teacher([" A", " A", HAND_OVER]).record()
    rec["tokens"][2]["id"] = 99  # same text, different token id: not a repeat
    assert m.repetition_counts(parse_episode(rec), 1) == (0, 3)


# ----------------------------------------------------------------------------- other


def test_calibration_loss_is_pooled_over_tokens() -> None:
    recs = [Heldout(0, (-1.0, -2.0), 2), Heldout(1, (-3.0,), 1)]
    assert m.calibration_loss(recs) == 2.0  # not the per-transcript mean (2.25)
    assert m.calibration_loss([]) is None
    assert m.calibration_loss([Heldout(0, (-1.0, -math.inf), 2)]) == math.inf


def test_help_rate() -> None:
    b = EpisodeBuilder()
    b.teacher([" a", " b", " c", HAND_OVER], help=[True, False, False, True])
    b.student([" s", HAND_BACK])
    assert m.help_rate([episode(b)]) == 0.5
    assert m.help_rate([chat(1.0)]) is None


# ----------------------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.floats(0, 5, allow_nan=False)), min_size=1, max_size=12),
    st.booleans(),
)
def test_empty_turn_metrics_match_construction(turns: list[tuple[bool, float]], tail: bool) -> None:
    b = EpisodeBuilder()
    for is_empty, kl in turns:
        b.teacher([HAND_OVER] if is_empty else [" x", HAND_OVER], kl=kl)
        b.student([" s", HAND_BACK])
    if tail:
        b.teacher([" y"], kl=1.0)  # an unfinished turn changes neither metric
    ep = episode(b)
    n_empty = sum(e for e, _ in turns)
    assert m.empty_turn_fraction(ep) == pytest.approx(n_empty / len(turns))
    assert m.empty_turn_kl_costs(ep) == pytest.approx([kl for e, kl in turns if e])
    exact, _ = m.episode_kl(ep)
    expected = sum(kl if e else 2 * kl for e, kl in turns) + (1.0 if tail else 0.0)
    assert exact == pytest.approx(expected)
    for share in m.repetition([ep]).values():
        assert share is None or 0.0 <= share <= 1.0
