"""τ, the trusted teacher, at the level of whole turns (SYSTEM.md §4).

Generative model of one conversation, with a latent style s drawn once per conversation:

    s ~ Uniform{0, ..., S-1}
    for each teacher turn t, with x_t = category of the student's last reply ("start" if none):
        c_t ~ P(c | s, x_t) ∝ base_s(c) · boost^[c = respond(x_t)]
        u_t ~ P(u | c_t, s) = w_s(u) / Σ_{u' ∈ pool(c_t)} w_s(u')

base_s puts ``style_focus`` on the class style s favours (class s mod 4) and spreads the rest
evenly; respond maps question→answer, negative→encourage, positive→ask, neutral→explain
("start" boosts nothing). w_s(u) = 1 when sentence u belongs to style s's share of its class
pool (each sentence has one home style, dealt round-robin after a seeded shuffle) and
``off_style_weight`` otherwise. So a teacher's class preferences and wording persist within a
conversation, which an imitator can pick up in context.

τ's predictive distribution for the next turn marginalises the style by exact Bayes:

    P(u | h) = Σ_s P(s | h) · P(u | s, x(h)),   P(s | h) ∝ Π_{t ∈ h, u_t ∈ U} P(u_t | s, x_t)

Any history is allowed. Student replies are read as text (reply_category: '?' then VADER), so
replies outside the student pool are fine. Previous teacher turns that τ could never have
written (empty turns included) carry no evidence about the style and are ignored; turns that
τ could have written count as evidence whoever wrote them. Every class has positive
probability in every context and every weight is positive, so τ's support, the union U of the
class pools, does not depend on the history.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from klbudget.world.config import WorldConfig
from klbudget.world.pools import STUDENT_CATEGORIES, TEACHER_CLASSES, Pools, reply_category

Turn = tuple[str, str]  # (speaker, content) as ChatFormat.split_turns returns it

CONTEXTS: tuple[str, ...] = ("start", *STUDENT_CATEGORIES)
# The teacher class that answers a student reply of each category.
RESPONSE_CLASS: dict[str, str] = {
    "question": "answer",
    "negative": "encourage",
    "positive": "ask",
    "neutral": "explain",
}


def class_probs(cfg: WorldConfig, style: int, context: str) -> np.ndarray:
    """P(c | s, x) over TEACHER_CLASSES (module docstring), shape (C,)."""
    n = len(TEACHER_CLASSES)
    favoured = style % n
    p = np.full(n, (1.0 - cfg.style_focus) / (n - 1))
    p[favoured] = cfg.style_focus
    if context in RESPONSE_CLASS:
        p[TEACHER_CLASSES.index(RESPONSE_CLASS[context])] *= cfg.context_boost
    return p / p.sum()


def home_styles(cfg: WorldConfig, pool: Sequence[str], class_index: int) -> np.ndarray:
    """Home style of each sentence of one class pool: round-robin over a seeded shuffle."""
    perm = np.random.default_rng([cfg.seed, 3, class_index]).permutation(len(pool))
    home = np.empty(len(pool), dtype=np.int64)
    home[perm] = np.arange(len(pool)) % cfg.n_styles
    return home


def draw_index(cdf: np.ndarray, rng: np.random.Generator) -> int:
    """i ~ p given cdf = cumsum(p): one uniform draw (faster than Generator.choice)."""
    return min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), cdf.size - 1)


def context_of(history: Sequence[Turn]) -> str:
    """Category x of the last student reply in ``history`` ("start" when there is none)."""
    for speaker, content in reversed(history):
        if speaker == "student":
            return reply_category(content)
    return "start"


class Teacher:
    """τ over whole teacher turns: exact predictive probabilities, sampling, classes."""

    def __init__(self, pools: Pools, cfg: WorldConfig, cache_size: int = 4096) -> None:
        self.cfg = cfg
        sentences: list[str] = []
        classes: list[str] = []
        homes: list[np.ndarray] = []
        for ci, c in enumerate(TEACHER_CLASSES):
            pool = pools.teacher[c]
            sentences.extend(pool)
            classes.extend([c] * len(pool))
            homes.append(home_styles(cfg, pool, ci))
        self.sentences: tuple[str, ...] = tuple(sentences)  # the support U, in class order
        self.classes: tuple[str, ...] = tuple(classes)  # class of each sentence
        self.home = np.concatenate(homes)  # (U,) home style of each sentence
        self._index = {u: i for i, u in enumerate(self.sentences)}
        if len(self._index) != len(self.sentences):
            raise ValueError("teacher pools overlap")
        S, U = cfg.n_styles, len(self.sentences)
        cls_idx = np.array([TEACHER_CLASSES.index(c) for c in self.classes])
        w = np.where(self.home[None, :] == np.arange(S)[:, None], 1.0, cfg.off_style_weight)
        # Normalise weights within each class pool, per style: P(u | c(u), s).
        norm = np.zeros((S, len(TEACHER_CLASSES)))
        np.add.at(norm.T, cls_idx, w.T)
        p_u_given_c = w / norm[:, cls_idx]  # (S, U)
        table = np.empty((len(CONTEXTS), S, U))
        for xi, x in enumerate(CONTEXTS):
            pc = np.stack([class_probs(cfg, s, x) for s in range(S)])  # (S, C)
            table[xi] = pc[:, cls_idx] * p_u_given_c
        self.table = table  # (X, S, U) P(u | s, x)
        self._cdf = np.cumsum(table, axis=-1)  # for fast generative draws
        self.log_table = np.log(table)
        self._cache: OrderedDict[tuple[Turn, ...], np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    # --- support and classes (history-independent, see module docstring) -------------------
    def in_support(self, content: str) -> bool:
        """Whether τ can write a teacher turn with this content (exact string match)."""
        return content in self._index

    def classify(self, content: str) -> str | None:
        """Behaviour class of a teacher turn's content, or None when τ cannot write it."""
        i = self._index.get(content)
        return None if i is None else self.classes[i]

    def index(self, content: str) -> int | None:
        """Position of ``content`` in :attr:`sentences`, or None outside the support."""
        return self._index.get(content)

    # --- Bayes over styles ---------------------------------------------------------------
    def style_log_posterior(self, history: Sequence[Turn]) -> np.ndarray:
        """log P(s | h), shape (S,): uniform prior times the likelihood of τ-writable turns."""
        logp = np.full(self.cfg.n_styles, -np.log(self.cfg.n_styles))
        context = "start"
        for speaker, content in history:
            if speaker == "student":
                context = reply_category(content)
            elif speaker == "teacher":
                i = self._index.get(content)
                if i is not None:  # unwritable turns carry no evidence (module docstring)
                    logp = logp + self.log_table[CONTEXTS.index(context), :, i]
            else:
                raise ValueError(f"unknown speaker {speaker!r}")
        return logp - np.logaddexp.reduce(logp)

    def turn_probs(self, history: Sequence[Turn]) -> np.ndarray:
        """P(u | h) over :attr:`sentences`, shape (U,), float64; sums to 1.

        ``history`` is every turn before the teacher turn in question; it must be empty or
        end with a student turn.
        """
        key = tuple((speaker, content) for speaker, content in history)  # lists from JSON too
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        if history and history[-1][0] != "student":
            raise ValueError("a teacher turn follows a student turn (or starts the chat)")
        post = np.exp(self.style_log_posterior(history))  # (S,)
        p = post @ self.table[CONTEXTS.index(context_of(history))]  # (U,)
        p.setflags(write=False)  # shared through the cache
        self._cache[key] = p
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return p

    def turn_logprob(self, history: Sequence[Turn], content: str) -> float:
        """log P(u | h); -inf when τ cannot write ``content``."""
        i = self._index.get(content)
        return float("-inf") if i is None else float(np.log(self.turn_probs(history)[i]))

    # --- sampling --------------------------------------------------------------------------
    def sample_turn(self, history: Sequence[Turn], rng: np.random.Generator) -> str:
        """u ~ P(u | h): the next teacher turn from τ's predictive distribution."""
        return self.sentences[int(rng.choice(len(self.sentences), p=self.turn_probs(history)))]

    def sample_turn_given_style(
        self, style: int, history: Sequence[Turn], rng: np.random.Generator
    ) -> str:
        """u ~ P(u | s, x(h)): the generative draw used to write the demonstration corpus."""
        cdf = self._cdf[CONTEXTS.index(context_of(history)), style]
        return self.sentences[draw_index(cdf, rng)]
