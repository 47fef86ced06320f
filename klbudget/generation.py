r"""KL-budgeted generation for any pair of Hugging Face causal LMs (docs/design.md,
"KL-budgeted generation").

Put any *proposal* policy (a fine-tuned or LoRA copy of the base, another model with the
same tokenizer, or the base under a prompt of its own) in front of a frozen *base* and
sample with a hard per-sequence budget

    Σ_t KL(x_t ‖ base_t) ≤ B        on every sequence,

where x_t = α_t·proposal_t + (1 − α_t)·base_t is the fixed-KL mixture the training agent
plays (:func:`klbudget.core.mixture.fixed_kl_mixture`) with target k_t = fraction · (budget
left). By the chain rule of KL, the sequence-level KL(π‖base) of the sampler is then at
most B as well. B = 0 samples the base exactly, B = ∞ the proposal exactly.

:class:`KLBudgetProcessor` is a transformers ``LogitsProcessor``: it runs the base beside
the proposal's ``generate`` (its own KV cache, one token per call) and replaces the
proposal's scores by log x_t. It must see the scores last: nothing may reshape the
distribution after it (no temperature, top-k, top-p or min-p warper).
:func:`budgeted_generate` calls ``generate`` with those settings and returns the exact KL
each sequence spent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from klbudget.core.mixture import fixed_kl_mixture

try:  # transformers is a dependency of the package; the import is only delayed for speed
    from transformers import LogitsProcessor
except ImportError:  # pragma: no cover
    LogitsProcessor = object  # type: ignore[assignment,misc]


class BudgetError(ValueError):
    """A budgeted generation that cannot keep its guarantee as asked."""


def _positions(mask: Tensor) -> Tensor:
    """Position ids for left-padded rows: 0 at each row's first real token."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class KLBudgetProcessor(LogitsProcessor):
    """Replace a proposal's next-token scores by the fixed-KL mixture with a frozen base.

    Args:
        base: the base causal LM (any ``transformers`` model returning ``.logits``), frozen.
        budget: B in nats per sequence, ≥ 0 (``float("inf")`` allowed).
        fraction: share of the budget left that one token may spend, in (0, 1]. At 1 the
            proposal is played exactly until the budget is short, then as much of it as
            the budget allows; smaller values spread the budget over more tokens.
        attention_mask: the prompt's mask (left padding), as passed to ``generate``.
        eos_token_id: token id(s) that end a sequence; a finished row spends nothing more.

    After generation, :attr:`kl_spent` holds Σ_t KL(x_t‖base_t) of every row and
    :attr:`steps` the number of tokens it drew (up to and including its end token).
    """

    def __init__(
        self,
        base,
        budget: float,
        *,
        fraction: float = 1.0,
        attention_mask: Tensor | None = None,
        eos_token_id: int | list[int] | None = None,
    ) -> None:
        budget = float(budget)
        if not budget >= 0:
            raise BudgetError(f"budget must be >= 0 nats (or inf), got {budget}")
        if not 0 < fraction <= 1:
            raise BudgetError(f"fraction must be in (0, 1], got {fraction}")
        self.base = base
        self.budget = budget
        self.fraction = float(fraction)
        self.prompt_mask = attention_mask
        if eos_token_id is None:
            eos_token_id = getattr(base.config, "eos_token_id", None)
        if isinstance(eos_token_id, int):
            eos_token_id = [eos_token_id]
        self.eos = torch.tensor(list(eos_token_id or []), dtype=torch.long)
        self.reset()

    _want_hidden = False  # the base's hidden states are kept for an agent's features

    def reset(self) -> None:
        """Forget the sequences of a previous ``generate`` call."""
        self._cache = None
        self._mask: Tensor | None = None
        self._pos: Tensor | None = None
        self._len = 0
        self.budget_left: Tensor | None = None
        self.kl_spent: Tensor | None = None
        self.steps: Tensor | None = None
        self.done: Tensor | None = None

    @torch.no_grad()
    def _base_logits(self, input_ids: Tensor) -> Tensor:
        n, t = input_ids.shape
        if self._cache is None:
            mask = self.prompt_mask
            if mask is None:
                mask = torch.ones_like(input_ids)
            if mask.shape != input_ids.shape:
                raise BudgetError(
                    f"attention_mask {tuple(mask.shape)} does not match the prompt "
                    f"{tuple(input_ids.shape)}"
                )
            self._mask = mask.to(input_ids.device).long()
            pos = _positions(self._mask)
            out = self.base(
                input_ids=input_ids,
                attention_mask=self._mask,
                position_ids=pos,
                use_cache=True,
                output_hidden_states=self._want_hidden,
            )
            self._pos = pos[:, -1:]
        else:
            if t != self._len + 1 or n != self._mask.shape[0]:
                raise BudgetError(
                    "KLBudgetProcessor follows one sampled sequence per row, one token per "
                    f"call (saw {n}x{t} after {self._mask.shape[0]}x{self._len}): use "
                    "do_sample=True with num_beams=1, or call reset() between generations"
                )
            self._mask = torch.cat([self._mask, self._mask.new_ones(n, 1)], dim=1)
            self._pos = self._pos + 1
            out = self.base(
                input_ids=input_ids[:, -1:],
                attention_mask=self._mask,
                position_ids=self._pos,
                past_key_values=self._cache,
                use_cache=True,
                output_hidden_states=self._want_hidden,
            )
        self._cache = out.past_key_values
        self._hidden = out.hidden_states
        self._len = t
        return out.logits[:, -1, :]

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        n = input_ids.shape[0]
        first = self._cache is None
        base_logits = self._base_logits(input_ids)
        if base_logits.shape[-1] != scores.shape[-1]:
            raise BudgetError(
                f"the proposal scores {scores.shape[-1]} tokens and the base "
                f"{base_logits.shape[-1]}: they must share a tokenizer and vocabulary size"
            )
        if first:
            dev = scores.device
            self.budget_left = torch.full((n,), self.budget, dtype=torch.float64, device=dev)
            self.kl_spent = torch.zeros(n, dtype=torch.float64, device=dev)
            self.steps = torch.zeros(n, dtype=torch.long, device=dev)
            self.done = torch.zeros(n, dtype=torch.bool, device=dev)
        elif self.eos.numel():
            last = input_ids[:, -1]
            self.done |= torch.isin(last, self.eos.to(last.device))
        log_b = torch.log_softmax(base_logits.double(), -1)
        log_a = torch.log_softmax(scores.double(), -1)
        target = torch.where(self.done, 0.0, self.fraction * self.budget_left)
        out = fixed_kl_mixture(log_a, log_b, target)
        kl = torch.where(self.done, 0.0, out.kl)
        self.kl_spent += kl
        self.budget_left = (self.budget_left - kl).clamp(min=0.0)
        self.steps += (~self.done).long()
        return out.log_x.to(scores.dtype)


# The settings under which generate samples exactly the processor's distribution.
_SAMPLING = {"do_sample": True, "num_beams": 1, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
_FORBIDDEN = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "num_beams",
    "do_sample",
    "logits_processor",
)


@dataclass
class BudgetedOutput:
    sequences: Tensor  # (n, prompt + new) token ids, as generate returns them
    kl: Tensor  # (n,) float64: Σ_t KL(x_t‖base_t) each sequence spent, ≤ budget
    new_tokens: Tensor  # (n,) tokens drawn per sequence, its end token included


def budgeted_generate(
    proposal,
    base,
    input_ids: Tensor,
    *,
    budget: float,
    attention_mask: Tensor | None = None,
    fraction: float = 1.0,
    max_new_tokens: int = 32,
    **generate_kwargs,
) -> BudgetedOutput:
    """Sample continuations of ``input_ids`` from ``proposal`` held within ``budget`` nats of
    ``base`` on every sequence (see the module docstring). Seed with ``torch.manual_seed``.

    Extra keyword arguments go to ``proposal.generate``, except those that would change the
    distribution after the budget is applied (temperature, top-k/p, beams, ...): a
    proposal at another temperature is a different proposal, to be built as such.
    """
    bad = [k for k in _FORBIDDEN if k in generate_kwargs]
    if bad:
        raise BudgetError(
            f"budgeted_generate sets {', '.join(bad)} itself (the budget holds only for the "
            "distribution it samples)"
        )
    eos = generate_kwargs.get("eos_token_id", proposal.generation_config.eos_token_id)
    proc = KLBudgetProcessor(
        base, budget, fraction=fraction, attention_mask=attention_mask, eos_token_id=eos
    )
    from transformers import LogitsProcessorList

    sequences = proposal.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        logits_processor=LogitsProcessorList([proc]),
        **_SAMPLING,
        **generate_kwargs,
    )
    return BudgetedOutput(sequences, proc.kl_spent, proc.steps)


# ----------------------------------------------------------------------------- trained agents

AGENT_FILE = "agent.json"
AGENT_WEIGHTS = "agent.safetensors"


def export_agent(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a trained agent of a single-base run as a folder that generates without the
    training code: `agent.safetensors` (the actor head) and `agent.json` (its base model
    folder, head, budget and the episode length its position input counts in)."""
    import json

    from safetensors.torch import save_file

    from klbudget.base.hf import N_FEATURE_LAYERS, resolve_model
    from klbudget.config import load
    from klbudget.runs import folder as rf

    run, out = Path(run_dir), Path(out_dir)
    if not (run / "config.toml").is_file():
        raise BudgetError(f"{run} is not a run folder (no config.toml)")
    cfg = load(run / "config.toml")
    if cfg.base.kind != "single":
        raise BudgetError(f"{run}: only agents of a single base export (this one's base is "
                          f"{cfg.base.kind}, which asks τ for help)")  # fmt: skip
    if cfg.agent.head not in ("full", "embed"):
        raise BudgetError(f"{run}: export writes a head on frozen features; this agent's "
                          f"proposal is its LM with adapters (head = {cfg.agent.head}), kept "
                          "in its checkpoints")  # fmt: skip
    stem = rf.latest_checkpoint(run)
    if stem is None:
        raise BudgetError(f"{run} has no checkpoint to export")
    if out.exists() and any(out.iterdir()):
        raise BudgetError(f"{out} already holds files; choose a new folder")
    model, context = resolve_model(cfg.model.path)
    from safetensors.torch import load_file

    weights = {k[len("actor."):]: v for k, v in load_file(run / "checkpoints" /
               f"{stem}.safetensors").items() if k.startswith("actor.")}  # fmt: skip
    if not weights:
        raise BudgetError(f"{run}: checkpoint {stem} holds no actor")
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, out / AGENT_WEIGHTS)
    spec = {
        "base_model": str(Path(model).resolve()),
        "context": context,
        "head": cfg.agent.head,
        "mixture": cfg.agent.kind != "penalty",
        "budget": cfg.budget.total,
        "budget_mode": cfg.budget.mode,
        "budget_scale": max(cfg.budget.total, 1.0),
        "length": cfg.env.length,
        "temperature": cfg.model.temperature,
        "feature_layers": N_FEATURE_LAYERS,
        "from_run": str(run.resolve()),
        "checkpoint": stem,
    }
    rf.atomic_write_text(out / AGENT_FILE, json.dumps(spec, indent=1) + "\n")
    return out


class AgentProcessor(KLBudgetProcessor):
    """An exported agent as a `LogitsProcessor`: the base runs beside `generate` (the
    proposal's scores are ignored), the agent's head reads the base's features, its
    position in the episode and its budget left, and plays its fixed-KL mixture with the
    base, spending as it was trained to (`budget_mode`); Σ KL ≤ budget on every sequence in
    the `expected` mode, as in training. Load with :meth:`from_pretrained`."""

    _want_hidden = True

    def __init__(self, base, actor, spec: dict, *, attention_mask: Tensor | None = None,
                 eos_token_id=None) -> None:  # fmt: skip
        super().__init__(base, spec["budget"] if spec["mixture"] else math.inf,
                         attention_mask=attention_mask, eos_token_id=eos_token_id)  # fmt: skip
        self.actor = actor
        self.spec = spec
        self._last_logx: Tensor | None = None
        self._last_logb: Tensor | None = None

    @classmethod
    def from_pretrained(cls, agent_dir: str | Path, **kwargs) -> tuple[AgentProcessor, Any]:
        """(processor, tokenizer) of an exported agent folder."""
        import json

        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from klbudget.agent.policy import Actor

        folder = Path(agent_dir)
        try:
            spec = json.loads((folder / AGENT_FILE).read_text())
            weights = load_file(folder / AGENT_WEIGHTS)
        except (OSError, ValueError) as err:
            raise BudgetError(f"{folder} is not an exported agent: {err}") from err
        if spec.get("context"):
            raise BudgetError(f"{folder}: agents of in-context bases do not export yet")
        base = AutoModelForCausalLM.from_pretrained(spec["base_model"], local_files_only=True)
        tok = AutoTokenizer.from_pretrained(spec["base_model"], local_files_only=True)
        base.eval()
        width = base.config.hidden_size
        obs_dim = spec["feature_layers"] * width + 2
        embed = None
        if spec["head"] == "embed":
            embed = base.get_output_embeddings().weight.detach().float()
        n_actions = (
            weights["z.bias"].shape[0] if "z.bias" in weights else weights["z_bias"].shape[0]
        )
        actor = Actor(obs_dim, n_actions, mixture=spec["mixture"], out_embed=embed)
        actor.load_state_dict(weights)
        actor.eval()
        return cls(base, actor, spec, **kwargs), tok

    @torch.no_grad()
    def _base_step(self, input_ids: Tensor):
        """(log β at the base's temperature, features) at the last position."""
        logits = self._base_logits(input_ids)  # advances the cache, keeps the hidden states
        feats = torch.cat([h[:, -1, :] for h in self._hidden[-self.spec["feature_layers"] :]], -1)
        logp = torch.log_softmax(logits.float() / self.spec["temperature"], -1)
        return logp, feats

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        from klbudget.agent.policy import observation

        n = input_ids.shape[0]
        first = self._cache is None
        log_b, feats = self._base_step(input_ids)
        if first:
            self.budget_left = torch.full((n,), float(self.budget), dtype=torch.float64)
            self.kl_spent = torch.zeros(n, dtype=torch.float64)
            self.steps = torch.zeros(n, dtype=torch.long)
            self.done = torch.zeros(n, dtype=torch.bool)
        else:
            last = input_ids[:, -1]
            if self.eos.numel():
                self.done |= torch.isin(last, self.eos.to(last.device))
            if self.spec["budget_mode"] == "realized" and self._last_logx is not None:
                taken = last[:, None]
                ratio = self._last_logx.gather(-1, taken) - self._last_logb.gather(-1, taken)
                ratio = ratio.squeeze(-1).double()
                live = self._live
                self.budget_left = torch.where(live, (self.budget_left - ratio).clamp(min=0.0),
                                               self.budget_left)  # fmt: skip
        position = self._mask.sum(-1).float() / self.spec["length"]
        left = self.budget_left if self.spec["mixture"] else torch.zeros(n, dtype=torch.float64)
        left_in = torch.where(self.done, 0.0, left).float()
        obs = observation(feats, position, left_in, self.spec["budget_scale"])
        played = self.actor(obs, log_b, left_in)
        log_x = torch.where(self.done[:, None], log_b, played.log_x)
        kl = torch.where(self.done, 0.0, played.kl.double())
        self.kl_spent += kl
        if self.spec["budget_mode"] == "expected":
            self.budget_left = (self.budget_left - kl).clamp(min=0.0)
        self._last_logx, self._last_logb, self._live = log_x, log_b, ~self.done
        self.steps += (~self.done).long()
        return log_x.to(scores.dtype)
