"""Quiet students (student.py): the exact predictive against enumeration over the latent,
the generative draw, and a corpus in which only the student is ever silent."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest

from klbudget.world.config import WorldConfig
from klbudget.world.corpus import build_world, load_split, load_world, record_turns
from klbudget.world.tokenizer import encode, train_tokenizer, turn_piece
from klbudget.world.trie import TurnPieces


@pytest.fixture(scope="module")
def quiet_dir(small_cfg: WorldConfig, tmp_path_factory: pytest.TempPathFactory):
    cfg = replace(small_cfg, quiet_students=0.4, quiet_rate=0.5, n_train=200)
    return build_world(cfg, tmp_path_factory.mktemp("quiet_world"))


def test_predictive_is_bayes_over_the_latent(quiet_dir) -> None:
    student = load_world(quiet_dir).student
    p, q = 0.4, 0.5
    said = "Nice to meet you."
    # P(r_1, ..., r_k) by enumeration over the latent, for silent (s) / non-silent (n) replies.
    for pattern in itertools.product("sn", repeat=3):

        def joint(pat: tuple[str, ...]) -> float:
            if pat[:1] == ("s",):
                return 0.0  # the first reply always says something
            quiet = math.prod(q if x == "s" else 1 - q for x in pat[1:])
            loud = 0.0 if "s" in pat else 1.0
            return p * quiet + (1 - p) * loud

        h: list[tuple[str, str]] = []
        if pattern[0] == "s":
            continue
        for k, x in enumerate(pattern):
            expected = joint((*pattern[:k], "s")) / joint(pattern[:k])
            assert math.isclose(student.p_empty(h), expected, rel_tol=1e-12)
            h += [("teacher", "Hello."), ("student", "" if x == "s" else said)]


def test_reply_probs_sum_to_one_with_silence_last(quiet_dir) -> None:
    world = load_world(quiet_dir)
    student = world.student
    assert student.replies[-1] == "" and len(student.replies) == len(student.sentences) + 1
    u = world.teacher.sentences[0]
    for h in ([], [("teacher", u), ("student", "")], [("teacher", u), ("student", "Ok.")]):
        pr = student.reply_probs(u, h)
        assert math.isclose(pr.sum(), 1.0, rel_tol=1e-12)
        assert math.isclose(pr[-1], student.p_empty(h), rel_tol=1e-12)


def test_only_students_go_silent_and_silence_persists(quiet_dir) -> None:
    world = load_world(quiet_dir)
    silent_convs = 0
    after_silence = []
    for rec in load_split(quiet_dir, "train"):
        turns = record_turns(rec)
        replies = [c for s, c in turns if s == "student"]
        assert all(c.strip() and world.teacher.in_support(c) for s, c in turns if s == "teacher")
        if "" in replies:
            silent_convs += 1
            first = replies.index("")
            after_silence += [c == "" for c in replies[first + 1 :]]
    n = 200
    # P(a conversation shows silence) <= p = 0.4; quiet students with several replies show it.
    assert 0.2 * n < silent_convs < 0.45 * n
    # After a first empty reply the student is quiet: the next ones are empty with rate q.
    assert abs(np.mean(after_silence) - 0.5) < 4 * math.sqrt(0.25 / len(after_silence))


@pytest.fixture(scope="module")
def student_pieces(small_cfg: WorldConfig, tmp_path_factory: pytest.TempPathFactory):
    """(world, ids of a student piece, TurnPieces) for a world with openers and quiet students,
    built the way the held-out report builds the student's pieces."""
    folder = build_world(
        replace(small_cfg, quiet_students=0.4, quiet_rate=0.5, n_openers=4),
        tmp_path_factory.mktemp("quiet_openers"),
    )
    world = load_world(folder)
    st, fmt = world.student, world.fmt
    tok = train_tokenizer([r["text"] for r in load_split(folder, "train")], 400)

    def ids(content: str) -> list[int]:
        return encode(tok, turn_piece(fmt, "student", content))

    heads = [encode(tok, f" {o},") for o in st.openers] + [ids("")]
    return world, ids, TurnPieces([ids(b) for b in st.bodies], heads, final_heads=1)


def test_student_pieces_with_openers_and_silence_sum_to_one(student_pieces) -> None:
    """Token-level student (the held-out report's TurnPieces): the chain rule over each
    reply's tokens gives its exact probability, and all replies sum to one."""
    world, ids, pieces = student_pieces
    st = world.student
    u = world.teacher.content(1, 0)
    h = [("teacher", u), ("student", st.content(2, 1))]
    p_body, p_head = st.reply_factors(u, h)
    total = 0.0
    for c in ["", *(st.content(o, r) for o in range(4) for r in range(len(st.sentences)))]:
        seq = ids(c)
        lp = 0.0
        for t, v in enumerate(seq):
            tokens, q = pieces.next_token_dist(seq[:t], p_body, p_head)
            lp += math.log(q[list(tokens).index(v)])
        o, r = st.parse(c)
        expected = p_head[-1] if c == "" else p_head[o] * p_body[r]
        assert math.isclose(lp, math.log(expected), rel_tol=1e-10)
        total += math.exp(lp)
    assert math.isclose(total, 1.0, rel_tol=1e-9)
    assert st.parse(st.content(3, 0)) == (3, 0) and st.parse("Zz, hi") is None


def test_silence_before_the_first_reply_is_no_token(student_pieces) -> None:
    """Before its first reply the student cannot be silent: the empty reply's first token is
    not offered at probability 0 (a zero would make the held-out KL and entropy NaN)."""
    world, ids, pieces = student_pieces
    u = world.teacher.content(0, 0)
    tokens, q = pieces.next_token_dist([], *world.student.reply_factors(u, []))
    assert ids("")[0] not in tokens.tolist() and (q > 0).all()
    assert math.isclose(q.sum(), 1.0, rel_tol=1e-12)


def test_peer_chats_hold_no_tau_and_quiet_speakers_start_by_speaking(quiet_dir) -> None:
    from klbudget.world.imitator import peer_texts

    world = load_world(quiet_dir)
    teacher, student = world.teacher, world.student
    silent_after = {0: 0, 1: 0}
    for k in range(60):
        turns = world.sample_peer_chat(np.random.default_rng([0, k]), quiet_share=1.0)
        assert [s for s, _ in turns[:2]] == ["teacher", "student"]
        for i, (_, content) in enumerate(turns):
            if i < 2:
                assert content, "every speaker's first turn says something"
            elif content:
                assert student.parse(content) is not None  # a student line, never τ's
                assert teacher.classify(content) is None
            else:
                silent_after[i % 2] += 1
    assert silent_after[0] > 0 and silent_after[1] > 0  # both seats fall silent
    texts = peer_texts(world, 5, 0.5)
    assert len(texts) == 5 and texts == peer_texts(world, 5, 0.5)  # seeded
    for text in texts:  # both tags renamed, prompt's included
        assert world.fmt.teacher_tag not in text and world.fmt.student_tag not in text
    with pytest.raises(ValueError, match="peer"):
        peer_texts(world, -1, 0.5)


def test_single_quiet_peer_chats_silence_one_seat_only(quiet_dir) -> None:
    """With ``single_quiet`` at most one speaker of a peer chat is ever silent, each seat in
    some chats, and the other keeps answering with student lines."""
    world = load_world(quiet_dir)
    seats_silent = {0: 0, 1: 0}
    for k in range(60):
        turns = world.sample_peer_chat(np.random.default_rng([0, k]), 1.0, single_quiet=True)
        silent = {i % 2 for i, (_, content) in enumerate(turns) if not content}
        assert len(silent) <= 1, "two quiet speakers in one chat"
        for seat in silent:
            seats_silent[seat] += 1
            talker = [c for i, (_, c) in enumerate(turns) if i % 2 != seat]
            assert all(world.student.parse(c) is not None for c in talker)
    assert seats_silent[0] > 0 and seats_silent[1] > 0
    never = [world.sample_peer_chat(np.random.default_rng([1, k]), 0.0, True) for k in range(20)]
    assert all(content for turns in never for _, content in turns)


def test_peer_header_replaces_the_prompts_first_paragraph(quiet_dir) -> None:
    from klbudget.world.imitator import peer_texts

    world = load_world(quiet_dir)
    head, _, rest = world.fmt.prompt.partition("\n\n")
    plain = peer_texts(world, 3, 0.5, True)
    headed = peer_texts(world, 3, 0.5, True, header="Two students chat.")
    assert all(t.startswith(head + "\n\n") for t in plain)
    for a, b in zip(plain, headed, strict=True):
        assert b.startswith("Two students chat.\n\n") and head not in b
        assert a[len(head) :] == b[len("Two students chat.") :]  # the chat itself is unchanged


def test_bad_peer_fields_are_a_config_error() -> None:
    from klbudget.config import ConfigError, replace_fields
    from klbudget.world.imitator import ImitatorConfig

    for item in ["peer_quiet=2", "peer_quiet=-0.1", "peer_transcripts=-1"]:
        with pytest.raises(ConfigError, match=r"imitator\.peer_(quiet|transcripts) = .*must be in"):
            replace_fields(ImitatorConfig(), [item], "imitator")
