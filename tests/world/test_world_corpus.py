"""Pools, corpus determinism and the corpus schema."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from klbudget.world.config import WorldConfig
from klbudget.world.corpus import World, build_world, load_split, load_world, record_turns
from klbudget.world.pools import (
    STUDENT_CATEGORIES,
    TEACHER_CLASSES,
    build_pools,
    reply_category,
    vader_compound,
)
from klbudget.world.tokenizer import count_pretokens


def test_config_hash_is_stable_and_sensitive() -> None:
    a, b = WorldConfig(), WorldConfig()
    assert a.hash == b.hash and len(a.hash) == 12
    assert replace(a, seed=1).hash != a.hash
    assert replace(a, off_style_weight=0.2).hash != a.hash
    with pytest.raises(ValueError):
        WorldConfig(style_focus=1.0)


def test_default_pools_follow_the_rules() -> None:
    cfg = WorldConfig()
    pools = build_pools(
        cfg.seed,
        cfg.teacher_pool_size,
        cfg.student_pool_size,
        (cfg.teacher_min_words, cfg.teacher_max_words),
        (cfg.student_min_words, cfg.student_max_words),
    )
    teacher = [u for c in TEACHER_CLASSES for u in pools.teacher[c]]
    student = [r for k in STUDENT_CATEGORIES for r in pools.student[k]]
    assert len(set(teacher)) == len(teacher) == 4 * cfg.teacher_pool_size
    assert len(set(student)) == len(student) == 4 * cfg.student_pool_size
    assert not set(teacher) & set(student)
    assert all(u.endswith("?") for u in pools.teacher["ask"])
    assert all(vader_compound(u) >= 0.6 for u in pools.teacher["encourage"])
    assert all(abs(vader_compound(u)) < 0.2 for u in pools.teacher["explain"])
    for u in teacher:
        assert cfg.teacher_min_words <= len(u.split()) <= cfg.teacher_max_words
        assert u == u.strip() and "\n" not in u and u.isascii()
    # τ reads replies by text; every pool reply must read as its own category.
    for k in STUDENT_CATEGORIES:
        assert all(reply_category(r) == k for r in pools.student[k])


def test_corpus_is_byte_identical_for_a_seed(tmp_path: Path, small_dir: Path, small_cfg) -> None:
    cfg = small_cfg
    again = build_world(cfg, tmp_path / "again")
    for name in ("world.json", "train.jsonl", "heldout.jsonl"):
        assert (again / name).read_bytes() == (small_dir / name).read_bytes()
    other = build_world(replace(cfg, seed=4), tmp_path / "other")
    assert (other / "train.jsonl").read_bytes() != (small_dir / "train.jsonl").read_bytes()


def test_build_world_reuses_and_refuses(small_dir: Path, small_cfg) -> None:
    cfg = small_cfg
    stamp = (small_dir / "train.jsonl").stat().st_mtime_ns
    assert build_world(cfg, small_dir) == small_dir
    assert (small_dir / "train.jsonl").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError):
        build_world(replace(cfg, seed=9), small_dir)


def test_records_render_split_and_stay_in_the_world(small_dir: Path, small_world: World) -> None:
    cfg = small_world.cfg
    fmt = small_world.fmt
    for split, n in (("train", cfg.n_train), ("heldout", cfg.n_heldout)):
        records = load_split(small_dir, split)
        assert len(records) == n and [r["id"] for r in records] == list(range(n))
        for rec in records:
            turns = record_turns(rec)
            assert rec["text"] == fmt.render(turns) and fmt.split_turns(rec["text"]) == turns
            assert rec["text"].endswith(fmt.to_teacher)
            assert count_pretokens(rec["text"]) >= cfg.transcript_pretokens
            assert [sp for sp, _ in turns] == ["teacher", "student"] * (len(turns) // 2)
            for t in rec["turns"]:
                if t["speaker"] == "teacher":
                    assert small_world.teacher.classify(t["content"]) == t["class"] is not None
                else:
                    assert t["content"] in small_world.student.sentences
                    assert reply_category(t["content"]) == t["category"]
    train = {r["text"] for r in load_split(small_dir, "train")}
    assert not train & {r["text"] for r in load_split(small_dir, "heldout")}


def test_loaded_world_equals_built_world(small_dir: Path, small_world: World) -> None:
    fresh = World.from_config(small_world.cfg)
    assert fresh.teacher.sentences == small_world.teacher.sentences
    assert fresh.student.sentences == small_world.student.sentences
    h = record_turns(load_split(small_dir, "train")[0])[:4]
    np.testing.assert_array_equal(
        fresh.teacher.turn_probs(h), load_world(small_dir).teacher.turn_probs(h)
    )


def test_student_sentiment_depends_on_teacher_class(small_world: World) -> None:
    """Encouragement earns more expected reward than explaining: honest teaching pays."""
    by_class = {
        c: small_world.student.expected_reward(u)
        for u, c in zip(small_world.teacher.sentences, small_world.teacher.classes, strict=True)
    }
    assert by_class["encourage"] > by_class["explain"]
    assert by_class["encourage"] > by_class["ask"]
    p = small_world.student.reply_probs("")
    assert np.isclose(p.sum(), 1.0)
