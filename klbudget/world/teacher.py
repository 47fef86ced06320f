"""τ, the trusted teacher, at the level of whole turns (docs/design.md, "The world").

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

Openers (``n_openers`` > 0). Each teacher turn then opens with the teacher's own word, a
per-conversation habit drawn from a large pool O of rare variants: the content is
"<opener>, <body>" where the body is the sentence u with its first letter lowered (body_of).
The opener follows a Markov chain over the τ-writable teacher turns:

    o_1 ~ Uniform(O),   o_t = o_{t'} with probability ρ, else ~ Uniform(O)

where t' is the last earlier teacher turn τ could have written (``opener_persistence`` = ρ),
independently of the body, so P(o, u | h) = P(o | h) · P(u | h). Copying the opener from the
last teacher turn predicts it almost surely, and the pool is too large to memorise per
conversation: an imitator learns to copy, in context, what followed the teacher tag before
(the in-context learning of docs/design.md, "The world"), while τ itself never writes an empty turn.

Any history is allowed. Student replies are read as text (reply_category: '?' then VADER), so
replies outside the student pool are fine. Previous teacher turns that τ could never have
written (empty turns included) carry no evidence about the style and are ignored; turns that
τ could have written count as evidence whoever wrote them. Every class has positive
probability in every context and every weight is positive, so τ's support, the union U of the
class pools (times O, with openers, since ρ < 1), does not depend on the history.
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


def body_of(sentence: str) -> str:
    """The sentence as it reads after an opener: first letter lowered, except for "I", "I'm",
    ... and all-caps words."""
    first = sentence.split(" ", 1)[0]
    if first == "I" or first.startswith("I'") or (len(first) > 1 and first.isupper()):
        return sentence
    return sentence[0].lower() + sentence[1:]


def opener_chain(n: int, rho: float, last: int | None) -> np.ndarray:
    """P(o) over n openers after the last opener ``last`` (None: there was none): keep it with
    probability ρ, else draw uniformly (module docstring)."""
    p = np.full(n, 1.0 / n if n else 0.0)
    if last is not None:
        p *= 1.0 - rho
        p[last] += rho
    return p


class OpenerHabit:
    """Turn contents "<opener>, <body>" over a pool of openers and one of sentences (module
    docstring), parsed back exactly; without openers a turn's content is the sentence."""

    def __init__(self, openers: Sequence[str], sentences: Sequence[str], what: str) -> None:
        self.openers = tuple(openers)
        self.bodies: tuple[str, ...] = (
            tuple(body_of(u) for u in sentences) if self.openers else tuple(sentences)
        )
        self._index = {b: i for i, b in enumerate(self.bodies)}
        if len(self._index) != len(self.bodies):
            raise ValueError(f"{what}: two sentences read the same after an opener")
        self._opener_index = {o: i for i, o in enumerate(self.openers)}
        if len(self._opener_index) != len(self.openers):
            raise ValueError("openers repeat")

    def parse(self, content: str) -> tuple[int, int] | None:
        """(opener index or -1 without openers, sentence index), or None for other text."""
        if not self.openers:
            i = self._index.get(content)
            return None if i is None else (-1, i)
        opener, sep, body = content.partition(", ")
        o, i = self._opener_index.get(opener), self._index.get(body)
        return None if not sep or o is None or i is None else (o, i)

    def content(self, opener: int, sentence: int) -> str:
        """The content with this opener (ignored without openers) and sentence."""
        body = self.bodies[sentence]
        return f"{self.openers[opener]}, {body}" if self.openers else body


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
        self.openers: tuple[str, ...] = tuple(pools.openers)  # O; empty: turns are sentences
        self.rho = cfg.opener_persistence
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
        self.habit = OpenerHabit(self.openers, self.sentences, "teacher pools")
        self.bodies = self.habit.bodies  # what a turn holds after its opener
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
    def parse(self, content: str) -> tuple[int, int] | None:
        """(opener index, sentence index) of a turn τ can write (opener index -1 without
        openers), or None outside the support (exact string match)."""
        return self.habit.parse(content)

    def content(self, opener: int, sentence: int) -> str:
        """The turn τ writes with this opener (ignored without openers) and sentence."""
        return self.habit.content(opener, sentence)

    def in_support(self, content: str) -> bool:
        """Whether τ can write a teacher turn with this content (exact string match)."""
        return self.parse(content) is not None

    def classify(self, content: str) -> str | None:
        """Behaviour class of a teacher turn's content, or None when τ cannot write it."""
        hit = self.parse(content)
        return None if hit is None else self.classes[hit[1]]

    def index(self, content: str) -> int | None:
        """Position of the turn's sentence in :attr:`sentences`, or None outside the support."""
        hit = self.parse(content)
        return None if hit is None else hit[1]

    # --- Bayes over styles ---------------------------------------------------------------
    def style_log_posterior(self, history: Sequence[Turn]) -> np.ndarray:
        """log P(s | h), shape (S,): uniform prior times the likelihood of τ-writable turns."""
        logp = np.full(self.cfg.n_styles, -np.log(self.cfg.n_styles))
        context = "start"
        for speaker, content in history:
            if speaker == "student":
                context = reply_category(content)
            elif speaker == "teacher":
                i = self.index(content)
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

    def last_opener(self, history: Sequence[Turn]) -> int | None:
        """Opener index of the last teacher turn in ``history`` that τ could have written."""
        for speaker, content in reversed(history):
            hit = self.parse(content) if speaker == "teacher" else None
            if hit is not None:
                return hit[0]
        return None

    def opener_probs(self, history: Sequence[Turn]) -> np.ndarray:
        """P(o | h) over :attr:`openers`, shape (O,), float64 (module docstring); (0,) without
        openers."""
        last = self.last_opener(history) if self.openers else None
        return opener_chain(len(self.openers), self.rho, last)

    def turn_logprob(self, history: Sequence[Turn], content: str) -> float:
        """log P(o, u | h); -inf when τ cannot write ``content``."""
        hit = self.parse(content)
        if hit is None:
            return float("-inf")
        o, i = hit
        lp = float(np.log(self.turn_probs(history)[i]))
        return lp + float(np.log(self.opener_probs(history)[o])) if self.openers else lp

    # --- sampling --------------------------------------------------------------------------
    def _draw_opener(self, history: Sequence[Turn], rng: np.random.Generator) -> int:
        return draw_index(np.cumsum(self.opener_probs(history)), rng) if self.openers else -1

    def sample_turn(self, history: Sequence[Turn], rng: np.random.Generator) -> str:
        """(o, u) ~ P(o | h) P(u | h): the next teacher turn from τ's predictive distribution."""
        i = int(rng.choice(len(self.sentences), p=self.turn_probs(history)))
        return self.content(self._draw_opener(history, rng), i)

    def sample_turn_given_style(
        self, style: int, history: Sequence[Turn], rng: np.random.Generator
    ) -> str:
        """(o, u) ~ P(o | h) P(u | s, x(h)): the generative draw that writes the corpus."""
        cdf = self._cdf[CONTEXTS.index(context_of(history)), style]
        i = draw_index(cdf, rng)
        return self.content(self._draw_opener(history, rng), i)
