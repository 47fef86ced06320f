"""Agent steps keep the base's last hidden state (d numbers) instead of V log-probs, and the
PPO update recomputes log β from it: the same numbers as the rollout's, far less memory.
The base's attention reads only the filled part of its preallocated cache."""

from __future__ import annotations

import torch

from klbudget.agent.policy import Actor, Critic
from klbudget.agent.ppo import HiddenLogp
from klbudget.agent.rollout import run_episode
from klbudget.agent.trainer import cat_batches
from tests.envs.test_chat_env import make_env


def _episode(env, seed: int = 3):
    d, a = env.base.feature_dim + 2, env.base.num_actions
    torch.manual_seed(0)
    actor = Actor(d, a)
    with torch.no_grad():
        actor.z.weight.normal_(0, 0.3)
    g = torch.Generator().manual_seed(0)
    return run_episode(env, actor, Critic(d, 8), budget=5.0, mode="expected", budget_scale=5.0,
                       generator=g, seed=seed)  # fmt: skip


def test_recomputed_base_logp_equals_the_rollouts(fitted_tiny_model, monkeypatch):
    env = make_env(fitted_tiny_model, n=4, length=60)
    compact = _episode(env)
    assert isinstance(compact.batch.base_logp, HiddenLogp)
    assert compact.batch.base_logp.hidden.shape == (compact.agent_steps, env.base.hidden_size)
    monkeypatch.setattr(env.base, "logp_head", lambda: None)  # what a base without one does
    full = _episode(env)
    assert isinstance(full.batch.base_logp, torch.Tensor)
    assert torch.equal(compact.batch.actions, full.batch.actions)  # the same episode
    rows = torch.arange(compact.agent_steps)
    torch.testing.assert_close(compact.batch.base_logp[rows], full.batch.base_logp, atol=2e-5,
                               rtol=0)  # fmt: skip
    # Two episodes' batches concatenate in compact form.
    monkeypatch.undo()
    both = cat_batches([compact.batch, _episode(env, seed=4).batch])
    assert isinstance(both.base_logp, HiddenLogp) and len(both.base_logp) == len(both.actions)


def test_a_base_whose_logits_are_not_its_last_state_keeps_full_log_probs(fitted_tiny_model):
    env = make_env(fitted_tiny_model, n=2, length=40)
    with torch.no_grad():  # an output bias: the hidden state alone no longer gives the logits
        head = env.base.model.get_output_embeddings()
        head.bias = torch.nn.Parameter(torch.linspace(-3, 3, head.weight.shape[0]))
    env.base._head_exact = None  # decided again on the next step
    ep = _episode(env)
    assert env.base.logp_head() is None
    assert isinstance(ep.batch.base_logp, torch.Tensor)


def test_prefix_attention_matches_the_models_own_attention(fitted_tiny_model):
    """The base reads only the filled part of its preallocated cache: its log-probs at
    every step equal those of the stock model over a masked static cache."""
    from transformers import StaticCache

    from klbudget.base.hf import PREFIX_ATTENTION, HFBase, load_local

    base = HFBase(fitted_tiny_model)
    ref, _ = load_local(fitted_tiny_model)
    assert base.model.config._attn_implementation == PREFIX_ATTENTION
    assert ref.config._attn_implementation != PREFIX_ATTENTION
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, base.vocab_size, (3, 7), generator=g)
    cap = 30
    got = [base.reset(ids, capacity=cap).logp]
    cache = StaticCache(config=ref.config, max_cache_len=cap)
    out = ref(input_ids=ids, past_key_values=cache, use_cache=True, cache_position=torch.arange(7))
    want = [out.logits[:, -1].log_softmax(-1)]
    for t in range(7, cap):
        tok = torch.randint(0, base.vocab_size, (3,), generator=g)
        got.append(base.step(tok).logp)
        out = ref(
            input_ids=tok[:, None],
            past_key_values=cache,
            use_cache=True,
            cache_position=torch.arange(t, t + 1),
        )
        want.append(out.logits[:, -1].log_softmax(-1))
    torch.testing.assert_close(torch.stack(got), torch.stack(want), rtol=0, atol=1e-5)
    whole = torch.randint(0, base.vocab_size, (2, 12), generator=g)
    logp = ref(input_ids=whole).logits[:, :-1].log_softmax(-1)
    torch.testing.assert_close(
        base.score(whole), logp.gather(-1, whole[:, 1:, None]).squeeze(-1), rtol=0, atol=1e-5
    )


def test_a_windowed_model_keeps_its_own_attention(tmp_path, tiny_model):
    """Prefix attention builds no mask, so a sliding-window model must keep the library's
    own attention (which applies the window); its log-probs then match a full forward."""
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    from klbudget.base.hf import PREFIX_ATTENTION, HFBase

    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    cfg = MistralConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, sliding_window=4,
    )  # fmt: skip
    torch.manual_seed(0)
    MistralForCausalLM(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    base = HFBase(tmp_path)
    assert base.model.config._attn_implementation != PREFIX_ATTENTION
    ids = torch.randint(0, base.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    got = base.reset(ids[:, :6], capacity=12).logp
    for t in range(6, 9):
        got = base.step(ids[:, t]).logp
    want = base.model(input_ids=ids).logits[:, -1].log_softmax(-1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
