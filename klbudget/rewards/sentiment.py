"""Sentiment rewards for student replies (docs/design.md, "Reward").

A reward model is a plain callable: a list of texts in, signed scores s ∈ [−1, 1] out.
The environment pays (s + 1)/2 per student reply.

>>> score = VaderSentiment()
>>> [round(s, 2) for s in score(["I love this, thank you!", "This is awful."])]
[0.81, -0.46]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

SentimentFn = Callable[[Sequence[str]], list[float]]


class VaderSentiment:
    """VADER's compound score (lexicon shipped inside `vadersentiment`; works offline)."""

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def __call__(self, texts: Sequence[str]) -> list[float]:
        return [float(self._analyzer.polarity_scores(t)["compound"]) for t in texts]


class HFClassifierSentiment:
    """Signed score P(positive) − P(negative) from a local Hugging Face text classifier.

    The label whose name contains "pos" is positive and the one containing "neg" negative
    (e.g. DistilBERT SST-2's POSITIVE/NEGATIVE), as in the paper's reward.
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise ValueError(f"no classifier folder at {path} (expected {path / 'config.json'})")
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, local_files_only=True
        ).to(device)
        self.model.eval()
        labels = {i: str(n).lower() for i, n in self.model.config.id2label.items()}
        pos = [i for i, n in labels.items() if "pos" in n]
        neg = [i for i, n in labels.items() if "neg" in n]
        if len(pos) != 1 or len(neg) != 1:
            raise ValueError(f"classifier labels {labels} lack one positive and one negative")
        self.pos, self.neg, self.device = pos[0], neg[0], device

    def __call__(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        with self._torch.no_grad():
            enc = self.tokenizer(
                list(texts), return_tensors="pt", padding=True, truncation=True
            ).to(self.device)
            p = self.model(**enc).logits.softmax(-1)
        return (p[:, self.pos] - p[:, self.neg]).tolist()


def make_sentiment(kind: str, model_dir: str = "") -> SentimentFn:
    """Build the reward model named in the config: "vader" or "hf" (with `model_dir`)."""
    if kind == "vader":
        return VaderSentiment()
    if kind == "hf":
        return HFClassifierSentiment(model_dir)
    raise ValueError(f"unknown sentiment model {kind!r}; expected 'vader' or 'hf'")


def reply_reward(score: float) -> float:
    """(s + 1)/2 ∈ [0, 1]: every reply earns something, a positive one more."""
    return (score + 1.0) / 2.0
