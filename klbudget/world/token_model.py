"""τ at the level of tokens: log τ(next teacher token | transcript so far), exactly.

docs/design.md, "The world". A teacher turn with content u is the piece y(u) = " " + u +
"\\n\\nStudent:", tokenized canonically on its own (tokenizer.py explains why that is also its
tokenization inside the transcript). τ's distribution over the token sequence of the current turn is
the image of its turn distribution P(u | h) (teacher.py) under u ↦ ids(y(u)):

    τ(v | h, y_{<t}) = Σ_{u: ids(y(u)) starts with y_{<t} v} P(u | h)
                       / Σ_{u: ids(y(u)) starts with y_{<t}} P(u | h)

computed with a trie (trie.py). With openers (teacher.py) a turn is " o," + " body" + hand-over,
both pieces pre-token aligned so that its tokens are ids(" o,") + ids(" body\n\nStudent:"), and
P(o, u | h) = P(o | h) P(u | h) factorises: the prefix walks an opener trie until it holds a
whole opener, then the sentence trie, each under its own factor. Consequences, by
construction:
- A non-canonical token sequence for a sentence τ can write has τ-probability 0, as has any
  turn outside τ's support, the empty turn included.
- After a prefix that no supported turn starts with, τ's conditional does not exist:
  next_token_logprobs is -inf everywhere, next_token_entropy is nan, and both samplers
  raise ValueError. ``prefix_in_support`` tells the caller beforehand.
- After a complete turn (the prefix ends with the hand-over) the student speaks; τ has no
  next teacher token there either (same outputs, except that sample_continuation returns
  []; ``is_complete`` is True).

``history`` is the list of (speaker, content) turns before the current teacher turn, as
ChatFormat.split_turns returns them; teacher.py says how τ reads any history.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from klbudget.envs.format import ChatFormat
from klbudget.world.teacher import Teacher, Turn
from klbudget.world.tokenizer import encode, turn_piece
from klbudget.world.trie import Node, TurnPieces


def _ids(prefix: Sequence[int] | torch.Tensor) -> list[int]:
    return prefix.tolist() if isinstance(prefix, torch.Tensor) else list(prefix)


def check_split(
    piece_ids: Callable[[str], list[int]],
    content: Callable[[int, int], str],
    head_ids: Sequence[Sequence[int]],
    body_ids: Sequence[Sequence[int]],
) -> None:
    """The factorisation of TurnPieces needs each whole turn's tokens to be its opener's
    followed by its body's: checked for every opener with one body and every body with one
    opener (pre-token alignment makes the rest follow, tokenizer.py)."""
    for o in range(len(head_ids)):
        for u in [0] if o else range(len(body_ids)):
            if piece_ids(content(o, u)) != [*head_ids[o], *body_ids[u]]:
                raise ValueError(f"turn {content(o, u)!r} does not split at its opener")


class TeacherTokenModel:
    """Exact token-level τ for one tokenizer (module docstring)."""

    def __init__(
        self,
        tau: Teacher,
        tokenizer: PreTrainedTokenizerBase,
        fmt: ChatFormat | None = None,
        vocab_size: int | None = None,
    ) -> None:
        self.tau = tau
        self.tokenizer = tokenizer
        self.fmt = fmt or ChatFormat()
        # A model may pad its embedding beyond the tokenizer; outputs then match its logits.
        self.vocab_size = max(len(tokenizer), vocab_size or 0)
        # Canonical ids of every sentence's piece (the body and the hand-over), in τ's order,
        # and of " o," for every opener.
        self.turn_ids: list[list[int]] = [self.piece_ids(u) for u in tau.bodies]
        self.opener_ids = [encode(self.tokenizer, f" {o},") for o in tau.openers]
        self.pieces = TurnPieces(self.turn_ids, self.opener_ids or None)
        self.trie = self.pieces.body
        check_split(self.piece_ids, tau.content, self.opener_ids, self.turn_ids)

    def piece_ids(self, content: str) -> list[int]:
        """Canonical ids of the teacher piece with this content (content + hand-over)."""
        return encode(self.tokenizer, turn_piece(self.fmt, "teacher", content))

    # --- the exact conditional -------------------------------------------------------------
    def _node(self, prefix: Sequence[int] | torch.Tensor) -> Node | None:
        loc = self.pieces.locate(_ids(prefix))
        return None if loc is None else loc[0].node(loc[1])

    def next_token_dist(
        self, history: Sequence[Turn], teacher_prefix_ids: Sequence[int] | torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sparse τ(· | h, y_{<t}): (token ids, probabilities); both empty when undefined."""
        p_open = self.tau.opener_probs(history) if self.tau.openers else None
        return self.pieces.next_token_dist(
            _ids(teacher_prefix_ids), self.tau.turn_probs(history), p_open
        )

    def next_token_logprobs(
        self, history: Sequence[Turn], teacher_prefix_ids: Sequence[int] | torch.Tensor
    ) -> torch.Tensor:
        """log τ(v | h, y_{<t}) for every v, shape (V,), float64; -inf outside the support."""
        tokens, probs = self.next_token_dist(history, teacher_prefix_ids)
        out = torch.full((self.vocab_size,), float("-inf"), dtype=torch.float64)
        out[torch.from_numpy(tokens)] = torch.from_numpy(np.log(probs))
        return out

    def next_token_logprobs_batch(
        self,
        histories: Sequence[Sequence[Turn]],
        teacher_prefixes: Sequence[Sequence[int] | torch.Tensor],
    ) -> torch.Tensor:
        """:meth:`next_token_logprobs` for a batch of conversations, shape (B, V)."""
        out = torch.full((len(histories), self.vocab_size), float("-inf"), dtype=torch.float64)
        for b, (h, y) in enumerate(zip(histories, teacher_prefixes, strict=True)):
            tokens, probs = self.next_token_dist(h, y)
            out[b, torch.from_numpy(tokens)] = torch.from_numpy(np.log(probs))
        return out

    def next_token_entropy(
        self, history: Sequence[Turn], teacher_prefix_ids: Sequence[int] | torch.Tensor
    ) -> float:
        """H(τ(· | h, y_{<t})) in nats; nan where the conditional is undefined."""
        _, probs = self.next_token_dist(history, teacher_prefix_ids)
        return float(-(probs * np.log(probs)).sum()) if probs.size else float("nan")

    def prefix_in_support(
        self, history: Sequence[Turn], teacher_prefix_ids: Sequence[int] | torch.Tensor
    ) -> bool:
        """Whether some turn τ can write starts with these tokens (support is history-free)."""
        return self._node(teacher_prefix_ids) is not None

    def is_complete(self, teacher_prefix_ids: Sequence[int] | torch.Tensor) -> bool:
        """Whether the tokens are a whole supported turn, hand-over included."""
        loc = self.pieces.locate(_ids(teacher_prefix_ids))
        node = None if loc is None or loc[0] is not self.trie else self.trie.node(loc[1])
        return node is not None and node.complete

    # --- sampling ---------------------------------------------------------------------------
    def sample_continuation(
        self,
        history: Sequence[Turn],
        teacher_prefix_ids: Sequence[int] | torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> list[int]:
        """The rest of the turn, y_{≥t} ~ τ(· | h, y_{<t}) (a whole turn drawn at once); an
        empty prefix draws a whole turn."""
        loc = self.pieces.locate(_ids(teacher_prefix_ids))
        node = None if loc is None else loc[0].node(loc[1])
        if loc is None or node is None:
            raise ValueError("τ cannot continue a prefix outside its support")
        trie, rest = loc
        p = self.tau.turn_probs(history) if trie is self.trie else self.tau.opener_probs(history)
        p_sorted = trie.to_sorted(p)
        # Drawing a whole piece from its factor restricted to the node is exactly τ's
        # conditional; after an opener's piece the sentence's is drawn whole.
        p = p_sorted[node.lo : node.hi]
        j = int(torch.multinomial(torch.from_numpy(p), 1, generator=generator))
        out = list(trie.seqs[node.lo + j][len(rest) :])
        if trie is not self.trie:
            out += self.sample_continuation(history, list(trie.seqs[node.lo + j]), generator)
        return out

    def sample_next_token(
        self,
        history: Sequence[Turn],
        teacher_prefix_ids: Sequence[int] | torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> int:
        """v ~ τ(· | h, y_{<t})."""
        tokens, probs = self.next_token_dist(history, teacher_prefix_ids)
        if not probs.size:
            raise ValueError("τ has no next teacher token after this prefix")
        return int(tokens[int(torch.multinomial(torch.from_numpy(probs), 1, generator=generator))])

    # --- whole turns ------------------------------------------------------------------------
    def turn_logprob(self, history: Sequence[Turn], content: str) -> float:
        """log τ(y(u) | h) = log P(u | h) for the canonical tokens; -inf outside the support."""
        return self.tau.turn_logprob(history, content)

    def token_logprobs(self, history: Sequence[Turn], ids: Sequence[int]) -> list[float]:
        """log τ(y_t | h, y_{<t}) for each token of a (possibly partial) teacher turn."""
        out = []
        for t, v in enumerate(ids):
            tokens, probs = self.next_token_dist(history, ids[:t])
            hit = np.flatnonzero(tokens == v)
            out.append(float(np.log(probs[hit[0]])) if hit.size else float("-inf"))
        return out

    def classify(self, history: Sequence[Turn], content: str) -> str | None:
        """τ's behaviour class of a teacher turn's content; None outside the support."""
        return self.tau.classify(content)

    def in_support(self, history: Sequence[Turn], content: str) -> bool:
        """Whether τ can write a turn with this content (history-free, see teacher.py)."""
        return self.tau.in_support(content)
