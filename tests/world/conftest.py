"""A small world shared by the tests: 2 styles, 3 sentences per teacher class."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from klbudget.world.config import WorldConfig
from klbudget.world.corpus import World, build_world, load_split, load_world
from klbudget.world.imitator import ImitatorConfig, train_imitator
from klbudget.world.token_model import TeacherTokenModel
from klbudget.world.tokenizer import train_tokenizer

SMALL = WorldConfig(
    seed=3,
    n_train=60,
    n_heldout=8,
    n_styles=2,
    teacher_pool_size=3,
    student_pool_size=2,
    transcript_pretokens=120,
    n_openers=0,
    quiet_students=0.0,
)


@pytest.fixture(scope="session")
def small_cfg() -> WorldConfig:
    return SMALL


@pytest.fixture(scope="session")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_world(SMALL, tmp_path_factory.mktemp("small_world"))


@pytest.fixture(scope="session")
def small_world(small_dir: Path) -> World:
    return load_world(small_dir)


@pytest.fixture(scope="session")
def small_tokenizer(small_dir: Path) -> PreTrainedTokenizerFast:
    return train_tokenizer([r["text"] for r in load_split(small_dir, "train")], 400)


@pytest.fixture(scope="session")
def small_tm(small_world: World, small_tokenizer: PreTrainedTokenizerFast) -> TeacherTokenModel:
    return TeacherTokenModel(small_world.teacher, small_tokenizer, small_world.fmt)


# A 1-layer imitator that trains in seconds on the small world.
TINY_IMITATOR = ImitatorConfig(
    vocab_size=400,
    n_layer=1,
    n_embd=32,
    n_head=2,
    mlp_ratio=2,
    block_size=96,
    max_position=128,
    steps=60,
    batch_size=8,
    lr=1e-2,
    warmup_steps=5,
    eval_transcripts=4,
    probe_samples=1,
    peer_transcripts=20,
)


@pytest.fixture(scope="session")
def tiny_imitator_cfg() -> ImitatorConfig:
    return TINY_IMITATOR


@pytest.fixture(scope="session")
def imitator_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("imitator_cache")


@pytest.fixture(scope="session")
def tiny_folder(small_dir: Path, imitator_cache: Path) -> Path:
    return train_imitator(small_dir, TINY_IMITATOR, imitator_cache, progress=False)
