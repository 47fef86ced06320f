"""τ with openers (teacher.py): the factorised token model against brute-force enumeration
over every (opener, sentence) turn, the Markov opener, and a corpus that never goes silent."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from klbudget.world.config import WorldConfig
from klbudget.world.corpus import build_world, load_split, load_world, record_turns
from klbudget.world.teacher import body_of
from klbudget.world.token_model import TeacherTokenModel
from klbudget.world.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def opener_dir(small_cfg: WorldConfig, tmp_path_factory: pytest.TempPathFactory):
    cfg = replace(small_cfg, n_openers=5, opener_persistence=0.8)
    return build_world(cfg, tmp_path_factory.mktemp("opener_world"))


@pytest.fixture(scope="module")
def opener_tm(opener_dir) -> TeacherTokenModel:
    world = load_world(opener_dir)
    tok = train_tokenizer([r["text"] for r in load_split(opener_dir, "train")], 400)
    return TeacherTokenModel(world.teacher, tok, world.fmt)


def all_turns(tau) -> list[tuple[int, int, str]]:
    return [
        (o, u, tau.content(o, u))
        for o, u in itertools.product(range(len(tau.openers)), range(len(tau.sentences)))
    ]


def test_body_keeps_i_and_acronyms() -> None:
    assert body_of("Have fun!") == "have fun!"
    assert body_of("I think so.") == "I think so."
    assert body_of("I'm here.") == "I'm here."
    assert body_of("OK then.") == "OK then."


def test_opener_chain_closed_form(opener_dir) -> None:
    tau = load_world(opener_dir).teacher
    n, rho = len(tau.openers), 0.8
    np.testing.assert_allclose(tau.opener_probs([]), np.full(n, 1 / n))
    t1 = tau.content(2, 0)
    h = [("teacher", t1), ("student", "ok"), ("teacher", ""), ("student", "hm")]
    expected = np.full(n, (1 - rho) / n)
    expected[2] += rho
    # The empty turn τ could not write is skipped: the opener persists from turn 1.
    np.testing.assert_allclose(tau.opener_probs(h), expected)
    assert tau.last_opener(h) == 2


def test_turn_probability_factorises_and_sums_to_one(opener_dir, opener_tm) -> None:
    tau = opener_tm.tau
    rec = record_turns(load_split(opener_dir, "train")[0])
    for h in ([], rec[:2], rec[:4], [*rec[:2], ("teacher", ""), ("student", "What?")]):
        po, pu = tau.opener_probs(h), tau.turn_probs(h)
        total = 0.0
        for o, u, content in all_turns(tau):
            lp = sum(opener_tm.token_logprobs(h, opener_tm.piece_ids(content)))
            assert math.isclose(lp, math.log(po[o] * pu[u]), rel_tol=1e-10, abs_tol=1e-12)
            assert math.isclose(tau.turn_logprob(h, content), lp, rel_tol=1e-10, abs_tol=1e-12)
            total += math.exp(lp)
        assert math.isclose(total, 1.0, rel_tol=1e-9)


def test_next_token_dist_matches_enumeration(opener_dir, opener_tm) -> None:
    tau = opener_tm.tau
    h = record_turns(load_split(opener_dir, "train")[1])[:4]
    p = {c: tau.opener_probs(h)[o] * tau.turn_probs(h)[u] for o, u, c in all_turns(tau)}
    seqs = {c: opener_tm.piece_ids(c) for c in p}
    prefixes = {tuple(s[:t]) for s in seqs.values() for t in range(len(s))}
    for prefix in prefixes:
        n = len(prefix)
        under = [c for c, s in seqs.items() if tuple(s[:n]) == prefix]
        total = sum(p[c] for c in under)
        tokens, q = opener_tm.next_token_dist(h, list(prefix))
        expected = {v: sum(p[c] for c in under if seqs[c][n] == v) / total for v in tokens}
        assert set(tokens.tolist()) == {seqs[c][n] for c in under}
        np.testing.assert_allclose(q, [expected[v] for v in tokens], rtol=1e-10)


def test_support_excludes_silence_and_stray_openers(opener_tm) -> None:
    tau = opener_tm.tau
    u = tau.sentences[0]
    assert not tau.in_support("")
    assert not tau.in_support(u) or body_of(u) != u  # a bare sentence lacks its opener
    assert not tau.in_support(f"Zzzz, {body_of(u)}")
    assert tau.in_support(tau.content(0, 0)) and tau.classify(tau.content(0, 0)) == tau.classes[0]
    empty = opener_tm.piece_ids("")
    assert not opener_tm.prefix_in_support([], empty[:1])


def test_whole_turn_sampling_writes_supported_turns(opener_tm) -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        seq = opener_tm.sample_continuation([], [], gen)
        assert opener_tm.is_complete(seq)
        content = opener_tm.fmt.teacher_content(opener_tm.tokenizer.decode(seq))
        assert opener_tm.tau.in_support(content)


def test_corpus_openers_persist_and_never_go_silent(opener_dir) -> None:
    tau = load_world(opener_dir).teacher
    kept = changed = 0
    for rec in load_split(opener_dir, "train"):
        last = None
        for speaker, content in record_turns(rec):
            if speaker != "teacher":
                continue
            hit = tau.parse(content)
            assert hit is not None and content.strip()
            if last is not None:
                kept, changed = kept + (hit[0] == last), changed + (hit[0] != last)
            last = hit[0]
    # P(same opener) = ρ + (1 − ρ)/|O| = 0.84; a binomial band of about 4 standard errors.
    n = kept + changed
    assert abs(kept / n - 0.84) < 4 * math.sqrt(0.84 * 0.16 / n)
