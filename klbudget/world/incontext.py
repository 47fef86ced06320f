"""A pretrained LM made an imitator of τ in context: it reads ``shots`` of τ's demonstrations
before every transcript (docs/design.md, "Pretrained bases").

Nothing is trained: the LM's weights are as shipped, so whatever it believes about a speaker
who goes silent comes from pretraining and from these demonstrations, in which (in a world
with ``quiet_students = 0``) no speaker is ever silent. The imitator is a folder holding
``context.json`` (the LM's folder and the context text), which every base loader reads
(:func:`klbudget.base.hf.resolve_model`), and ``imitator.json`` with its held-out report
against τ, as a trained imitator's folder has, so that it can join an ensemble.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from klbudget.base.hf import CONTEXT_FILE, load_local, resolve_model
from klbudget.world.corpus import load_split, load_world
from klbudget.world.imitator import REPORT_FILE, heldout_report


def context_text(world_dir: Path, shots: int, seed: int) -> str:
    """``shots`` training transcripts of the world drawn without replacement (seeded), each
    cut after its last complete turn, separated by the turn separator: text that ends where
    a new conversation (the environment's prompt) begins."""
    world = load_world(world_dir)
    train = load_split(world_dir, "train")
    if not 0 <= shots <= len(train):
        raise ValueError(f"shots must be in [0, {len(train)}], got {shots}")
    rng = np.random.default_rng([seed, 17])
    picks = rng.choice(len(train), size=shots, replace=False)
    sep = world.fmt.separator
    texts = []
    for i in picks:
        text = train[int(i)]["text"]
        cut = text.rfind(sep)  # the tag of the speaker who would talk next is dropped
        texts.append(text[:cut] if cut >= 0 else text)
    return "".join(t + sep for t in texts)


class _ContextLM(torch.nn.Module):
    """``model`` reading ``context`` ids before each (right-padded) row: logits of the rows'
    own positions, as :func:`klbudget.world.imitator.heldout_report` needs them."""

    def __init__(self, model, context: list[int]) -> None:
        super().__init__()
        self.model = model
        self.context = torch.tensor([context], dtype=torch.long)

    def forward(self, input_ids, attention_mask):
        n, p = input_ids.shape[0], self.context.shape[1]
        ids = torch.cat([self.context.expand(n, -1), input_ids], 1)
        mask = torch.cat([torch.ones(n, p, dtype=attention_mask.dtype), attention_mask], 1)
        out = self.model(input_ids=ids, attention_mask=mask)
        return SimpleNamespace(logits=out.logits[:, p:])


@torch.no_grad()
def make_incontext_imitator(
    model_dir: Path,
    world_dir: Path,
    out: Path,
    *,
    shots: int,
    seed: int = 0,
    heldout: int = 24,
    block_size: int = 256,
) -> dict:
    """Write the imitator folder ``out`` (module docstring) and return its report: the
    held-out log-loss of τ's teacher tokens, KL(τ‖imitator) per token, over the first
    ``block_size`` tokens of ``heldout`` held-out demonstrations."""
    if heldout < 1 or block_size < 2:
        raise ValueError("heldout must be >= 1 and block_size >= 2")
    model_dir = resolve_model(model_dir)[0].resolve()
    t0 = time.perf_counter()
    context = context_text(world_dir, shots, seed)
    model, tokenizer = load_local(model_dir)
    ids = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
    positions = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", 2048
    )
    if len(ids) + block_size > positions:
        raise ValueError(
            f"{shots} demonstrations take {len(ids)} tokens: with {block_size} of transcript "
            f"they exceed the model's {positions} positions"
        )
    lm = _ContextLM(model, ids) if ids else model
    records = load_split(world_dir, "heldout")[:heldout]
    world = load_world(world_dir)
    with torch.inference_mode():
        report = heldout_report(lm, tokenizer, world, records, block_size)
    meta = {
        "kind": "in-context",
        "model": str(model_dir),
        "world": str(Path(world_dir).resolve()),
        "world_hash": world.cfg.hash,
        "shots": shots,
        "seed": seed,
        "context_tokens": len(ids),
        "seconds": time.perf_counter() - t0,
        "heldout": report,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / CONTEXT_FILE).write_text(
        json.dumps({"model": str(model_dir), "context": context}, indent=1) + "\n"
    )
    (out / REPORT_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return meta


def incontext_imitators(
    model_dir: Path, world_dir: Path, *, shots: int, k: int, cache_root: Path, heldout: int = 24
) -> list[Path]:
    """``k`` in-context imitators of the world's τ on one LM, reading the demonstrations of
    seeds 0 … k−1 (the plausible set of ν_α without τ), made or fetched from
    ``cache_root/incontext-<key>`` (the key: the LM's folder, the world, shots, seed)."""
    import hashlib

    if k < 1:
        raise ValueError(f"an ensemble needs at least one member, got {k}")
    lm = resolve_model(model_dir)[0].resolve()
    world_hash = load_world(world_dir).cfg.hash
    folders = []
    for seed in range(k):
        blob = json.dumps([str(lm), world_hash, shots, seed, heldout]).encode()
        folder = Path(cache_root) / f"incontext-{hashlib.sha256(blob).hexdigest()[:12]}"
        if not (folder / REPORT_FILE).is_file():
            tmp = folder.with_name(folder.name + ".tmp")
            if tmp.exists():
                import shutil

                shutil.rmtree(tmp)
            make_incontext_imitator(lm, world_dir, tmp, shots=shots, seed=seed, heldout=heldout)
            tmp.rename(folder)  # complete folders only
        folders.append(folder)
    return folders
