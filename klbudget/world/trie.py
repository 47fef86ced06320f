"""Prefix tree over the token sequences of a finite set of candidate turns.

For a distribution p over candidates u with token sequences y(u), the next-token
distribution after a prefix y_{<t} is

    P(v | y_{<t}) = Σ_{u: y(u) starts with y_{<t} v} p(u) / Σ_{u: y(u) starts with y_{<t}} p(u).

Sorting the sequences lexicographically makes the candidates under every trie node a
contiguous range, and the children of a node split that range into contiguous sub-ranges, so
one ``np.add.reduceat`` over the node's slice of p gives every child's mass at once (exact
sums, no differences of cumulative sums). Pure numpy; no tokenizer, no model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Node:
    """Candidates [lo, hi) (in sorted order) share this prefix; children split the range."""

    lo: int
    hi: int
    tokens: np.ndarray  # (k,) int64 next-token ids, ascending
    starts: np.ndarray  # (k,) int64 start of each child's range, relative to lo

    @property
    def complete(self) -> bool:
        """The prefix is a whole candidate sequence: nothing follows it."""
        return self.tokens.size == 0


class CandidateTrie:
    """Next-token distributions of a mixture over candidate token sequences (module doc)."""

    def __init__(self, seqs: Sequence[Sequence[int]]) -> None:
        if not seqs:
            raise ValueError("no candidates")
        tuples = [tuple(int(t) for t in s) for s in seqs]
        self.order = np.array(sorted(range(len(tuples)), key=tuples.__getitem__), dtype=np.int64)
        self.seqs: list[tuple[int, ...]] = [tuples[i] for i in self.order]  # sorted
        self.nodes: dict[tuple[int, ...], Node] = {}
        stack = [(0, len(self.seqs), 0)]
        while stack:
            lo, hi, depth = stack.pop()
            prefix = self.seqs[lo][:depth]
            if len(self.seqs[lo]) == depth:
                # A candidate ending here must be alone: otherwise it would be a prefix of
                # another candidate (or a duplicate) and the children would not cover the node.
                if hi - lo != 1:
                    raise ValueError(f"candidate {prefix} is a prefix of another candidate")
                self.nodes[prefix] = Node(lo, hi, np.empty(0, np.int64), np.empty(0, np.int64))
                continue
            tokens: list[int] = []
            starts: list[int] = []
            for i in range(lo, hi):
                tok = self.seqs[i][depth]
                if not tokens or tokens[-1] != tok:
                    tokens.append(tok)
                    starts.append(i)
            bounds = [*starts, hi]
            for j in range(len(tokens)):
                stack.append((bounds[j], bounds[j + 1], depth + 1))
            self.nodes[prefix] = Node(
                lo, hi, np.array(tokens, np.int64), np.array(starts, np.int64) - lo
            )

    def __len__(self) -> int:
        return len(self.seqs)

    def node(self, prefix: Sequence[int]) -> Node | None:
        """The node of ``prefix``, or None when no candidate starts with it."""
        return self.nodes.get(tuple(int(t) for t in prefix))

    def to_sorted(self, p: np.ndarray) -> np.ndarray:
        """Reorder per-candidate values from the caller's order to the trie's sorted order."""
        return p[self.order]

    @staticmethod
    def child_mass(p_sorted: np.ndarray, node: Node) -> np.ndarray:
        """Unnormalised mass of each child of ``node``, shape (k,)."""
        if node.complete:
            return np.empty(0)
        return np.add.reduceat(p_sorted[node.lo : node.hi], node.starts)

    def next_token_dist(
        self, p_sorted: np.ndarray, prefix: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, P(v | y_{<t})) after ``prefix``; empty arrays where it is undefined
        (no candidate starts with the prefix, or the prefix is a whole candidate)."""
        node = self.node(prefix)
        if node is None or node.complete:
            return np.empty(0, np.int64), np.empty(0)
        mass = self.child_mass(p_sorted, node)
        return node.tokens, mass / mass.sum()


class TurnPieces:
    """Turns made of an optional head piece (an opener) and a body piece, as two tries.

    With heads, a turn's tokens are ids(head) + ids(body) and its probability factorises,
    P(head, body) = p_head(head) · p_body(body): a prefix walks the head trie until it holds a
    whole head, then the body trie. The last ``final_heads`` heads are whole turns on their
    own (the empty reply): nothing follows them. Without heads it is one trie over bodies.
    """

    def __init__(
        self,
        bodies: Sequence[Sequence[int]],
        heads: Sequence[Sequence[int]] | None = None,
        final_heads: int = 0,
    ) -> None:
        self.body = CandidateTrie(bodies)
        self.head = CandidateTrie(heads) if heads else None
        self.first_final = len(heads) - final_heads if heads else 0

    def locate(self, prefix: Sequence[int]) -> tuple[CandidateTrie, list[int]] | None:
        """(the trie the next token comes from, the prefix's part inside it), or None when no
        turn starts with ``prefix``."""
        ids = [int(t) for t in prefix]
        if self.head is None:
            return self.body, ids
        for k in range(len(ids) + 1):
            node = self.head.node(ids[:k])
            if node is None:
                return None
            if node.complete:
                if int(self.head.order[node.lo]) >= self.first_final:  # a whole turn
                    return (self.head, ids) if k == len(ids) else None
                return self.body, ids[k:]
        return self.head, ids

    def next_token_dist(
        self, prefix: Sequence[int], p_body: np.ndarray, p_head: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, P(v | prefix)) under the factors (each in its caller's order); empty
        arrays where undefined (outside the turns, or after a whole turn)."""
        loc = self.locate(prefix)
        if loc is None:
            return np.empty(0, np.int64), np.empty(0)
        trie, rest = loc
        p = p_body if trie is self.body else p_head
        assert p is not None
        tokens, q = trie.next_token_dist(trie.to_sorted(p), rest)
        keep = q > 0  # a head of probability 0 here (silence before a first reply) is no token
        return tokens[keep], q[keep]
