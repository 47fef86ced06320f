"""Ensembles on a hand-built 3-member, 3-token class: ν_α, help mass, posterior update, ξ."""

from __future__ import annotations

import math

import pytest
import torch

from klbudget.base.ensemble import EnsembleBase, demo_log_prior
from klbudget.base.protocol import WRITER_AGENT, WRITER_DEMONSTRATOR, WRITER_ENV, BaseStep

# Each member predicts the same next-token distribution at every position.
P = {
    "A": [0.5, 0.3, 0.2],
    "B": [0.1, 0.6, 0.3],
    "C": [0.2, 0.2, 0.6],
}


class Fixed:
    """A member whose next-token distribution never changes; it counts its steps."""

    vocab_size = num_actions = 3
    feature_dim = 2
    max_length = 100

    def __init__(self, probs: list[float], tag: float) -> None:
        self.logp = torch.tensor(probs).log()
        self.tag = tag
        self.steps = 0

    def _describe(self, n: int) -> BaseStep:
        return BaseStep(
            env_logits=torch.full((n, 3), self.tag),
            logp=self.logp.expand(n, -1).clone(),
            features=torch.full((n, 2), self.tag),
        )

    def reset(self, input_ids, capacity=None):
        self.steps = 0
        return self._describe(input_ids.shape[0])

    def step(self, tokens):
        self.steps += 1
        return self._describe(tokens.shape[0])

    def score(self, input_ids):
        return self.logp[input_ids[:, 1:]]


def members() -> list[Fixed]:
    return [Fixed(P[k], float(i)) for i, k in enumerate("ABC")]


def probs(step: BaseStep) -> list[list[float]]:
    return step.logp.exp().tolist()


def test_min_and_help_mass_by_hand() -> None:
    base = EnsembleBase(members(), kind="pessimistic", alpha=0.2)
    assert base.num_actions == 4 and base.vocab_size == 3
    s = base.reset(torch.zeros(2, 1, dtype=torch.long))
    # All plausible (weights 1/3 ≥ 0.2): ν = (0.1, 0.2, 0.2), help = 1 − 0.5 = 0.5.
    for row in probs(s):
        assert row == pytest.approx([0.1, 0.2, 0.2, 0.5], abs=1e-6)
    # Student logits and agent features come from member 0.
    assert torch.equal(s.env_logits, torch.zeros(2, 3))
    assert torch.equal(s.features, torch.zeros(2, 2))


def test_demonstrator_tokens_update_the_plausible_set_agent_tokens_do_not() -> None:
    base = EnsembleBase(members(), kind="pessimistic", alpha=0.2)
    base.reset(torch.zeros(3, 1, dtype=torch.long))
    # Row 0: the demonstrator wrote token 0; row 1: the agent wrote it; row 2: the student.
    base.observe(torch.tensor([WRITER_DEMONSTRATOR, WRITER_AGENT, WRITER_ENV]))
    s = base.step(torch.tensor([0, 0, 0]))
    # Posterior of row 0 ∝ (0.5, 0.1, 0.2) → (0.625, 0.125, 0.25): B falls below α = 0.2.
    w = base.log_w.exp()
    assert w[0].tolist() == pytest.approx([0.625, 0.125, 0.25])
    assert w[1].tolist() == pytest.approx([1 / 3] * 3)
    assert w[2].tolist() == pytest.approx([1 / 3] * 3)
    assert base.plausible.tolist() == [[True, False, True], [True] * 3, [True] * 3]
    # ν over {A, C} = (0.2, 0.2, 0.2), help 0.4; the other rows keep all three members.
    assert probs(s)[0] == pytest.approx([0.2, 0.2, 0.2, 0.4], abs=1e-6)
    assert probs(s)[1] == pytest.approx([0.1, 0.2, 0.2, 0.5], abs=1e-6)
    # A second demonstrator token 2: ∝ (0.625·0.2, 0.125·0.3, 0.25·0.6) = (0.125, 0.0375, 0.15).
    base.observe(torch.tensor([WRITER_DEMONSTRATOR, WRITER_ENV, WRITER_ENV]))
    base.step(torch.tensor([2, 1, 1]))
    z = 0.125 + 0.0375 + 0.15
    assert base.log_w[0].exp().tolist() == pytest.approx([0.125 / z, 0.0375 / z, 0.15 / z])


def test_teacher_mode_counts_the_agents_tokens() -> None:
    base = EnsembleBase(members(), kind="pessimistic", alpha=0.2, update_on="teacher")
    base.reset(torch.zeros(1, 1, dtype=torch.long))
    base.observe(torch.tensor([WRITER_AGENT]))
    base.step(torch.tensor([1]))
    # ∝ (0.3, 0.6, 0.2) / 1.1
    assert base.log_w[0].exp().tolist() == pytest.approx([0.3 / 1.1, 0.6 / 1.1, 0.2 / 1.1])


def test_bayes_mixture_is_the_posterior_average() -> None:
    base = EnsembleBase(members(), kind="bayes", alpha=0.2)
    assert base.num_actions == 3
    base.reset(torch.zeros(1, 1, dtype=torch.long))
    base.observe(torch.tensor([WRITER_DEMONSTRATOR]))
    s = base.step(torch.tensor([0]))
    w = [0.625, 0.125, 0.25]
    expect = [sum(w[m] * P[k][v] for m, k in enumerate("ABC")) for v in range(3)]
    assert probs(s)[0] == pytest.approx(expect, abs=1e-6)


def test_demo_prior_and_alpha_checks() -> None:
    # Losses 0.40 and 0.41 nats/token over 100 tokens: weights ∝ (e^-40, e^-41).
    lp = demo_log_prior([0.40, 0.41], 100)
    assert lp.exp().tolist() == pytest.approx([1 / (1 + math.e**-1), 1 / (1 + math.e)])
    base = EnsembleBase(members()[:2], kind="pessimistic", alpha=0.3, log_prior=lp)
    base.reset(torch.zeros(1, 1, dtype=torch.long))
    # Member 1 has weight 0.269 < 0.3: out from the start; ν = member 0, help 0.
    assert base.plausible.tolist() == [[True, False]]
    with pytest.raises(ValueError, match="alpha"):
        EnsembleBase(members(), kind="pessimistic", alpha=0.5)  # > 1/K: could empty M^α
    with pytest.raises(ValueError, match="vocabulary"):
        odd = Fixed([0.5, 0.5], 0.0)
        odd.vocab_size = 2
        EnsembleBase([members()[0], odd], kind="bayes", alpha=0.1)


def test_impossible_demonstrator_token_keeps_weights() -> None:
    zero = Fixed([1.0, 0.0, 0.0], 0.0)
    other = Fixed([1.0, 0.0, 0.0], 1.0)
    base = EnsembleBase([zero, other], kind="pessimistic", alpha=0.1)
    base.reset(torch.zeros(1, 1, dtype=torch.long))
    base.observe(torch.tensor([WRITER_DEMONSTRATOR]))
    base.step(torch.tensor([1]))  # every member said 0: no evidence, no NaN
    assert base.log_w.exp().tolist() == [pytest.approx([0.5, 0.5])]
