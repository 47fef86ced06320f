"""Which actor a config asks for: the paper's head, the head through the base's output
embedding (`klbudget.agent.policy`), or the base LM with LoRA adapters
(`klbudget.agent.lora`)."""

from __future__ import annotations

from klbudget.agent.lora import LoraActor
from klbudget.agent.policy import Actor


def make_actor(
    obs_dim: int,
    base,
    head: str = "full",
    mixture: bool = True,
    *,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
) -> Actor:
    """The actor for ``base`` with the chosen head ("embed" needs ``base.output_embedding``;
    "lora", LoRA adapters on the base's own model folder, a single Hugging Face base)."""
    if head == "full":
        return Actor(obs_dim, base.num_actions, mixture=mixture)
    if head == "lora":
        folder = getattr(base, "model_dir", None)
        if folder is None or getattr(base, "context_len", 0):
            raise ValueError(
                f"head = lora adapts the base's own model folder; {type(base).__name__} has "
                "none (a single Hugging Face base, without help or in-context reading)"
            )
        actor = LoraActor(obs_dim, folder, temperature=base.temperature, rank=lora_rank,
                          alpha=lora_alpha, mixture=mixture)  # fmt: skip
        if actor.lm.vocab_size != base.num_actions:
            raise ValueError(
                f"head = lora: the LM has {actor.lm.vocab_size} tokens, the base "
                f"{base.num_actions} actions (a help action needs another head)"
            )
        return actor
    if head != "embed":
        raise ValueError(f"unknown actor head {head!r}; expected full, embed or lora")
    embed = getattr(base, "output_embedding", None)
    if embed is None:
        raise ValueError(f"{type(base).__name__} exposes no output embedding for head = embed")
    return Actor(obs_dim, base.num_actions, mixture=mixture, out_embed=embed())
