"""Small randomly initialised or quickly trained base models for tests and benchmarks.

`make_tokenizer` trains a byte-level BPE (GPT-2 pre-tokenisation) on given texts;
`make_tiny_model` saves a Hugging Face model folder (GPT-2 architecture, safetensors)
that `HFBase` loads like any other.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

EOS = "<|endoftext|>"


def make_tokenizer(texts: Iterable[str], vocab_size: int):
    """A `PreTrainedTokenizerFast` with a byte-level BPE trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def make_tiny_model(
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    vocab_size: int = 512,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 1024,
    seed: int = 0,
    tokenizer_from: str | Path | None = None,
) -> Path:
    """Save a random GPT-2-architecture model and its tokenizer into `out_dir`; with
    `tokenizer_from` (a local model folder) its tokenizer and vocabulary instead of a BPE
    trained on `texts`."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    out = Path(out_dir)
    if tokenizer_from is not None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_from, local_files_only=True)
        if tokenizer.eos_token_id is None:
            raise ValueError(f"the tokenizer in {tokenizer_from} has no end-of-text token")
    else:
        tokenizer = make_tokenizer(texts, vocab_size)
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def fit_tiny_model(
    model_dir: str | Path,
    texts: list[str],
    *,
    steps: int = 60,
    lr: float = 3e-3,
    batch: int = 8,
    seed: int = 0,
) -> Path:
    """A few Adam steps of next-token training on `texts`, saved in place.

    Gives a tiny base model with a peaked, text-like next-token distribution (a random
    one is nearly uniform), so that tests can speak of tokens it "rarely emits".
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_dir)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    ids = [torch.tensor(tok(t)["input_ids"]) for t in texts]
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        pick = torch.randint(0, len(ids), (batch,), generator=g).tolist()
        n = min(len(ids[i]) for i in pick)
        x = torch.stack([ids[i][:n] for i in pick])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(path)
    return path
