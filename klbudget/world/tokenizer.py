"""Byte-level BPE for the world, and the canonical tokenization of turns (docs/design.md,
"Mechanics", "The world").

A transcript is the prompt followed by one *piece* per turn: a teacher piece is
" " + content + "\\n\\nStudent:" and a student piece " " + content + "\\n\\nTeacher:".
τ's token-level distribution generates the canonical tokenization of a teacher piece,
tokenized on its own. With the GPT-2 style byte-level pre-tokenizer (no prefix space) every
piece boundary is also a pre-token boundary (a piece ends with ':' and the next starts with a
space or a newline), and BPE never merges across pre-tokens, so the tokenization of a whole
transcript is the concatenation of the tokenizations of its pieces. tests/world checks this
on the trained tokenizer.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from klbudget.envs.format import ChatFormat

EOS = "<|endoftext|>"  # end of text; also used as padding, which the loss ignores


def byte_level() -> pre_tokenizers.ByteLevel:
    """GPT-2's byte-level pre-tokenizer without a prefix space (pieces keep their own)."""
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


@functools.lru_cache(maxsize=65536)
def count_pretokens(text: str) -> int:
    """Pre-tokens of ``text``: a lower bound on its BPE tokens, and close for a fitted BPE."""
    return len(_PRE_TOKENIZER.pre_tokenize_str(text))


_PRE_TOKENIZER = byte_level()


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE fitted to ``texts``; all 256 bytes are in the vocabulary, plus EOS."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = byte_level()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS, unk_token=None
    )


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Canonical token ids of ``text`` on its own, with no special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def turn_piece(fmt: ChatFormat, speaker: str, content: str) -> str:
    """The text one turn adds to a transcript, content plus hand-over (via ChatFormat.render)."""
    return fmt.render([(speaker, content)])[len(fmt.prompt) :]


def transcript_pieces(fmt: ChatFormat, turns: Sequence[tuple[str, str]]) -> list[str]:
    """[prompt, piece_1, ..., piece_n] with ``"".join(...) == fmt.render(turns)``."""
    return [fmt.prompt, *(turn_piece(fmt, sp, c) for sp, c in turns)]
