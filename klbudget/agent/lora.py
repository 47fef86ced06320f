"""A policy that is the language model itself: low-rank adapters (LoRA, via `peft`) on a copy
of the base LM, trained under the same budget as the heads (`agent.head = "lora"`;
docs/design.md, "Mechanics").

The proposal is a = softmax(LM_θ(history) / T), θ the base model's weights plus adapters
whose second factor starts at zero, so a fresh agent proposes β itself (T is the base's
temperature). The played distribution is the fixed-KL mixture of a and β, with the per-step
KL target set by a linear map of the observation, exactly as for the heads
(`klbudget.agent.policy`); only where a comes from differs.

In a rollout the adapted LM reads every token of the lockstep batch as it is written (its
own preallocated KV cache, one position per env step). In the PPO update its log-probs are
recomputed teacher-forced over whole conversations, with gradient: the batch carries the
episodes' token ids and each step's place in them (:class:`SeqRef`), and minibatches are
groups of whole conversations (`klbudget.agent.ppo`).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from klbudget.agent.policy import Actor


@dataclass
class SeqRef:
    """Where each agent step of a batch sits in its episode's tokens."""

    ids: Tensor  # (C, T) token ids of C conversations
    conv: Tensor  # (M,) conversation of each agent step
    t: Tensor  # (M,) position of the step's action in its conversation

    @staticmethod
    def cat(parts: list[SeqRef]) -> SeqRef:
        offsets, n = [], 0
        for p in parts:
            offsets.append(n)
            n += int(p.ids.shape[0])
        return SeqRef(
            torch.cat([p.ids for p in parts]),
            torch.cat([p.conv + o for p, o in zip(parts, offsets, strict=True)]),
            torch.cat([p.t for p in parts]),
        )

    def groups(self, idx: Tensor) -> list[Tensor]:
        """The steps `idx` split by conversation (each group one conversation's steps)."""
        conv = self.conv[idx]
        order = torch.argsort(conv, stable=True)
        counts = torch.bincount(conv[order]).tolist()
        return [g for g in idx[order].split([c for c in counts if c]) if g.numel()]


class AdaptedLM(nn.Module):
    """The base LM with LoRA adapters: incremental log-probs in rollouts, teacher-forced
    log-probs with gradient in updates."""

    def __init__(
        self, model_dir: str | Path, *, temperature: float, rank: int, alpha: float
    ) -> None:
        super().__init__()
        from klbudget.base.hf import (
            ModelLoadError,
            load_local,
            resolve_model,
            use_prefix_attention,
        )

        if resolve_model(model_dir)[1]:
            raise ModelLoadError(
                f"{model_dir}: a LoRA policy adapts a plain model folder, not an in-context "
                "imitator (use head = full or embed)"
            )
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as err:
            raise ModelLoadError("agent.head = lora needs the peft package "
                                 "(pip install peft)") from err  # fmt: skip
        model, _ = load_local(model_dir)
        use_prefix_attention(model)  # rows of a batch are always the same length
        # Every linear layer of the blocks (attention and MLP; peft leaves the output layer).
        lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear")
        with warnings.catch_warnings():  # GPT-2's Conv1D: peft sets fan_in_fan_out itself
            warnings.simplefilter("ignore")
            try:
                self.model = get_peft_model(model, lora)
            except ValueError as err:
                raise ModelLoadError(f"{model_dir}: peft cannot adapt this model: {err}") from err
        self.model.eval()  # no dropout anywhere; the adapters still train
        self.temperature = float(temperature)
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self._cache = None
        self._pos = 0

    def _logp(self, logits: Tensor) -> Tensor:
        return torch.log_softmax(logits.float() / self.temperature, -1)

    @torch.no_grad()
    def start(self, ids: Tensor, capacity: int) -> Tensor:
        """Read the prompts `ids` (N, P) into a fresh cache of `capacity` positions; the
        log-probs (N, V) of the next token."""
        from transformers import StaticCache

        self._cache = StaticCache(config=self.model.config, max_cache_len=capacity)
        self._pos = int(ids.shape[1])
        out = self.model(input_ids=ids, past_key_values=self._cache, use_cache=True,
                         cache_position=torch.arange(self._pos))  # fmt: skip
        return self._logp(out.logits[:, -1])

    @torch.no_grad()
    def advance(self, tokens: Tensor) -> Tensor:
        """Append one token (N,) to every row; the log-probs (N, V) of the next."""
        if self._cache is None:
            raise RuntimeError("call start() before advance()")
        pos = torch.arange(self._pos, self._pos + 1)
        out = self.model(input_ids=tokens.view(-1, 1), past_key_values=self._cache,
                         use_cache=True, cache_position=pos)  # fmt: skip
        self._pos += 1
        return self._logp(out.logits[:, -1])

    def logp_steps(self, seq: SeqRef, idx: Tensor) -> Tensor:
        """log a (m, V) at the steps `idx`, teacher-forced over their conversations, with
        gradient to the adapters."""
        conv, t = seq.conv[idx], seq.t[idx]
        convs, inverse = torch.unique(conv, return_inverse=True)
        upto = int(t.max())  # the token at t is predicted from positions < t
        logits = self.model(input_ids=seq.ids[convs, :upto]).logits  # (c, upto, V)
        return self._logp(logits[inverse, t - 1])


class LoraActor(Actor):
    """The actor whose proposal is the adapted LM (:class:`AdaptedLM`); the scalar s of the
    per-step KL target is a linear map of the observation, as in :class:`Actor`.

    Its state dict holds only what trains (s and the adapters), so checkpoints stay small
    and are rebuilt on the base model's folder."""

    def __init__(
        self,
        obs_dim: int,
        model_dir: str | Path,
        *,
        temperature: float,
        rank: int = 8,
        alpha: float = 16.0,
        mixture: bool = True,
    ) -> None:
        nn.Module.__init__(self)
        self.mixture = mixture
        self.lm = AdaptedLM(model_dir, temperature=temperature, rank=rank, alpha=alpha)
        self.s = nn.Linear(obs_dim, 1)
        nn.init.zeros_(self.s.weight)
        nn.init.zeros_(self.s.bias)

    @property
    def head(self) -> str:
        return "lora"

    def logits(self, obs: Tensor) -> Tensor:
        raise TypeError("a LoRA actor's proposal comes from its LM: pass log_a to forward()")

    def _trained(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        keep = self._trained()
        full = super().state_dict(*args, **kwargs)
        return OrderedDict((k, v) for k, v in full.items() if k in keep)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        keep = self._trained()
        if strict and set(state_dict) != keep:
            missing, extra = sorted(keep - set(state_dict)), sorted(set(state_dict) - keep)
            raise RuntimeError(f"LoRA actor state: missing {missing[:2]}, unexpected {extra[:2]}")
        return super().load_state_dict(state_dict, strict=False, assign=assign)
