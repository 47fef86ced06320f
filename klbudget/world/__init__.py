"""The default world (docs/design.md, "The world"): τ, the world's student, the corpus and the
imitator.

config.py       WorldConfig and its stable hash
pools.py        real chat lines from chitchat-dataset, sorted into classes by fixed rules
teacher.py      τ over whole turns: latent style, exact Bayes over it, sampling, classes
student.py      the world's student: reply sentiment depends on the teacher's class
trie.py         prefix tree that turns a distribution over turns into next-token ones
token_model.py  τ over tokens: exact log τ(next teacher token | transcript so far)
tokenizer.py    byte-level BPE and the canonical (piecewise) tokenization of turns
corpus.py       World, build_world (seeded demonstration corpus), loaders
imitator.py     ImitatorConfig, train_imitator (cached HF model folder), held-out report
"""

from klbudget.world.config import WorldConfig
from klbudget.world.corpus import World, build_world, load_split, load_world
from klbudget.world.imitator import (
    ImitatorConfig,
    ensemble_configs,
    read_report,
    train_ensemble,
    train_imitator,
)
from klbudget.world.token_model import TeacherTokenModel

__all__ = [
    "ImitatorConfig",
    "TeacherTokenModel",
    "World",
    "WorldConfig",
    "build_world",
    "ensemble_configs",
    "load_split",
    "load_world",
    "read_report",
    "train_ensemble",
    "train_imitator",
]
