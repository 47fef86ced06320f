"""A tiny imitator run (seconds): the loss falls, the folder loads offline, the cache hits."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from klbudget.world.corpus import load_split, load_world, record_turns
from klbudget.world.imitator import ImitatorConfig, heldout_report, read_report, train_imitator
from klbudget.world.token_model import TeacherTokenModel
from klbudget.world.tokenizer import encode, transcript_pieces


def test_loss_falls_and_report_is_sane(tiny_folder: Path) -> None:
    meta = read_report(tiny_folder)
    curve = [loss for _, loss in meta["train_curve"]]
    assert curve[-1] < 0.6 * curve[0]
    h = meta["heldout"]
    assert h["teacher_tokens"] > 0 and h["student_tokens"] > 0
    assert h["kl_tau_imitator_teacher"] >= 0.0 and h["kl_student_imitator_student"] >= 0.0
    assert 0.0 <= h["tau_teacher_entropy"] < h["imitator_teacher_logloss"]
    assert set(meta["student_reward_probe"]) == {"explain", "encourage", "ask", "answer", "empty"}
    assert 0 < meta["n_params"] < 200_000


def test_folder_loads_with_auto_classes_and_cache_hits(
    small_dir: Path, tiny_folder: Path, tiny_imitator_cfg: ImitatorConfig
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_folder, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(tiny_folder, local_files_only=True)
    assert (tiny_folder / "model.safetensors").exists()
    assert tok.eos_token_id is not None and model.config.eos_token_id == tok.eos_token_id
    assert model.config.vocab_size == len(tok)
    ids = torch.tensor([encode(tok, load_split(small_dir, "heldout")[0]["text"])[:50]])
    assert torch.isfinite(model(input_ids=ids).logits).all()
    t = time.perf_counter()
    assert (
        train_imitator(small_dir, tiny_imitator_cfg, tiny_folder.parent, progress=False)
        == tiny_folder
    )
    assert time.perf_counter() - t < 2.0


def test_report_teacher_numbers_match_token_model(small_dir: Path, tiny_folder: Path) -> None:
    """τ's entropy in the report is the mean of TeacherTokenModel.next_token_entropy."""
    world = load_world(small_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_folder, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(tiny_folder, local_files_only=True)
    rec = load_split(small_dir, "heldout")[:2]
    report = heldout_report(model, tok, world, rec, block_size=10_000)
    tm = TeacherTokenModel(world.teacher, tok, world.fmt)
    ents, tau_lp = [], []
    for r in rec:
        turns = record_turns(r)
        for i, piece in enumerate(transcript_pieces(world.fmt, turns)[1:]):
            if turns[i][0] == "teacher":
                ids = encode(tok, piece)
                ents += [tm.next_token_entropy(turns[:i], ids[:j]) for j in range(len(ids))]
                tau_lp += tm.token_logprobs(turns[:i], ids)
    assert report["teacher_tokens"] == len(ents)
    assert math.isclose(report["tau_teacher_entropy"], float(np.mean(ents)), rel_tol=1e-9)
    assert math.isclose(report["tau_teacher_logloss"], -float(np.mean(tau_lp)), rel_tol=1e-9)
