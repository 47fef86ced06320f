"""A base that reads a fixed context first (an in-context imitator), and a base run in
another precision: each is exactly the model it claims to be, and the budget holds against
it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from klbudget.agent.policy import Critic
from klbudget.agent.rollout import run_episode
from klbudget.base.hf import CONTEXT_FILE, HFBase, ModelLoadError
from klbudget.cli import main
from klbudget.envs.chat import ChatEnv
from tests.agent.test_budget_breaking import agent_budget_trace, greedy_actor
from tests.envs.test_chat_env import SHORT, constant_sentiment

CONTEXT = "Teacher: Hello there, how are you today?\n\nStudent: I love this, thank you so much!\n\n"


def _context_folder(tmp_path, model, context=CONTEXT):
    folder = tmp_path / "imitator"
    folder.mkdir()
    (folder / CONTEXT_FILE).write_text(json.dumps({"model": str(model), "context": context}))
    return folder


@pytest.mark.parametrize("capacity", [None, 40])
def test_a_context_base_is_the_model_reading_the_context_first(tmp_path, tiny_model, capacity):
    plain, ctx = HFBase(tiny_model), HFBase(_context_folder(tmp_path, tiny_model))
    tok = plain.tokenizer
    cids = tok(CONTEXT, add_special_tokens=False)["input_ids"]
    pids = tok("Student: Hi!\n\nTeacher:", add_special_tokens=False)["input_ids"]
    assert ctx.context_len == len(cids) and ctx.max_length == plain.max_length - len(cids)
    whole = torch.tensor([cids + pids] * 3)
    a = plain.reset(whole, capacity=None if capacity is None else len(cids) + capacity)
    b = ctx.reset(torch.tensor([pids] * 3), capacity=capacity)
    torch.testing.assert_close(b.logp, a.logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.features, a.features, atol=1e-5, rtol=0)
    for t in (5, 17, 3, 99):
        a, b = (
            plain.step(torch.tensor([t, t + 1, t + 2])),
            ctx.step(torch.tensor([t, t + 1, t + 2])),
        )
        torch.testing.assert_close(b.logp, a.logp, atol=1e-5, rtol=0)
    seq = torch.tensor([pids + [5, 17, 3]] * 2)
    full = plain.score(torch.tensor([cids + pids + [5, 17, 3]] * 2))[:, len(cids) :]
    torch.testing.assert_close(ctx.score(seq), full, atol=1e-5, rtol=0)
    # The context matters: without it the same transcript is scored differently.
    assert (plain.score(seq) - full).abs().max() > 1e-3


def test_a_bad_context_file_is_one_clear_error(tmp_path, tiny_model):
    folder = _context_folder(tmp_path, tiny_model)
    (folder / CONTEXT_FILE).write_text("{not json")
    with pytest.raises(ModelLoadError, match="not a context file"):
        HFBase(folder)
    (folder / CONTEXT_FILE).write_text(json.dumps({"model": str(tmp_path / "none"), "context": ""}))
    with pytest.raises(ModelLoadError, match="no model folder"):
        HFBase(folder)


@pytest.mark.slow
def test_base_context_builds_an_imitator_with_its_heldout_report(tmp_path, capsys, tiny_model):
    world = tmp_path / "world"
    assert main(["world", "build", "--out", str(world), "--set", "n_train=8", "--set",
                 "n_heldout=3", "--set", "quiet_students=0"]) == 0  # fmt: skip
    out = tmp_path / "ctx"
    assert main(["base", "context", "--model", str(tiny_model), "--world", str(world),
                 "--shots", "1", "--heldout", "2", "--out", str(out)]) == 0  # fmt: skip
    meta = json.loads((out / "imitator.json").read_text())
    assert meta["shots"] == 1 and meta["context_tokens"] > 0
    held = meta["heldout"]
    # The same held-out tokens without the context: τ's side is the same to the bit, the
    # imitator's is not (it read other text first).
    zero = tmp_path / "zero"
    assert main(["base", "context", "--model", str(tiny_model), "--world", str(world),
                 "--shots", "0", "--heldout", "2", "--out", str(zero)]) == 0  # fmt: skip
    held0 = json.loads((zero / "imitator.json").read_text())["heldout"]
    assert held0["teacher_tokens"] == held["teacher_tokens"] > 0
    assert held0["tau_teacher_entropy"] == held["tau_teacher_entropy"]
    assert abs(held0["imitator_teacher_logloss"] - held["imitator_teacher_logloss"]) > 1e-3
    assert json.loads((zero / CONTEXT_FILE).read_text())["context"] == ""
    context = json.loads((out / CONTEXT_FILE).read_text())["context"]
    assert context.count("Student: Hi! Can you help me with something?") == 1
    assert HFBase(out).context_len == meta["context_tokens"]
    capsys.readouterr()
    # Refusals: an existing folder, too many shots, a context longer than the model's
    # positions (GPT-2's 1,024). One line, exit 2, nothing written.
    cases = [(["--out", str(out), "--shots", "1"], "already exists"),
             (["--out", str(tmp_path / "b"), "--shots", "9"], "--shots must be"),
             (["--out", str(tmp_path / "b"), "--shots", "8"], "exceed the model's")]  # fmt: skip
    for args, message in cases:
        rc = main(["base", "context", "--model", str(tiny_model), "--world", str(world), *args])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, tiny_model):
    """A random 2-layer Llama with the tiny model's tokenizer (int8 quantizes nn.Linear)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("llama") / "model"
    torch.manual_seed(0)
    tok_files = [p for p in tiny_model.iterdir() if p.name.startswith(("tokenizer", "special"))]
    cfg = LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(out)
    for f in tok_files:
        shutil.copy(f, out / f.name)
    return out


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_other_precisions_move_beta_a_little_and_the_budget_holds_against_it(tiny_llama, precision):
    ref, base = HFBase(tiny_llama), HFBase(tiny_llama, precision=precision)
    ids = torch.tensor([ref.tokenizer("Student: Hi!\n\nTeacher:")["input_ids"]] * 4)
    a, b = ref.reset(ids, capacity=40), base.reset(ids, capacity=40)
    gap = float((a.logp - b.logp).abs().max())
    assert 0 < gap < 0.1  # another model, but close
    env = ChatEnv(base, base.tokenizer, constant_sentiment, n_envs=4, length=70, chat=SHORT)
    obs_dim = base.feature_dim + 2
    g = torch.Generator().manual_seed(0)
    for seed, budget in enumerate((0.5, 3.0)):
        actor = greedy_actor(obs_dim, base.num_actions, seed, 10.0)
        ep = run_episode(env, actor, Critic(obs_dim, 16), budget=budget, mode="expected",
                         budget_scale=10.0, generator=g, seed=seed)  # fmt: skip
        for rec in ep.records:
            assert sum(kl for _, kl, _ in agent_budget_trace(rec, budget)) <= budget + 1e-4


def test_int8_refuses_a_model_without_linear_layers(tiny_model):
    with pytest.raises(ModelLoadError, match="int8 needs"):
        HFBase(tiny_model, precision="int8")
