"""The world's student: real chat lines whose sentiment depends on what the teacher did.

docs/design.md, "The world". Given the teacher's last turn with class c (τ's classes; "other" for a
turn τ could never write, an empty one included):

    k ~ P(k | c) = REPLY_MIX[c]                      (reply category)
    r ~ Uniform(student pool of category k)

Encouragement mostly draws positive replies, so teaching well is a way to earn the
sentiment reward of docs/design.md, "Mechanics". A turn τ could not write gets the average of the
four rows: it tells the student nothing, and nothing about it (silence included) is rewarded or
punished on purpose.

Quiet students (``quiet_students`` = p, ``quiet_rate`` = q). A conversation's student is quiet
with probability p, drawn once; after its first reply, which always says something, a quiet
student replies with nothing (the empty reply, the hand-back straight after the student tag)
with probability q and otherwise as above; other students always say something. The
predictive distribution marginalises the latent by Bayes on the replies so far:

    P(empty | h) = 0 before the first reply, then q · P(quiet | h), where P(quiet | h) = 1 if
                   h holds an empty reply, else p (1 − q)^(k−1) / (p (1 − q)^(k−1) + 1 − p)
                   after k ≥ 1 non-empty replies

(The first reply is never empty so that a student sampled near-greedily, as the environment
samples it at temperature 0.05, does not fall silent from the start: silence must not be the
single most likely reply to a teacher it has not heard from.)
    P(r | h, c)  = (1 − P(empty | h)) · P(r | c)

So the world holds silence, but only the student's: τ, the teacher, never writes an empty
turn. Beyond the latent, the student is memoryless: only the teacher's last turn matters.

Openers: with the world's openers, the student has a habit of its own like the teacher's
(teacher.py): a non-empty reply is "<opener>, <body>", the opener kept from the student's
last non-empty reply with probability ρ, else drawn uniformly, independently of the
teacher's. P(o, r | h, c) = (1 − P(empty | h)) · P(o | h) · P(r | c).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from klbudget.world.pools import STUDENT_CATEGORIES, TEACHER_CLASSES, Pools, vader_compound
from klbudget.world.teacher import OpenerHabit, Teacher, Turn, draw_index, opener_chain

# P(reply category | teacher class), columns in STUDENT_CATEGORIES order
# (positive, neutral, negative, question).
REPLY_MIX: dict[str, tuple[float, float, float, float]] = {
    "explain": (0.15, 0.45, 0.10, 0.30),
    "encourage": (0.70, 0.15, 0.10, 0.05),
    "ask": (0.25, 0.45, 0.20, 0.10),
    "answer": (0.45, 0.30, 0.10, 0.15),
}
OTHER = "other"  # label of teacher turns outside τ's support


def category_mix(teacher_class: str) -> np.ndarray:
    """P(k | c) over STUDENT_CATEGORIES, shape (K,); the row average for ``OTHER``."""
    if teacher_class == OTHER:
        return np.mean([REPLY_MIX[c] for c in TEACHER_CLASSES], axis=0)
    return np.asarray(REPLY_MIX[teacher_class], dtype=np.float64)


class Student:
    """The world's student: exact reply probabilities and sampling, given the teacher's turn."""

    def __init__(
        self, pools: Pools, teacher: Teacher, quiet: float = 0.0, quiet_rate: float = 0.0
    ) -> None:
        self.teacher = teacher
        self.quiet, self.quiet_rate = quiet, quiet_rate
        self.openers = teacher.openers  # the same pool as the teacher's, drawn independently
        self.rho = teacher.rho
        sentences: list[str] = []
        cats: list[str] = []
        for k in STUDENT_CATEGORIES:
            sentences.extend(pools.student[k])
            cats.extend([k] * len(pools.student[k]))
        self.sentences: tuple[str, ...] = tuple(sentences)  # all replies, in category order
        self.categories: tuple[str, ...] = tuple(cats)  # category of each reply
        cat_idx = np.array([STUDENT_CATEGORIES.index(k) for k in cats])
        sizes = np.bincount(cat_idx, minlength=len(STUDENT_CATEGORIES))
        labels = (*TEACHER_CLASSES, OTHER)
        # P(r | c) = P(k(r) | c) / |pool(k(r))|, one row per teacher label.
        self._rows = {c: category_mix(c)[cat_idx] / sizes[cat_idx] for c in labels}
        self._cdfs = {c: np.cumsum(p) for c, p in self._rows.items()}
        # Every reply the student can write: the pool, then the empty reply when it can be quiet.
        self.replies: tuple[str, ...] = self.sentences + (("",) if self.silent_ok else ())
        self.habit = OpenerHabit(self.openers, self.sentences, "student pools")
        self.bodies = self.habit.bodies  # what a reply holds after its opener

    def parse(self, content: str) -> tuple[int, int] | None:
        """(opener index or -1, sentence index or -1 for the empty reply) of a reply the student
        can write, or None."""
        if content == "":
            return (-1, -1) if self.silent_ok else None
        return self.habit.parse(content)

    def content(self, opener: int, sentence: int) -> str:
        """The reply with this opener (ignored without openers) and sentence."""
        return self.habit.content(opener, sentence)

    def opener_probs(self, history: Sequence[Turn]) -> np.ndarray:
        """P(o | h) of the next non-empty reply's opener, shape (O,) (module docstring)."""
        last = None
        for speaker, content in reversed(history):
            hit = self.parse(content) if speaker == "student" and content else None
            if hit is not None:
                last = hit[0]
                break
        return opener_chain(len(self.openers), self.rho, last)

    @property
    def silent_ok(self) -> bool:
        """Whether this student can reply with nothing (quiet students exist)."""
        return self.quiet > 0.0 and self.quiet_rate > 0.0

    def p_empty(self, history: Sequence[Turn] = ()) -> float:
        """P(empty reply | h) (module docstring)."""
        if not self.silent_ok:
            return 0.0
        said = [content for speaker, content in history if speaker == "student"]
        if not said:
            return 0.0  # every student says something first
        if "" in said:
            return self.quiet_rate
        like = self.quiet * (1.0 - self.quiet_rate) ** (len(said) - 1)
        return self.quiet_rate * like / (like + 1.0 - self.quiet)

    def teacher_label(self, teacher_content: str) -> str:
        """τ's class of the teacher turn, or ``OTHER`` when τ could not write it."""
        return self.teacher.classify(teacher_content) or OTHER

    def reply_probs(self, teacher_content: str, history: Sequence[Turn] = ()) -> np.ndarray:
        """P(r | h, teacher's last turn) over :attr:`replies`, shape (R,); ``history`` holds
        the turns before that teacher turn (only its student replies matter)."""
        row = self._rows[self.teacher_label(teacher_content)]
        if not self.silent_ok:
            return row
        e = self.p_empty(history)
        return np.append(row * (1.0 - e), e)

    def reply_factors(
        self, teacher_content: str, history: Sequence[Turn] = ()
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The factors of P(reply | h) for token models (trie.TurnPieces): without openers
        (P over :attr:`replies`, None); with openers (P(r | c) over :attr:`sentences`,
        P over the heads: every opener, then the empty reply when the student can be quiet)."""
        if not self.openers:
            return self.reply_probs(teacher_content, history), None
        e = self.p_empty(history)
        heads = self.opener_probs(history) * (1.0 - e)
        return self._rows[self.teacher_label(teacher_content)], (
            np.append(heads, e) if self.silent_ok else heads
        )

    def sample_reply(
        self,
        teacher_content: str,
        rng: np.random.Generator,
        quiet: bool = False,
        history: Sequence[Turn] = (),
    ) -> str:
        """r ~ P(r | h, teacher's last turn, the student quiet or not): the generative draw;
        ``history`` (the turns before that teacher turn) carries the opener habit."""
        started = any(speaker == "student" for speaker, _ in history)
        if quiet and started and rng.random() < self.quiet_rate:
            return ""
        i = draw_index(self._cdfs[self.teacher_label(teacher_content)], rng)
        if not self.openers:
            return self.sentences[i]
        return self.content(draw_index(np.cumsum(self.opener_probs(history)), rng), i)

    def expected_reward(self, teacher_content: str) -> float:
        """E[(s(r) + 1) / 2] with s the VADER compound: the reward of docs/design.md, "Mechanics" (a
        student who is not quiet)."""
        s = np.array([vader_compound(r) for r in self.sentences])
        return float(self.reply_probs(teacher_content) @ ((s + 1.0) / 2.0))
