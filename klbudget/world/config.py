"""Configuration of the default world (docs/design.md, "The world") and its stable hash.

The hash names cached artefacts (corpora, imitators): two configs with the same fields give
the same hash on every machine, and a change to the generating code is signalled by bumping
``WORLD_VERSION``, which the hash includes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from klbudget.config import SEED, Rule, check_ranges

# Bumped whenever a change to the world's code changes what a config generates.
WORLD_VERSION = 4


def stable_hash(payload: object, length: int = 12) -> str:
    """sha256 of the canonical JSON of ``payload`` (sorted keys), truncated to ``length`` hex."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:length]


@dataclass(frozen=True)
class WorldConfig:
    """The trusted teacher τ, the world's student and the demonstration corpus (docs/design.md, "The
    world")."""

    seed: int = 0  # seeds the sentence pools, the style subsets and every transcript
    n_train: int = 4000  # demonstration transcripts in the training split
    n_heldout: int = 200  # demonstration transcripts in the held-out split
    n_styles: int = 4  # latent teacher styles; style s favours behaviour class s mod 4
    teacher_pool_size: int = 40  # sentences per teacher behaviour class
    student_pool_size: int = 32  # sentences per student reply category
    teacher_min_words: int = 3  # shortest teacher sentence, in whitespace words
    teacher_max_words: int = 10  # longest teacher sentence, in whitespace words
    student_min_words: int = 2  # shortest student sentence, in whitespace words
    student_max_words: int = 10  # longest student sentence, in whitespace words
    style_focus: float = 0.55  # probability of a style's favoured class before the context boost
    context_boost: float = 4.0  # odds multiplier of the class that answers the student's reply
    off_style_weight: float = 0.1  # weight of a class's sentences outside the style's subset
    transcript_pretokens: int = 280  # a transcript grows until it has this many pre-tokens
    n_openers: int = 400  # size of the pool of teacher openers ("Well, ..."); 0: no openers
    opener_persistence: float = 0.95  # ρ: a teacher turn keeps the last turn's opener
    quiet_students: float = 0.3  # share of conversations whose student is quiet
    quiet_rate: float = 0.6  # a quiet student's chance of replying with nothing

    def __post_init__(self) -> None:
        check_ranges(self, WORLD_RULES, "world")
        if self.teacher_min_words > self.teacher_max_words:
            raise ValueError("world.teacher_min_words must not exceed teacher_max_words")
        if self.student_min_words > self.student_max_words:
            raise ValueError("world.student_min_words must not exceed student_max_words")
        if self.n_styles < 1 or self.teacher_pool_size < 1 or self.student_pool_size < 1:
            raise ValueError("n_styles and pool sizes must be positive")
        if not 0.0 < self.style_focus < 1.0:
            raise ValueError("style_focus must lie in (0, 1)")
        if self.context_boost <= 0.0 or self.off_style_weight <= 0.0:
            # Zero would take sentences out of τ's support for some histories; the support is
            # kept history-independent on purpose (see teacher.py).
            raise ValueError("context_boost and off_style_weight must be positive")
        if self.n_openers < 0:
            raise ValueError("n_openers must be >= 0")
        if not 0.0 <= self.opener_persistence < 1.0:
            # ρ = 1 would make τ's support depend on the history (teacher.py).
            raise ValueError("opener_persistence must lie in [0, 1)")
        if not (0.0 <= self.quiet_students < 1.0 and 0.0 <= self.quiet_rate < 1.0):
            raise ValueError("quiet_students and quiet_rate must lie in [0, 1)")
        if self.n_train < 1 or self.n_heldout < 1:
            raise ValueError("both splits need at least one transcript")

    def to_dict(self) -> dict[str, object]:
        """All fields, for JSON/TOML."""
        return asdict(self)

    @property
    def hash(self) -> str:
        """Stable identifier of what this config generates (fields + WORLD_VERSION)."""
        return stable_hash({"world_version": WORLD_VERSION, **self.to_dict()})


def _ints(lo: int, hi: int) -> Rule:
    return Rule(lo=lo, hi=hi)


# The range of every field (checked before anything is built; relations in __post_init__).
WORLD_RULES = {
    "seed": SEED,
    "n_train": _ints(1, 10_000_000),
    "n_heldout": _ints(1, 1_000_000),
    "n_styles": _ints(1, 1000),
    "teacher_pool_size": _ints(1, 100_000),
    "student_pool_size": _ints(1, 100_000),
    "teacher_min_words": _ints(1, 200),
    "teacher_max_words": _ints(1, 200),
    "student_min_words": _ints(1, 200),
    "student_max_words": _ints(1, 200),
    "style_focus": Rule(lo=0.0, hi=1.0, lo_open=True, hi_open=True),
    "context_boost": Rule(lo=0.0, hi=1e6, lo_open=True),
    "off_style_weight": Rule(lo=0.0, hi=1e6, lo_open=True),
    "transcript_pretokens": _ints(1, 1_000_000),
    "n_openers": _ints(0, 100_000),
    "opener_persistence": Rule(lo=0.0, hi=1.0, hi_open=True),
    "quiet_students": Rule(lo=0.0, hi=1.0, hi_open=True),
    "quiet_rate": Rule(lo=0.0, hi=1.0, hi_open=True),
}
