"""τ's exact probabilities against brute-force enumeration on a small world."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from klbudget.world.config import WorldConfig
from klbudget.world.corpus import World, load_split, record_turns
from klbudget.world.pools import TEACHER_CLASSES, reply_category
from klbudget.world.teacher import CONTEXTS, class_probs, home_styles
from klbudget.world.token_model import TeacherTokenModel

Turn = tuple[str, str]


def brute_turn_probs(world: World, history: list[Turn]) -> dict[str, float]:
    """P(u | h) straight from the generative model: sum over styles and classes, Bayes."""
    cfg, pools = world.cfg, world.pools
    homes = {}
    for ci, c in enumerate(TEACHER_CLASSES):
        for u, h in zip(pools.teacher[c], home_styles(cfg, pools.teacher[c], ci), strict=True):
            homes[u] = (c, int(h))

    def p_u(u: str, s: int, context: str) -> float:
        total = 0.0
        for ci, c in enumerate(TEACHER_CLASSES):  # sum over the latent class
            w = {v: (1.0 if homes[v][1] == s else cfg.off_style_weight) for v in pools.teacher[c]}
            if u in w:
                total += class_probs(cfg, s, context)[ci] * w[u] / sum(w.values())
        return total

    joint = []
    for s in range(cfg.n_styles):
        like, context = 1.0 / cfg.n_styles, "start"
        for speaker, content in history:
            if speaker == "student":
                context = reply_category(content)
            elif content in homes:
                like *= p_u(content, s, context)
        joint.append(like)
    post = np.array(joint) / sum(joint)
    return {
        u: sum(post[s] * p_u(u, s, context) for s in range(cfg.n_styles))
        for u in world.teacher.sentences
    }


def histories(small_dir, world: World) -> list[list[Turn]]:
    """Prefixes of real transcripts plus odd ones (unseen replies, empty/novel turns)."""
    rec = load_split(small_dir, "train")
    out: list[list[Turn]] = [[]]
    for r in rec[:3]:
        turns = record_turns(r)
        out += [turns[: 2 * k] for k in (1, 2, 4)]
    u0 = world.teacher.sentences[0]
    out += [
        [("teacher", ""), ("student", "I hate this so much.")],
        [("teacher", "Something no teacher here would say."), ("student", "What?")],
        [("teacher", u0), ("student", "wow, amazing!"), ("teacher", ""), ("student", "ok")],
    ]
    return out


def test_class_probs_closed_form() -> None:
    cfg = WorldConfig(style_focus=0.4, context_boost=3.0)
    # style 1 favours "encourage"; a negative reply boosts "encourage" too.
    p = class_probs(cfg, 1, "negative")
    expected = np.array([0.2, 0.4 * 3, 0.2, 0.2]) / (0.6 + 1.2)
    np.testing.assert_allclose(p, expected)
    np.testing.assert_allclose(class_probs(cfg, 0, "start"), [0.4, 0.2, 0.2, 0.2])


def test_turn_probs_match_brute_force(small_dir, small_world: World) -> None:
    for h in histories(small_dir, small_world):
        brute = brute_turn_probs(small_world, h)
        p = small_world.teacher.turn_probs(h)
        np.testing.assert_allclose(p, [brute[u] for u in small_world.teacher.sentences], rtol=1e-12)
        assert math.isclose(p.sum(), 1.0, rel_tol=1e-12)


def test_predictive_chain_equals_generative_joint(small_world: World) -> None:
    """P(u1) P(u2 | u1, r) = Σ_s P(s) P(u1 | s, start) P(u2 | s, x(r)): Bayes is exact."""
    tau, n_styles = small_world.teacher, small_world.cfg.n_styles
    r = small_world.student.sentences[0]
    x1, x2 = CONTEXTS.index("start"), CONTEXTS.index(reply_category(r))
    for i, j in itertools.product(range(len(tau.sentences)), repeat=2):
        u1 = tau.sentences[i]
        chain = tau.turn_probs([])[i] * tau.turn_probs([("teacher", u1), ("student", r)])[j]
        joint = sum(tau.table[x1, s, i] * tau.table[x2, s, j] for s in range(n_styles)) / n_styles
        assert math.isclose(chain, joint, rel_tol=1e-12)


def test_next_token_logprobs_match_enumeration(small_dir, small_world, small_tm) -> None:
    """τ(v | h, y<t) = Σ_{u: y(u) ⊒ y<t v} P(u|h) / Σ_{u: y(u) ⊒ y<t} P(u|h), every v."""
    seqs = [small_tm.piece_ids(u) for u in small_world.teacher.sentences]
    prefixes = {tuple(s[:t]) for s in seqs for t in range(len(s))}
    for h in histories(small_dir, small_world)[:6]:
        brute = brute_turn_probs(small_world, h)
        pu = [brute[u] for u in small_world.teacher.sentences]
        for prefix in prefixes:
            n = len(prefix)
            under = [k for k, s in enumerate(seqs) if tuple(s[:n]) == prefix]
            total = sum(pu[k] for k in under)
            expected = np.full(small_tm.vocab_size, -np.inf)
            for v in {seqs[k][n] for k in under}:
                expected[v] = math.log(sum(pu[k] for k in under if seqs[k][n] == v) / total)
            got = small_tm.next_token_logprobs(h, list(prefix)).numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-10, atol=0)
            ent = -sum(math.exp(x) * x for x in expected if x > -np.inf)
            assert math.isclose(small_tm.next_token_entropy(h, list(prefix)), ent, abs_tol=1e-12)


def test_turn_logprob_is_chain_rule_of_token_logprobs(small_dir, small_world, small_tm) -> None:
    for h in histories(small_dir, small_world)[:5]:
        for u in small_world.teacher.sentences:
            ids = small_tm.piece_ids(u)
            chain = sum(small_tm.token_logprobs(h, ids))
            assert math.isclose(chain, small_tm.turn_logprob(h, u), rel_tol=1e-12, abs_tol=1e-12)
            assert small_tm.is_complete(ids)
            assert small_tm.sample_continuation(h, ids) == []


def test_noncanonical_and_unsupported_sequences_have_probability_zero(small_world, small_tm):
    tok = small_tm.tokenizer
    u = max(small_world.teacher.sentences, key=len)
    ids = small_tm.piece_ids(u)
    # Re-spell the first multi-byte token byte by byte: same text, other tokens.
    k = next(i for i, t in enumerate(ids) if len(tok.convert_ids_to_tokens(t)) > 1)
    bytes_ids = tok.convert_tokens_to_ids(list(tok.convert_ids_to_tokens(ids[k])))
    alt = ids[:k] + bytes_ids + ids[k + 1 :]
    assert tok.decode(alt) == tok.decode(ids)
    assert sum(small_tm.token_logprobs([], alt)) == -math.inf
    assert not small_tm.prefix_in_support([], alt[: k + 2])
    assert torch.isneginf(small_tm.next_token_logprobs([], alt[: k + 2])).all()
    with pytest.raises(ValueError):
        small_tm.sample_continuation([], alt[: k + 2])
    # The empty turn (only the hand-over) is outside the support.
    empty = small_tm.piece_ids("")
    assert sum(small_tm.token_logprobs([], empty)) == -math.inf
    assert small_tm.turn_logprob([], "") == -math.inf


def test_support_and_classes(small_world, small_tm) -> None:
    h = [("teacher", ""), ("student", "nope")]
    for u, c in zip(small_world.teacher.sentences, small_world.teacher.classes, strict=True):
        assert small_tm.in_support(h, u) and small_tm.classify(h, u) == c
        assert small_tm.in_support([], u)
    for other in ["", small_world.student.sentences[0], small_world.teacher.sentences[0] + "!"]:
        assert not small_tm.in_support(h, other)
        assert small_tm.classify(h, other) is None


def test_unwritable_teacher_turns_are_ignored(small_world) -> None:
    tau = small_world.teacher
    u = tau.sentences[1]
    base = [("teacher", u), ("student", "ok")]
    odd = [("teacher", u), ("student", "ok"), ("teacher", "gibberish turn"), ("student", "ok")]
    empty = [("teacher", u), ("student", "ok"), ("teacher", ""), ("student", "ok")]
    np.testing.assert_allclose(tau.style_log_posterior(odd), tau.style_log_posterior(base))
    np.testing.assert_allclose(tau.turn_probs(odd), tau.turn_probs(empty))
    np.testing.assert_allclose(tau.style_log_posterior([("teacher", "")]), np.full(2, -math.log(2)))
    with pytest.raises(ValueError):
        tau.turn_probs([("teacher", u)])


def test_batch_equals_single(small_dir, small_world, small_tm) -> None:
    hs = histories(small_dir, small_world)[:4]
    ids = small_tm.piece_ids(small_world.teacher.sentences[2])
    prefixes = [ids[:0], ids[:1], ids[:2], torch.tensor(ids[:3])]
    batch = small_tm.next_token_logprobs_batch(hs, prefixes)
    for b in range(4):
        assert torch.equal(batch[b], small_tm.next_token_logprobs(hs[b], prefixes[b]))


def _chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    return float(stats.chisquare(counts, probs * counts.sum()).pvalue)


def test_sampled_turns_match_probabilities(small_dir, small_world, small_tm) -> None:
    h = histories(small_dir, small_world)[2]
    p = small_world.teacher.turn_probs(h)
    index = {tuple(small_tm.piece_ids(u)): i for i, u in enumerate(small_world.teacher.sentences)}
    gen = torch.Generator().manual_seed(0)
    n = 6000
    counts = np.zeros(len(p))
    for _ in range(n):
        counts[index[tuple(small_tm.sample_continuation(h, [], gen))]] += 1
    assert _chi2_pvalue(counts, p) > 1e-3
    rng = np.random.default_rng(0)
    counts_np = np.zeros(len(p))
    for _ in range(n):
        counts_np[small_world.teacher.index(small_world.teacher.sample_turn(h, rng))] += 1
    assert _chi2_pvalue(counts_np, p) > 1e-3


def test_sampled_tokens_match_probabilities(small_dir, small_world, small_tm) -> None:
    h = histories(small_dir, small_world)[5]
    # The most branching prefix makes the test informative.
    prefix = max(
        (list(k) for k in small_tm.trie.nodes),
        key=lambda k: small_tm.trie.nodes[tuple(k)].tokens.size,
    )
    tokens, probs = small_tm.next_token_dist(h, prefix)
    assert tokens.size > 1
    gen = torch.Generator().manual_seed(1)
    draws = [small_tm.sample_next_token(h, prefix, gen) for _ in range(4000)]
    counts = np.array([draws.count(int(v)) for v in tokens])
    assert counts.sum() == len(draws)
    assert _chi2_pvalue(counts, probs) > 1e-3


def test_token_model_works_with_a_foreign_tokenizer(small_world, small_tokenizer) -> None:
    """Any tokenizer: here one fitted on other text, so tokens differ from the corpus BPE."""
    from klbudget.world.tokenizer import train_tokenizer

    other = train_tokenizer(["completely different words " * 3] * 20, 300)
    tm = TeacherTokenModel(small_world.teacher, other)
    for u in small_world.teacher.sentences:
        assert math.isclose(sum(tm.token_logprobs([], tm.piece_ids(u))), tm.turn_logprob([], u))


_student_text = st.sampled_from(["ok", "I hate this.", "Why?", "This is great!", "", "meh"])


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_history_matches_brute_force(small_world: World, data: st.DataObject) -> None:
    """Histories mixing τ's turns, empty and novel turns, and replies from outside the pool."""
    teacher_text = st.one_of(
        st.sampled_from(small_world.teacher.sentences), st.just(""), st.just("Novel words here.")
    )
    student_text = st.one_of(st.sampled_from(small_world.student.sentences), _student_text)
    n = data.draw(st.integers(0, 5))
    h: list[list[str]] = []
    for _ in range(n):  # lists, as a history read back from JSON would be
        h += [["teacher", data.draw(teacher_text)], ["student", data.draw(student_text)]]
    brute = brute_turn_probs(small_world, [tuple(t) for t in h])
    p = small_world.teacher.turn_probs(h)
    np.testing.assert_allclose(p, [brute[u] for u in small_world.teacher.sentences], rtol=1e-12)
