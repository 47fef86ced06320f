"""A base policy over any Hugging Face causal LM loaded from a local folder.

All conversations in a batch start from the same prompt and advance one token per call, so
they are always the same length: the KV cache is one preallocated (N, heads, T, d) block
per layer (a `StaticCache` sized to the episode), written in place one position per step,
with no padding and no concatenation.
Attention reads only the filled part of that block: a model whose every layer attends to
its whole past runs with the "klbudget_prefix" attention (`prefix_attention`), which hands
PyTorch's fused attention the first n cached positions instead of all of them behind a mask
(the masked positions add exactly nothing; the world's imitator decodes 1.23 times as fast
alone, `benchmarks/rollout.py`). Models with a sliding or chunked window keep their own.
Features are the hidden states of the last 3 layers at the current position (docs/design.md,
"Mechanics").
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from klbudget.base.protocol import BaseStep

N_FEATURE_LAYERS = 3
PREFIX_ATTENTION = "klbudget_prefix"


class ModelLoadError(ValueError):
    """A model folder that does not exist or cannot be loaded."""


def prefix_attention(module, query, key, value, attention_mask, **kwargs):
    """Scaled dot-product attention over the first n cached positions, n the position after
    the queries (`cache_position`); causal within the queries.

    Every conversation of a batch has the same length, so no padding mask is ever needed:
    the model builds none for an attention it does not know, and this function is the
    whole of the masking. A single query attends to all n positions; q > 1 queries at
    positions n − q … n − 1 attend causally.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q = query.shape[2]
    pos = kwargs.get("cache_position")
    n = int(pos[-1]) + 1 if pos is not None else key.shape[2]
    key, value = key[:, :, :n], value[:, :, :n]
    if q > 1 and n > q:  # queries after a cached prefix: an explicit causal mask
        rows = torch.arange(n - q, n, device=query.device)[:, None]
        attention_mask = rows >= torch.arange(n, device=query.device)[None, :]
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def plain_causal(config) -> bool:
    """Whether every layer of the model attends causally to the whole past: no sliding or
    chunked window, which a mask the library builds would impose and prefix attention,
    for which the library builds no mask, would drop."""
    layer_types = getattr(config, "layer_types", None) or []
    windowed = [getattr(config, k, None) for k in ("sliding_window", "attention_chunk_size")]
    return all(w is None for w in windowed) and all(t == "full_attention" for t in layer_types)


def use_prefix_attention(model) -> bool:
    """Run ``model`` with :func:`prefix_attention` (same-length rows, no padding mask is ever
    applied) where its attention is plainly causal; else keep its own. Whether it did."""
    from transformers import AttentionInterface

    if not plain_causal(model.config):
        return False
    AttentionInterface.register(PREFIX_ATTENTION, prefix_attention)
    model.set_attn_implementation(PREFIX_ATTENTION)
    return True


# A folder holding this file instead of weights is an *in-context imitator*: the model of
# another folder reading a fixed context (demonstrations) before every transcript.
CONTEXT_FILE = "context.json"  # {"model": LM folder, "context": text before each transcript}


def resolve_model(model_dir: str | Path) -> tuple[Path, str]:
    """(the LM's folder, the context it reads first) of a model folder ('' context) or of an
    in-context imitator folder (:data:`CONTEXT_FILE`; a relative "model" is from the folder)."""
    import json

    path = Path(model_dir)
    spec = path / CONTEXT_FILE
    if not spec.is_file():
        return path, ""
    try:
        obj = json.loads(spec.read_text())
        model, context = Path(obj["model"]), obj["context"]
        if not isinstance(context, str):
            raise TypeError("context is not a string")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"{spec} is not a context file: {err}") from err
    return (model if model.is_absolute() else path / model), context


def load_local(model_dir: str | Path, dtype: torch.dtype = torch.float32):
    """Load (model, tokenizer) from a local folder; never reaches the network. (An in-context
    imitator's folder gives its LM's: :func:`resolve_model`.)"""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = resolve_model(model_dir)[0]
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"no model folder at {path} (expected {path / 'config.json'})")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"cannot load the model in {path}: {first}") from err
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


# How the frozen model runs (model.precision): whatever it computes *is* the base policy, so
# the budget stays exact against the model as run; only β itself moves (by rounding).
PRECISIONS = ("float32", "bfloat16", "int8")


def quantize_blocks(model) -> int:
    """Dynamic int8 quantization (weights int8, activations quantized per batch) of the linear
    layers inside the transformer blocks, in place. The output layer stays float32: the
    actor's embed head and the exact log β from the last hidden state (`logp_head`) read its
    weights, and its logits feed every KL. Returns the number of layers quantized."""
    import warnings

    from torch.ao.quantization import quantize_dynamic

    body = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    linear = sum(isinstance(m, torch.nn.Linear) for m in body.modules())
    with warnings.catch_warnings():  # the API is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        quantize_dynamic(body, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return linear


class HFBase:
    """`BasePolicy` over a frozen Hugging Face causal LM (GPT-2, Llama, ...)."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        temperature: float = 1.0,
        device: str | torch.device = "cpu",
        precision: str = "float32",
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"base temperature must be > 0, got {temperature}")
        self.model_dir = Path(model_dir)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {'|'.join(PRECISIONS)}, got {precision!r}")
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        self.model, self.tokenizer = load_local(model_dir, dtype)
        if precision == "int8" and not quantize_blocks(self.model):
            raise ModelLoadError(f"{model_dir}: int8 needs torch.nn.Linear layers in the model's "
                                 "blocks (GPT-2's are Conv1D)")  # fmt: skip
        use_prefix_attention(self.model)
        self.device = torch.device(device)
        self.model.to(self.device)
        # The context every transcript is read after (an in-context imitator's demonstrations;
        # none for a plain model folder), run once: its keys and values are copied into each
        # row's cache at reset, so a long context costs one pass, not one per conversation.
        context = resolve_model(model_dir)[1]
        ids = self.tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
        self.context_len = len(ids)
        self._context_kv: list[tuple[Tensor, Tensor]] = []
        if ids:
            self._context_kv = self._run_context(torch.tensor([ids]))
            self._context_ids = torch.tensor([ids])
        self.temperature = float(temperature)
        cfg = self.model.config
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.num_actions = self.vocab_size
        self.feature_dim = N_FEATURE_LAYERS * int(cfg.hidden_size)
        self.max_length = (
            int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048))
            - self.context_len
        )  # positions left for the transcript
        self._cache = None
        self._static = False
        self._pos = 0
        self._head_exact: bool | None = None  # decided on the first step

    def output_embedding(self) -> Tensor:
        """The model's output embedding (V, d), detached: the actor's "embed" head uses it."""
        return self.model.get_output_embeddings().weight.detach().float()

    def _describe(self, out) -> BaseStep:
        logits = out.logits[:, -1, :].float()  # (B, V)
        feats = torch.cat([h[:, -1, :] for h in out.hidden_states[-N_FEATURE_LAYERS:]], -1)
        logp = torch.log_softmax(logits / self.temperature, dim=-1)
        if self._head_exact is None:
            again = self._logp_from_last(feats[:, -self.hidden_size :].float())
            self._head_exact = bool((again - logp).abs().max() <= 1e-4)
        return BaseStep(env_logits=logits, logp=logp, features=feats.float())

    @property
    def hidden_size(self) -> int:
        return self.feature_dim // N_FEATURE_LAYERS

    def _logp_from_last(self, hidden: Tensor) -> Tensor:
        logits = torch.nn.functional.linear(hidden.to(self.device), self.output_embedding())
        return torch.log_softmax(logits / self.temperature, dim=-1)

    def logp_head(self):
        """log β from the last layer's hidden state (the last `hidden_size` features), or
        None. Exact where the logits are a bias-free linear map of that state (GPT-2, Llama:
        checked against the model's own log-probs on the first step), so that an agent step
        can keep d numbers instead of V log-probs and the PPO update recompute them."""
        if not self._head_exact:
            return None
        return self._logp_from_last

    @torch.no_grad()
    def _run_context(self, ids: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per layer, the (1, heads, P, d) keys and values of the context ``ids`` (1, P)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        self.model(input_ids=ids.to(self.device), past_key_values=cache, use_cache=True)
        return [(layer.keys, layer.values) for layer in cache.layers]

    @torch.no_grad()
    def reset(self, input_ids: Tensor, capacity: int | None = None) -> BaseStep:
        from transformers import DynamicCache, StaticCache

        # A preallocated cache is written in place at each step; a dynamic one would copy
        # every layer's whole cache at every token.
        p = self.context_len
        if capacity is not None:
            self._cache = StaticCache(config=self.model.config, max_cache_len=p + capacity)
        else:
            self._cache = DynamicCache(config=self.model.config)
        self._static = capacity is not None
        n = int(input_ids.shape[0])
        if p:  # every row starts from the context's keys and values
            k0, v0 = self._context_kv[0]
            if self._static:
                self._cache.early_initialization(n, k0.shape[1], k0.shape[3], k0.dtype, k0.device)
            where = {"cache_position": torch.arange(p, device=self.device)}
            for layer, (k, v) in enumerate(self._context_kv):
                self._cache.update(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1), layer, where)
        self._pos = p + int(input_ids.shape[1])
        out = self.model(
            input_ids=input_ids.to(self.device),
            past_key_values=self._cache,
            use_cache=True,
            output_hidden_states=True,
            **self._positions(p, self._pos, always=p > 0),
        )
        return self._describe(out)

    def _positions(self, start: int, end: int, always: bool = False) -> dict:
        if not (self._static or always):
            return {}
        return {"cache_position": torch.arange(start, end, device=self.device)}

    @torch.no_grad()
    def step(self, tokens: Tensor) -> BaseStep:
        if self._cache is None:
            raise RuntimeError("call reset() before step()")
        out = self.model(
            input_ids=tokens.to(self.device).view(-1, 1),
            past_key_values=self._cache,
            use_cache=True,
            output_hidden_states=True,
            **self._positions(self._pos, self._pos + 1, always=self.context_len > 0),
        )
        self._pos += 1
        return self._describe(out)

    @torch.no_grad()
    def score(self, input_ids: Tensor) -> Tensor:
        ids = input_ids.to(self.device)
        p = self.context_len
        if p:  # read after the context, which is then cut from the output
            context = self._context_ids.to(self.device).expand(ids.shape[0], -1)
            logits = self.model(input_ids=torch.cat([context, ids], 1)).logits[:, p:-1]
            logp = torch.log_softmax(logits.float() / self.temperature, -1)
            return logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
        logits = self.model(input_ids=ids).logits[:, :-1].float() / self.temperature
        logp = torch.log_softmax(logits, -1)
        return logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
