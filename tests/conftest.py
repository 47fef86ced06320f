"""Shared fixtures: a tiny random GPT-2-architecture base model folder (built once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from klbudget.envs.format import ChatFormat

# Property tests: the same draws on every run by default, so a suite that passed keeps
# passing; `HYPOTHESIS_PROFILE=explore pytest ...` searches new values (and records any
# failure it finds in .hypothesis/ for replay).
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SENTENCES = [
    "Hello there, how are you today?",
    "That is a great question, let me explain.",
    "I love this, thank you so much!",
    "This is awful and I hate it.",
    "Can you tell me more about the weather?",
    "Good job, you are doing very well.",
    "I am not sure what you mean.",
    "Let us try another example together.",
]


def chat_texts() -> list[str]:
    chat = ChatFormat()
    out = []
    for i in range(40):
        turns = [
            ("teacher" if j % 2 == 0 else "student", SENTENCES[(i + j) % len(SENTENCES)])
            for j in range(6)
        ]
        out.append(chat.render(turns))
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from klbudget.base.tiny import make_tiny_model

    path = tmp_path_factory.mktemp("tiny") / "model"
    return make_tiny_model(path, chat_texts(), vocab_size=320, n_layer=2, n_embd=32, n_head=2)


@pytest.fixture(scope="session")
def fitted_tiny_model(tmp_path_factory) -> Path:
    """The tiny model after a few training steps: peaked, text-like predictions."""
    from klbudget.base.tiny import fit_tiny_model, make_tiny_model

    path = tmp_path_factory.mktemp("fitted") / "model"
    make_tiny_model(path, chat_texts(), vocab_size=320, n_layer=2, n_embd=32, n_head=2)
    return fit_tiny_model(path, chat_texts(), steps=60)
