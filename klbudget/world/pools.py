"""Sentence pools of the default world: real human chat lines from ``chitchat-dataset``.

docs/design.md, "The world": τ writes teacher turns made of real human sentences. Every chat line of
the dataset is a candidate; fixed, documented rules sort candidates into behaviour classes
(teacher) and reply categories (student):

teacher classes (checked in this order, so the classes are disjoint)
    ask        a single question: ends with "?" and opens with a question word
    encourage  VADER compound >= 0.6, ends with "!" or "."
    answer     opens with an answer word ("Yes", "No", "I think", ...), compound in (-0.2, 0.6)
    explain    a neutral statement (|compound| < 0.2) of >= 5 words, ends with ".", not "I ..."
student categories
    question   ends with "?"
    positive   compound >= 0.5
    negative   compound <= -0.4
    neutral    |compound| < 0.05

Openers: capitalised words that open a chat line before a comma ("Well, ...", "Honestly, ...");
a seeded draw of ``n_openers`` of them (teacher.py says how τ uses them).

Teacher sentences are single sentences that open with a capital letter; all sentences are
printable ASCII with no newline and no chat tag, so that a rendered transcript splits back
into the same turns. A seeded draw without replacement picks ``pool_size`` sentences from
each class (pools.py:_fill); the student pools exclude every chosen teacher sentence.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

TEACHER_CLASSES: tuple[str, ...] = ("explain", "encourage", "ask", "answer")
STUDENT_CATEGORIES: tuple[str, ...] = ("positive", "neutral", "negative", "question")

_QUESTION_WORDS = (
    "What", "How", "Why", "Where", "When", "Which", "Who", "Do", "Does", "Did", "Have",
    "Has", "Are", "Is", "Can", "Could", "Would", "Will", "Should",
)  # fmt: skip
_ANSWER_WORDS = (
    "Yes", "Yeah", "Yep", "No", "Nope", "Sure", "Definitely", "Probably", "Maybe",
    "Absolutely", "Of course", "Not really", "I think", "I guess", "Well",
)  # fmt: skip
# A trusted teacher does not swear; a handful of words keeps the teacher pools clean.
_TEACHER_BLOCKLIST = re.compile(
    r"\b(fuck\w*|shit\w*|damn\w*|sex\w*|kill\w*|suicide|die|died|dead|drunk|hell|ass)\b",
    re.IGNORECASE,
)
# The dataset has ~2,900 lines of a word game ("The bald book coughed calmly."); they are
# not statements a teacher makes.
_WORD_GAME = re.compile(r"^The [a-z]+ [a-z]+ [a-z]+ [a-z]+ly\.?$", re.IGNORECASE)
_FORBIDDEN = ("Teacher:", "Student:")


@functools.cache
def _analyzer() -> object:
    # Imported lazily: loading the lexicon takes ~0.1 s and not every caller needs it.
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


@functools.lru_cache(maxsize=65536)
def vader_compound(text: str) -> float:
    """VADER compound score s ∈ [-1, 1] of ``text`` (the offline sentiment, OFFLINE.md)."""
    return float(_analyzer().polarity_scores(text)["compound"])  # type: ignore[attr-defined]


def reply_category(text: str) -> str:
    """Category of ANY student reply, read from its text: '?' first, then VADER thresholds.

    Defined for text outside the student pool (an imitator's student). The thresholds sit
    between the pool thresholds, so every pool sentence maps back to its own category.
    """
    text = text.strip()
    if text.endswith("?"):
        return "question"
    s = vader_compound(text)
    if s >= 0.25:
        return "positive"
    if s <= -0.25:
        return "negative"
    return "neutral"


def _starts_with_word(text: str, words: tuple[str, ...]) -> bool:
    return any(
        text.startswith(w) and text[len(w) : len(w) + 1] in (" ", ",", ".", "!") for w in words
    )


def _clean(text: str) -> bool:
    """Printable ASCII, one line, no chat tag, starts with a letter, ends with . ! or ?."""
    return (
        bool(text)
        and text.isascii()
        and text.isprintable()
        and text[0].isalpha()
        and text[-1] in ".!?"
        and not any(tag in text for tag in _FORBIDDEN)
    )


def teacher_class(text: str, min_words: int, max_words: int) -> str | None:
    """Behaviour class of a candidate teacher sentence under the rules above, or None."""
    n_words = len(text.split())
    if not (_clean(text) and text[0].isupper() and min_words <= n_words <= max_words):
        return None
    # Single sentence: terminal punctuation only at the very end.
    if any(ch in ".!?" for ch in text[:-1]) or _TEACHER_BLOCKLIST.search(text):
        return None
    if _WORD_GAME.match(text):
        return None
    if text.endswith("?"):
        return "ask" if _starts_with_word(text, _QUESTION_WORDS) else None
    s = vader_compound(text)
    if s >= 0.6:
        return "encourage"
    if _starts_with_word(text, _ANSWER_WORDS):
        return "answer" if -0.2 < s < 0.6 else None
    if text.endswith(".") and abs(s) < 0.2 and n_words >= 5 and not text.startswith("I "):
        return "explain"
    return None


def student_category(text: str, min_words: int, max_words: int) -> str | None:
    """Pool category of a candidate student sentence, or None (stricter than reply_category)."""
    if not (_clean(text) and min_words <= len(text.split()) <= max_words):
        return None
    if text.endswith("?"):
        return "question"
    s = vader_compound(text)
    if s >= 0.5:
        return "positive"
    if s <= -0.4:
        return "negative"
    if abs(s) < 0.05:
        return "neutral"
    return None


@functools.cache
def chat_lines() -> tuple[str, ...]:
    """Every distinct chat line of chitchat-dataset, stripped, sorted (order-independent)."""
    import chitchat_dataset

    data = chitchat_dataset.Dataset()
    lines = {
        u["text"].strip() for conv in data.values() for message in conv["messages"] for u in message
    }
    return tuple(sorted(line for line in lines if line))


@dataclass(frozen=True)
class Pools:
    """Teacher sentences by class and student sentences by category (each list sorted)."""

    teacher: dict[str, tuple[str, ...]]  # class -> sentences
    student: dict[str, tuple[str, ...]]  # category -> sentences
    openers: tuple[str, ...] = ()  # the teacher's opening words (teacher.py), sorted


def _fill(
    lines: tuple[str, ...],
    classify: Callable[[str], str | None],
    labels: tuple[str, ...],
    k: int,
    rng: np.random.Generator,
    exclude: frozenset[str] = frozenset(),
) -> dict[str, tuple[str, ...]]:
    """k sentences per label, uniform without replacement among the lines with that label.

    Walking the lines in a seeded random order and keeping the first k of each label is a
    uniform draw of a k-subset per label, and it classifies (runs VADER on) only the few
    thousand lines it walks instead of all of them.
    """
    chosen: dict[str, list[str]] = {c: [] for c in labels}
    for i in rng.permutation(len(lines)):
        line = lines[i]
        c = None if line in exclude else classify(line)
        if c is not None and len(chosen[c]) < k:
            chosen[c].append(line)
            if all(len(v) == k for v in chosen.values()):
                return {c: tuple(sorted(v)) for c, v in chosen.items()}
    short = {c: len(v) for c, v in chosen.items() if len(v) < k}
    raise ValueError(f"not enough sentences for pools of {k}: {short}")


_OPENER = re.compile(r"^([A-Z][a-z]{1,11}), [A-Za-z]")


def opener_candidates() -> tuple[str, ...]:
    """Words people open a chat line with before a comma ("Well, ...", "Honestly, ..."):
    a capitalised word of 2-12 letters, sorted; the teacher blocklist applies, and only
    words VADER scores 0 are kept, so an opener never moves a turn's sentiment."""
    words = set()
    for line in chat_lines():
        m = _OPENER.match(line)
        if m and not _TEACHER_BLOCKLIST.search(m.group(1)) and vader_compound(m.group(1)) == 0:
            words.add(m.group(1))
    return tuple(sorted(words))


def speaker_names(n: int, seed: int = 0) -> tuple[str, ...]:
    """n capitalised chat words to stand in for the speaker tags (imitator.py, renaming),
    drawn with a fixed seed so that every imitator of every world shares them."""
    words = [w for w in opener_candidates() if w not in ("Teacher", "Student")]
    pick = np.random.default_rng([seed, 6]).choice(
        len(words), size=min(n, len(words)), replace=False
    )
    return tuple(sorted(words[i] for i in pick))


def draw_openers(seed: int, n: int) -> tuple[str, ...]:
    """n openers drawn uniformly without replacement (seeded), sorted."""
    if n == 0:
        return ()
    words = opener_candidates()
    if n > len(words):
        raise ValueError(f"only {len(words)} openers are available, asked for {n}")
    pick = np.random.default_rng([seed, 5]).choice(len(words), size=n, replace=False)
    return tuple(sorted(words[i] for i in pick))


def build_pools(
    seed: int,
    teacher_pool_size: int,
    student_pool_size: int,
    teacher_words: tuple[int, int],
    student_words: tuple[int, int],
    n_openers: int = 0,
) -> Pools:
    """Seeded pools; the same arguments give the same pools on every machine."""
    lines = chat_lines()
    teacher = _fill(
        lines,
        lambda s: teacher_class(s, *teacher_words),
        TEACHER_CLASSES,
        teacher_pool_size,
        np.random.default_rng([seed, 1]),
    )
    student = _fill(
        lines,
        lambda s: student_category(s, *student_words),
        STUDENT_CATEGORIES,
        student_pool_size,
        np.random.default_rng([seed, 2]),
        exclude=frozenset(s for pool in teacher.values() for s in pool),
    )
    return Pools(teacher=teacher, student=student, openers=draw_openers(seed, n_openers))
