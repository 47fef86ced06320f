"""KL-budgeted generation: the budget holds on every sequence, and its two limits are the
base (B = 0) and the proposal (B = ∞), as distributions that `generate` really samples."""

from __future__ import annotations

import math

import pytest
import torch

from klbudget.core.mixture import fixed_kl_mixture, kl_divergence
from klbudget.generation import BudgetError, KLBudgetProcessor, budgeted_generate


@pytest.fixture(scope="module")
def pair(tiny_model, fitted_tiny_model):
    """(proposal, base, tokenizer): a random model proposes, a fitted one is the base."""
    from klbudget.base.hf import load_local

    proposal, tok = load_local(tiny_model)
    base, _ = load_local(fitted_tiny_model)
    return proposal.eval(), base.eval(), tok


def _prompts(tok, texts):
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


@torch.no_grad()
def _full_log_probs(model, ids, mask):
    """Next-token log-probs at every position, from one forward pass without a cache."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    return torch.log_softmax(logits.double(), -1)


def test_budget_holds_on_every_one_of_1000_sequences_and_matches_a_recomputation(pair):
    proposal, base, tok = pair
    budget = 1.5
    ids, mask = _prompts(tok, ["Teacher: Hello"] * 250)
    torch.manual_seed(0)
    outs = [
        budgeted_generate(
            proposal,
            base,
            ids,
            attention_mask=mask,
            budget=budget,
            max_new_tokens=12,
            pad_token_id=tok.eos_token_id,
        )
        for _ in range(4)
    ]
    kl = torch.cat([o.kl for o in outs])
    assert kl.numel() == 1000
    assert (kl <= budget).all(), f"over budget: max {kl.max().item()}"
    # The budget binds (the proposal is far from the base): the test could have failed.
    assert (kl > 0.99 * budget).float().mean() > 0.5
    # Recompute each sequence's spending from scratch (full forward passes, no cache): the
    # processor's incremental base must have seen the same distributions.
    out = outs[0]
    seq = out.sequences
    full_mask = torch.cat([mask, torch.ones(seq.shape[0], seq.shape[1] - mask.shape[1])], 1)
    full_mask = full_mask.long()
    log_a = _full_log_probs(proposal, seq, full_mask)
    log_b = _full_log_probs(base, seq, full_mask)
    t0 = ids.shape[1] - 1
    left = torch.full((seq.shape[0],), budget, dtype=torch.float64)
    spent = torch.zeros_like(left)
    for j in range(seq.shape[1] - ids.shape[1]):
        live = j < out.new_tokens
        mix = fixed_kl_mixture(log_a[:, t0 + j], log_b[:, t0 + j], torch.where(live, left, 0.0))
        step = torch.where(live, kl_divergence(mix.log_x, log_b[:, t0 + j]), 0.0)
        spent += step
        left = (left - step).clamp(min=0.0)
    torch.testing.assert_close(spent, out.kl, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("budget", [0.0, math.inf])
def test_limits_are_the_base_and_the_proposal_step_by_step(pair, budget):
    """Fed a left-padded batch token by token, the processor returns log base (B = 0) or
    log proposal (B = ∞) at every step, as a cache-free forward pass computes them."""
    proposal, base, tok = pair
    ids, mask = _prompts(tok, ["Teacher: Hello there, how are", "Student: I"])
    torch.manual_seed(1)
    seq = torch.cat([ids, torch.randint(0, 300, (2, 6))], 1)
    full_mask = torch.cat([mask, torch.ones(2, 6, dtype=mask.dtype)], 1)
    want = _full_log_probs(base if budget == 0 else proposal, seq, full_mask)
    scores_all = _full_log_probs(proposal, seq, full_mask).float()
    proc = KLBudgetProcessor(base, budget, attention_mask=mask, eos_token_id=[])
    for j in range(7):
        t = ids.shape[1] + j
        got = proc(seq[:, :t], scores_all[:, t - 1])
        torch.testing.assert_close(got.double(), want[:, t - 1].float().double(), atol=2e-5, rtol=0)
    assert proc.kl_spent.tolist() == [0.0, 0.0] if budget == 0 else proc.kl_spent.min() > 0


@pytest.mark.parametrize("budget", [0.0, math.inf])
def test_generate_samples_the_limit_distributions(pair, budget):
    """4,000 one-token draws: each of the 8 likeliest tokens' frequency within 5 standard
    errors of its probability under the base (B = 0) or the proposal (B = ∞). A warper
    left in place (generate's default top-k = 50) would empty the rest bucket."""
    proposal, base, tok = pair
    ids, mask = _prompts(tok, ["Teacher: Hello"] * 4000)
    torch.manual_seed(2)
    out = budgeted_generate(
        proposal,
        base,
        ids,
        attention_mask=mask,
        budget=budget,
        max_new_tokens=1,
        pad_token_id=tok.eos_token_id,
    )
    drawn = out.sequences[:, -1]
    p = _full_log_probs(base if budget == 0 else proposal, ids[:1], mask[:1])[0, -1].exp()
    top = p.argsort(descending=True)[:8]
    buckets = [p[i].item() for i in top] + [1 - p[top].sum().item()]
    freqs = [(drawn == i).float().mean().item() for i in top]
    freqs.append(1 - sum(freqs))
    for q, f in zip(buckets, freqs, strict=True):
        se = math.sqrt(q * (1 - q) / 4000) + 1e-3
        assert abs(f - q) < 5 * se, (q, f)


def test_bad_arguments_are_refused(pair):
    proposal, base, tok = pair
    ids, mask = _prompts(tok, ["Teacher: Hello"])
    with pytest.raises(BudgetError, match="budget must be"):
        KLBudgetProcessor(base, -1.0)
    with pytest.raises(BudgetError, match="fraction"):
        KLBudgetProcessor(base, 1.0, fraction=0.0)
    with pytest.raises(BudgetError, match="sets top_k"):
        budgeted_generate(proposal, base, ids, budget=1.0, top_k=50)
    proc = KLBudgetProcessor(base, 1.0)
    scores = torch.zeros(1, base.config.vocab_size)
    proc(ids, scores)
    with pytest.raises(BudgetError, match="one token per call"):
        proc(ids, scores)  # the same length again: not the next token of this sequence


def test_a_smaller_fraction_spreads_the_budget(pair):
    proposal, base, tok = pair
    ids, mask = _prompts(tok, ["Teacher: Hello"] * 64)
    spent_first = {}
    for fraction in (1.0, 0.2):
        proc = KLBudgetProcessor(base, 2.0, fraction=fraction, attention_mask=mask)
        scores = _full_log_probs(proposal, ids, mask)[:, -1].float()
        proc(ids, scores)
        spent_first[fraction] = proc.kl_spent.mean().item()
    assert spent_first[0.2] <= 0.2 * 2.0 + 1e-9 < spent_first[1.0]
