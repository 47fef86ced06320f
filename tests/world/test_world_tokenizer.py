"""The canonical-tokenization property: a transcript tokenizes as the concatenation of its
pieces (prompt, then each turn's content plus hand-over), so τ's per-piece token model is the
in-context one."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from klbudget.envs.format import ChatFormat
from klbudget.world.corpus import load_split, record_turns
from klbudget.world.tokenizer import EOS, encode, transcript_pieces

FMT = ChatFormat()


def _concat(tok: PreTrainedTokenizerFast, turns: list[tuple[str, str]]) -> list[int]:
    return [t for piece in transcript_pieces(FMT, turns) for t in encode(tok, piece)]


def test_corpus_transcripts_tokenize_piecewise(small_dir: Path, small_tokenizer) -> None:
    for split in ("train", "heldout"):
        for rec in load_split(small_dir, split):
            turns = record_turns(rec)
            assert "".join(transcript_pieces(FMT, turns)) == rec["text"]
            assert encode(small_tokenizer, rec["text"]) == _concat(small_tokenizer, turns)


_content = st.text(
    alphabet=st.sampled_from("abcXYZ019 .,!?'\":;-()é"), min_size=0, max_size=30
).map(str.strip)


@settings(max_examples=150, deadline=None)
@given(st.lists(_content, min_size=1, max_size=6))
def test_any_turns_tokenize_piecewise(small_tokenizer, contents: list[str]) -> None:
    """Also for content τ never writes: empty turns, punctuation first, digits, accents."""
    turns = [("teacher" if i % 2 == 0 else "student", c) for i, c in enumerate(contents)]
    assert encode(small_tokenizer, FMT.render(turns)) == _concat(small_tokenizer, turns)


def test_tokenizer_has_eos_and_adds_nothing(small_tokenizer) -> None:
    assert small_tokenizer.eos_token == EOS and small_tokenizer.eos_token_id is not None
    text = FMT.render([("teacher", "Hello there.")])
    assert small_tokenizer(text)["input_ids"] == encode(small_tokenizer, text)
    assert small_tokenizer.decode(encode(small_tokenizer, text)) == text
