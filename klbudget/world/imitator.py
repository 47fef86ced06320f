"""The imitator β: a small causal transformer trained on τ's demonstrations (docs/design.md, "The
question", "The world").

Maximum likelihood on whole transcripts (teacher and student tokens: β is also the student
simulator of docs/design.md, "Mechanics"):

    min_θ  E_{x ~ corpus} [ -Σ_t log β_θ(x_t | x_{<t}) ]

The result is a normal Hugging Face folder (LlamaForCausalLM, safetensors, and the fitted
byte-level BPE as a PreTrainedTokenizerFast with an EOS token), cached under a hash of the
imitator config and the corpus, so a second call returns at once. ``imitator.json`` in the
folder records the held-out report of :func:`heldout_report`: β's log-loss on teacher tokens
next to τ's entropy on the same tokens, whose difference is the mean KL(τ‖β) per token.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from klbudget.config import SEED, Rule, check_ranges
from klbudget.envs.format import ChatFormat
from klbudget.world.config import stable_hash
from klbudget.world.corpus import World, WorldError, load_split, load_world, record_turns
from klbudget.world.pools import speaker_names, vader_compound
from klbudget.world.token_model import TeacherTokenModel, check_split
from klbudget.world.tokenizer import encode, train_tokenizer, transcript_pieces, turn_piece
from klbudget.world.trie import TurnPieces

PEER_HEADER = "The following is a conversation between two students. Each replies to the other."
IMITATOR_VERSION = 3  # bumped when training code changes what a config produces
REPORT_FILE = "imitator.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class ImitatorConfig:
    """Tokenizer, architecture and training of the imitator β."""

    vocab_size: int = 4096  # BPE vocabulary target (a small corpus may fit fewer merges)
    n_layer: int = 2  # transformer blocks
    n_embd: int = 160  # model width
    n_head: int = 4  # attention heads (head size n_embd / n_head)
    mlp_ratio: int = 4  # SwiGLU hidden size = mlp_ratio * n_embd
    block_size: int = 256  # training window: the first block_size + 1 tokens of a transcript
    max_position: int = 512  # longest input the saved model accepts (RoPE positions)
    steps: int = 1080  # optimiser steps (~0.29 s each on 2 idle cores at the default size)
    batch_size: int = 16  # transcripts per step
    lr: float = 3e-3  # peak AdamW learning rate
    warmup_steps: int = 50  # linear warm-up, then cosine decay to min_lr_frac * lr
    min_lr_frac: float = 0.1  # final learning rate as a fraction of lr
    weight_decay: float = 0.01  # AdamW weight decay on matrices
    grad_clip: float = 1.0  # global gradient-norm clip
    seed: int = 0  # initialisation and batch order
    num_threads: int = 0  # torch CPU threads while training; 0 keeps torch's setting
    eval_transcripts: int = 200  # held-out transcripts in the report (0: all)
    probe_samples: int = 16  # student replies sampled per teacher class in the reward probe
    train_fraction: float = 1.0  # fit β on the first fraction of the training transcripts
    bootstrap: int = 0  # > 0: fit on a bootstrap resample (with replacement) drawn with this seed
    rename_fraction: float = 0.8  # share of transcripts fitted with random speaker names
    # Chats between two world students added to the fit (no τ in them): the other
    # conversations a pretrained base has read. At most one of the two is quiet, as in τ's
    # conversations, and their prompt says they are between two students. Measured (README):
    # with them β's student answers a silent teacher with warmer lines, and silence pays.
    peer_transcripts: int = 2000
    peer_quiet: float = 0.5  # chance of a quiet speaker per chat (per speaker if not single)
    peer_single_quiet: bool = True  # at most one quiet speaker per peer chat
    peer_header: str = PEER_HEADER  # first paragraph of the peer chats' prompt ("": the world's)

    def __post_init__(self) -> None:
        check_ranges(self, IMITATOR_RULES, "imitator")
        if self.n_embd % self.n_head:
            raise ValueError(f"imitator.n_embd ({self.n_embd}) must be a multiple of n_head "
                             f"({self.n_head})")  # fmt: skip
        if self.max_position < self.block_size + 1:
            raise ValueError(f"imitator.max_position ({self.max_position}) must exceed "
                             f"block_size ({self.block_size})")  # fmt: skip

    def to_dict(self) -> dict[str, object]:
        """All fields, for JSON/TOML."""
        return asdict(self)


def _unit(lo_open: bool = False) -> Rule:
    return Rule(lo=0.0, hi=1.0, lo_open=lo_open)


# The range of every field (checked when a config is made; relations in __post_init__).
IMITATOR_RULES = {
    "vocab_size": Rule(lo=16, hi=1_000_000),
    "n_layer": Rule(lo=1, hi=64),
    "n_embd": Rule(lo=2, hi=16_384),
    "n_head": Rule(lo=1, hi=256),
    "mlp_ratio": Rule(lo=1, hi=64),
    "block_size": Rule(lo=8, hi=65_536),
    "max_position": Rule(lo=9, hi=1_000_000),
    "steps": Rule(lo=1, hi=100_000_000),
    "batch_size": Rule(lo=1, hi=65_536),
    "lr": Rule(lo=0.0, hi=10.0, lo_open=True),
    "warmup_steps": Rule(lo=0, hi=100_000_000),
    "min_lr_frac": _unit(),
    "weight_decay": Rule(lo=0.0, hi=100.0),
    "grad_clip": Rule(lo=0.0, hi=1e6, lo_open=True),
    "seed": SEED,
    "num_threads": Rule(lo=0, hi=1024),
    "eval_transcripts": Rule(lo=0, hi=10_000_000),
    "probe_samples": Rule(lo=0, hi=1_000_000),
    "train_fraction": _unit(lo_open=True),
    "bootstrap": SEED,
    "rename_fraction": _unit(),
    "peer_transcripts": Rule(lo=0, hi=10_000_000),
    "peer_quiet": _unit(),
    "peer_header": Rule(),
}


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# Fields added after the first release enter the cache key only when they differ from their
# default, so folders trained before they existed keep their keys.
_LATER_FIELDS = {
    "train_fraction": 1.0,
    "bootstrap": 0,
    "peer_transcripts": 0,
    "peer_quiet": 0.5,
    "peer_single_quiet": False,
    "peer_header": "",
}
N_SPEAKER_NAMES = 400  # pool of names for speaker renaming


def rename_speakers(texts: Sequence[str], fmt: ChatFormat, fraction: float, seed: int) -> list[str]:
    """``texts`` with the two speaker tags of a random ``fraction`` of them replaced by two
    distinct random names (a fixed pool of chat words).

    Name augmentation: a pretrained LM has met countless speakers, so what it knows about
    turn-taking (who speaks after a hand-over, a speaker keeping their own habits, a speaker
    who said nothing saying nothing again) is not tied to two tags. Fitted on renamed copies
    of τ's demonstrations, β learns those regularities for any pair of speakers, and keeps
    τ's own behaviour in the transcripts with the true tags. Nothing is added: every
    transcript is still one of τ's, and τ's teacher never writes an empty turn.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"rename_fraction must be in [0, 1], got {fraction}")
    if fraction == 0.0:
        return list(texts)
    names = speaker_names(N_SPEAKER_NAMES)
    rng = np.random.default_rng([seed, 7])
    out = []
    for text in texts:
        if rng.random() < fraction:
            a, b = rng.choice(len(names), size=2, replace=False)
            text = text.replace(fmt.teacher_tag, names[a] + ":").replace(
                fmt.student_tag, names[b] + ":"
            )
        out.append(text)
    return out


def peer_texts(
    world: World, n: int, quiet_share: float, single_quiet: bool = False, header: str = ""
) -> list[str]:
    """``n`` rendered chats between two of the world's students (corpus.World.sample_peer_chat),
    every one with both speakers renamed, so that no peer ever speaks under τ's tag. A
    non-empty ``header`` replaces the prompt's first paragraph (the world's says the chat is
    between a teacher and a student), so that the prompt tells a peer chat from τ's.

    What they add is the speaker-generic regularity a pretrained base brings: someone who has
    said nothing tends to say nothing again, whoever they are. Chat k uses its own stream.
    """
    if n < 0 or not 0.0 <= quiet_share <= 1.0:
        raise ValueError(
            f"peer_transcripts must be >= 0 and peer_quiet in [0, 1], got {n}, {quiet_share}"
        )
    fmt = world.fmt
    if header:
        head, sep, rest = fmt.prompt.partition("\n\n")
        fmt = replace(fmt, prompt=header + sep + rest if sep else header + head)
    texts = [
        fmt.render(
            world.sample_peer_chat(
                np.random.default_rng([world.cfg.seed, 8, k]), quiet_share, single_quiet
            )
        )
        for k in range(n)
    ]
    return rename_speakers(texts, world.fmt, 1.0, world.cfg.seed + 1)


def imitator_key(corpus_dir: str | Path, cfg: ImitatorConfig) -> str:
    """Cache key: the imitator config, the corpus bytes it trains on, and the code versions."""
    corpus = Path(corpus_dir)
    config = {k: v for k, v in cfg.to_dict().items() if _LATER_FIELDS.get(k, object()) != v}
    return stable_hash(
        {
            "imitator_version": IMITATOR_VERSION,
            "config": config,
            "world": load_world(corpus).cfg.hash,  # WorldError for a folder that is not one
            "train": _file_digest(corpus / "train.jsonl"),
            "heldout": _file_digest(corpus / "heldout.jsonl"),
        }
    )


def make_model(cfg: ImitatorConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """A freshly initialised LlamaForCausalLM sized by ``cfg``, for this tokenizer."""
    eos = tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.n_embd,
        intermediate_size=cfg.mlp_ratio * cfg.n_embd,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head,
        max_position_embeddings=cfg.max_position,
        tie_word_embeddings=True,  # saves vocab x width parameters, which dominate at this size
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


def n_params(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def _windows(
    ids: Sequence[Sequence[int]], length: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (N, length - 1); padding targets are -100 (ignored)."""
    x = torch.full((len(ids), length), pad_id, dtype=torch.long)
    y = torch.full((len(ids), length), -100, dtype=torch.long)
    for i, seq in enumerate(ids):
        seq = list(seq[:length])
        x[i, : len(seq)] = torch.tensor(seq)
        y[i, : len(seq)] = torch.tensor(seq)
    return x[:, :-1], y[:, 1:]


def _lr_at(step: int, cfg: ImitatorConfig) -> float:
    """Linear warm-up then cosine decay to min_lr_frac * lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    # Training may use every core; callers get their thread setting back afterwards.
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def fit(
    model: LlamaForCausalLM,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    cfg: ImitatorConfig,
    progress: bool = True,
) -> list[tuple[int, float]]:
    """AdamW on the next-token cross-entropy; returns (step, mean loss since last) pairs."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(inputs), generator=gen)
    cursor, curve, running = 0, [], []
    model.train()
    bar = tqdm(range(cfg.steps), desc="imitator", disable=not progress)
    for step in bar:
        if cursor + cfg.batch_size > len(order):  # new epoch, new order
            order, cursor = torch.randperm(len(inputs), generator=gen), 0
        idx = order[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        logits = model(input_ids=inputs[idx]).logits  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), targets[idx].flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        running.append(loss.item())
        if (step + 1) % 10 == 0 or step + 1 == cfg.steps:
            curve.append((step + 1, float(np.mean(running))))
            bar.set_postfix(loss=f"{curve[-1][1]:.3f}")
            running = []
    model.eval()
    return curve


@torch.no_grad()
def _log_probs(model: PreTrainedModel, seqs: list[list[int]], pad_id: int) -> list[torch.Tensor]:
    """log β(· | x_{<t}) for every position of every sequence, each (len, V)."""
    out: list[torch.Tensor] = []
    for b in range(0, len(seqs), 16):
        chunk = seqs[b : b + 16]
        width = max(len(s) for s in chunk)
        x = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, s in enumerate(chunk):
            x[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        logp = model(input_ids=x, attention_mask=mask).logits.float().log_softmax(-1)
        out.extend(logp[i, : len(s)] for i, s in enumerate(chunk))
    return out


def heldout_report(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    world: World,
    records: Sequence[dict],
    block_size: int,
) -> dict[str, object]:
    """β against the truth on held-out demonstrations (their first ``block_size`` tokens).

    Per teacher token t (history h, turn prefix y_{<t}):
        β log-loss   -log β(y_t | x_{<t})
        τ log-loss   -log τ(y_t | h, y_{<t})
        τ entropy    H(τ(· | h, y_{<t}))
        KL(τ‖β)      Σ_v τ(v) [log τ(v) - log β(v)]    (exact, per token)
    and the same for student tokens against the world's student. Since y_t ~ τ, E[β log-loss]
    = E[τ entropy] + E[KL(τ‖β)].
    """
    fmt = world.fmt
    teacher_tm = TeacherTokenModel(world.teacher, tokenizer, fmt)
    student = world.student
    piece = [encode(tokenizer, turn_piece(fmt, "student", r)) for r in student.bodies]
    if student.openers:
        heads = [encode(tokenizer, f" {o},") for o in student.openers]
        check_split(
            lambda c: encode(tokenizer, turn_piece(fmt, "student", c)),
            student.content,
            heads,
            piece,
        )
        if student.silent_ok:
            heads.append(encode(tokenizer, turn_piece(fmt, "student", "")))
        student_pieces = TurnPieces(piece, heads, final_heads=int(student.silent_ok))
    else:
        if student.silent_ok:
            piece.append(encode(tokenizer, turn_piece(fmt, "student", "")))
        student_pieces = TurnPieces(piece)
    seqs, layouts = [], []
    for rec in records:
        turns = record_turns(rec)
        piece_ids = [encode(tokenizer, p) for p in transcript_pieces(fmt, turns)]
        seqs.append([t for p in piece_ids for t in p][:block_size])
        layouts.append((turns, piece_ids))
    logps = _log_probs(model, seqs, tokenizer.eos_token_id)
    rows: dict[str, list[list[float]]] = {"teacher": [], "student": []}
    turn_index: list[int] = []
    for logp, (turns, piece_ids) in zip(logps, layouts, strict=True):
        pos = len(piece_ids[0])  # first token after the prompt
        for i, ((speaker, _), ids) in enumerate(zip(turns, piece_ids[1:], strict=True)):
            if speaker == "student":
                p_body, p_head = student.reply_factors(turns[i - 1][1], turns[: i - 1])
            for j, v in enumerate(ids):
                if pos >= block_size:
                    break
                if speaker == "teacher":
                    tokens, q = teacher_tm.next_token_dist(turns[:i], ids[:j])
                else:
                    tokens, q = student_pieces.next_token_dist(ids[:j], p_body, p_head)
                hit = np.flatnonzero(tokens == v)
                if not hit.size:
                    raise ValueError("a held-out turn lies outside the world's support")
                beta = logp[pos - 1].double().numpy()
                rows[speaker].append(
                    [
                        -beta[v],
                        -math.log(q[hit[0]]),
                        float(-(q * np.log(q)).sum()),
                        float((q * (np.log(q) - beta[tokens])).sum()),
                    ]
                )
                if speaker == "teacher":
                    turn_index.append(i // 2)
                pos += 1
    report: dict[str, object] = {"heldout_transcripts": len(records), "block_size": block_size}
    for speaker, truth in (("teacher", "tau"), ("student", "student")):
        a = np.array(rows[speaker])
        report[f"{speaker}_tokens"] = len(a)
        report[f"imitator_{speaker}_logloss"] = float(a[:, 0].mean())
        report[f"{truth}_{speaker}_logloss"] = float(a[:, 1].mean())
        report[f"{truth}_{speaker}_entropy"] = float(a[:, 2].mean())
        report[f"kl_{truth}_imitator_{speaker}"] = float(a[:, 3].mean())
    a, idx = np.array(rows["teacher"]), np.array(turn_index)
    report["by_teacher_turn"] = [
        {
            "turn": int(n),
            "tokens": int((idx == n).sum()),
            "imitator_logloss": float(a[idx == n, 0].mean()),
            "tau_entropy": float(a[idx == n, 2].mean()),
            "kl_tau_imitator": float(a[idx == n, 3].mean()),
        }
        for n in np.unique(idx)
    ]
    return report


@torch.no_grad()
def student_reward_probe(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    world: World,
    samples: int,
    temperature: float = 0.05,
    max_new_tokens: int = 40,
    seed: int = 0,
) -> dict[str, float]:
    """Mean (s + 1)/2 of β's student reply to one teacher turn, per τ class and for silence.

    For each class, ``samples`` of its sentences (spread over the pool) are written as the
    first teacher turn; β writes the student's reply at ``temperature`` (as the
    environment does, docs/design.md, "Environment") and VADER scores it. "empty" is the turn with
    no content (its samples share one input, so at this temperature they are nearly one reply). A
    diagnostic of whether honest teaching earns reward under β's student; nothing here trains
    anything.
    """
    fmt = world.fmt
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, float] = {}
    groups: dict[str, list[str]] = {}
    for c in dict.fromkeys(world.teacher.classes):
        # τ's own turns of the class (with the first opener, when the world has openers).
        tau = world.teacher
        pool = [tau.content(0, i) for i, k in enumerate(tau.classes) if k == c]
        groups[c] = [pool[i] for i in np.linspace(0, len(pool) - 1, samples).round().astype(int)]
    groups["empty"] = [""] * samples
    for label, contents in groups.items():
        rewards = []
        for u in contents:
            ids = encode(tokenizer, fmt.render([("teacher", u)]))
            x = torch.tensor([ids])
            past, new = None, []
            for _ in range(max_new_tokens):
                o = model(input_ids=x, past_key_values=past, use_cache=True)
                past = o.past_key_values
                probs = (o.logits[0, -1].float() / temperature).softmax(-1)
                v = int(torch.multinomial(probs, 1, generator=gen))
                new.append(v)
                if fmt.to_teacher in tokenizer.decode(new) or v == tokenizer.eos_token_id:
                    break
                x = torch.tensor([[v]])
            reply = tokenizer.decode(new).split(fmt.to_teacher)[0].strip()
            rewards.append((vader_compound(reply) + 1.0) / 2.0)
        out[label] = float(np.mean(rewards))
    return out


def demonstrations(train: list[dict], cfg: ImitatorConfig) -> list[dict]:
    """The transcripts β is fitted on: a prefix of the split, optionally resampled."""
    if not 0 < cfg.train_fraction <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], got {cfg.train_fraction}")
    part = train[: max(1, round(cfg.train_fraction * len(train)))]
    if cfg.bootstrap <= 0:
        return part
    rng = np.random.default_rng(cfg.bootstrap)
    return [part[i] for i in rng.integers(0, len(part), size=len(part))]


def train_imitator(
    corpus_dir: str | Path, cfg: ImitatorConfig, cache_root: str | Path, progress: bool = True
) -> Path:
    """Fit the tokenizer and β on the corpus's training split; return the model folder.

    The folder is ``cache_root/imitator-<key>`` (see :func:`imitator_key`); when it already
    holds a finished model it is returned without training. It loads with
    ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``.
    """
    corpus_dir = Path(corpus_dir)
    folder = Path(cache_root) / f"imitator-{imitator_key(corpus_dir, cfg)}"
    if (folder / REPORT_FILE).exists():
        check_cached(folder)
        return folder
    world = load_world(corpus_dir)
    train = load_split(corpus_dir, "train")
    heldout = load_split(corpus_dir, "heldout")
    if cfg.eval_transcripts:
        heldout = heldout[: cfg.eval_transcripts]
    t0 = time.perf_counter()
    # The tokenizer always sees the whole training split, so that imitators fitted on parts
    # or resamples of it (ensemble members) share one vocabulary.
    # The speaker names join the corpus once each, so that every member's vocabulary is
    # the same whatever its renaming draws.
    names = [f"{world.fmt.separator}{n}:" for n in speaker_names(N_SPEAKER_NAMES)]
    tokenizer = train_tokenizer([*(r["text"] for r in train), *names], cfg.vocab_size)
    fitted = demonstrations(train, cfg)
    texts = rename_speakers([r["text"] for r in fitted], world.fmt, cfg.rename_fraction, cfg.seed)
    texts += peer_texts(
        world, cfg.peer_transcripts, cfg.peer_quiet, cfg.peer_single_quiet, cfg.peer_header
    )
    # Whole-text tokenization equals piecewise (canonical) tokenization (tokenizer.py).
    inputs, targets = _windows(
        [encode(tokenizer, t) for t in texts], cfg.block_size + 1, tokenizer.eos_token_id
    )
    with _threads(cfg.num_threads):
        model = make_model(cfg, tokenizer)
        t1 = time.perf_counter()
        curve = fit(model, inputs, targets, cfg, progress)
        t2 = time.perf_counter()
        report = heldout_report(model, tokenizer, world, heldout, cfg.block_size)
        probe = student_reward_probe(model, tokenizer, world, cfg.probe_samples, seed=cfg.seed)
        t3 = time.perf_counter()
    meta = {
        "key": folder.name.removeprefix("imitator-"),
        "config": cfg.to_dict(),
        "world_hash": world.cfg.hash,
        "n_params": n_params(model),
        "vocab_size": len(tokenizer),
        "train_transcripts": len(fitted),
        "distinct_train_transcripts": len({id(r) for r in fitted}),
        "threads": torch.get_num_threads() if cfg.num_threads <= 0 else cfg.num_threads,
        "seconds": {"prepare": t1 - t0, "train": t2 - t1, "evaluate": t3 - t2},
        "train_curve": curve,
        "heldout": report,
        "student_reward_probe": probe,
    }
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    meta["weights_sha256"] = _file_digest(tmp / WEIGHTS_FILE)  # checked on every cache hit
    # Written last: a folder with this file is complete.
    (tmp / REPORT_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    folder.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def ensemble_configs(cfg: ImitatorConfig, k: int) -> list[ImitatorConfig]:
    """Configs of a K-member ensemble (docs/design.md, "Pessimistic bases"): member 0 is ``cfg``
    itself (the single imitator, fitted on the whole split); member j ≥ 1 has seed ``cfg.seed + j``
    and bootstrap resample j."""
    if k < 1:
        raise ValueError(f"an ensemble needs at least one member, got {k}")
    return [cfg] + [replace(cfg, seed=cfg.seed + j, bootstrap=j) for j in range(1, k)]


def train_ensemble(
    corpus_dir: str | Path,
    cfg: ImitatorConfig,
    k: int,
    cache_root: str | Path,
    progress: bool = True,
) -> list[Path]:
    """Fit (or fetch from the cache) the members of :func:`ensemble_configs`; their folders."""
    return [
        train_imitator(corpus_dir, member, cache_root, progress=progress)
        for member in ensemble_configs(cfg, k)
    ]


def read_report(folder: str | Path) -> dict:
    """The ``imitator.json`` of a trained imitator folder; WorldError when it is not one."""
    path = Path(folder) / REPORT_FILE
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WorldError(f"{path} is not an imitator report ({err}); delete {Path(folder)} "
                         "to train it again") from err  # fmt: skip
    if not isinstance(report, dict):
        raise WorldError(f"{path} is not an imitator report (not a JSON object)")
    return report


def check_cached(folder: Path) -> None:
    """WorldError (one line) when a cached imitator folder is damaged: its report does not
    parse, or its weights are not the ones it was saved with (or, for folders saved before
    the digest was recorded, not a safetensors file)."""
    report = read_report(folder)
    weights = folder / WEIGHTS_FILE
    want = report.get("weights_sha256")
    try:
        if want is not None:
            ok = _file_digest(weights) == want
        else:
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as fh:
                ok = bool(list(fh.keys()))
    except Exception:  # a missing or unreadable file, a header safetensors cannot parse
        ok = False
    if not ok:
        raise WorldError(f"{weights} is damaged (not the weights this cached imitator was "
                         f"saved with); delete {folder} to train it again")  # fmt: skip
