"""A small world shared by the tests: 2 styles, 3 sentences per teacher class."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from klbudget.world.config import WorldConfig
from klbudget.world.corpus import World, build_world, load_split, load_world
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
