"""An exported agent generates without the training code: its first-step distribution is
the one the training stack plays, and its budget holds on every sequence."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from klbudget.cli import main
from klbudget.generation import AgentProcessor, BudgetError, export_agent

PROMPT = "Student: Hi!\n\nTeacher:"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fitted_tiny_model):
    tmp = tmp_path_factory.mktemp("export")
    run = tmp / "run"
    sets = [f"model.path={fitted_tiny_model}", "env.n_envs=4", "env.length=40",
            "ppo.tokens_per_update=64", "ppo.minibatch=32", "ppo.epochs=1",
            "train.total_agent_steps=64", "budget.total=3.0", "budget.mode=expected",
            "budget.ramp_fraction=0", f"env.prompt={PROMPT!r}".replace("'", '"')]  # fmt: skip
    argv = ["train", "--out", str(run), "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    # Move the head away from zero so that the agent's mixture is not the base itself.
    ckpt = next((run / "checkpoints").glob("*.safetensors"))
    state = load_file(ckpt)
    g = torch.Generator().manual_seed(0)
    for k in state:
        if k.startswith("actor.") and state[k].is_floating_point():
            state[k] = state[k] + 0.3 * torch.randn(state[k].shape, generator=g)
    save_file(state, ckpt)
    return run, tmp


def test_first_step_matches_the_training_stack(trained):
    from klbudget.agent.policy import observation
    from klbudget.compose import build_base
    from klbudget.config import load
    from klbudget.pipelines.evaluate import load_agent

    run, tmp = trained
    out = export_agent(run, tmp / "exported")
    proc, tok = AgentProcessor.from_pretrained(out)
    ids = tok([PROMPT] * 2, return_tensors="pt").input_ids
    got = proc(ids, torch.zeros(2, proc.base.config.vocab_size))
    cfg = load(run / "config.toml")
    base, _ = build_base(cfg)
    actor, _ = load_agent(run, cfg, base)
    step = base.reset(ids, capacity=cfg.env.length)
    left = torch.full((2,), cfg.budget.total)
    obs = observation(step.features, torch.full((2,), ids.shape[1] / cfg.env.length), left,
                      max(cfg.budget.total, 1.0))  # fmt: skip
    want = actor(obs, step.logp, left).log_x
    torch.testing.assert_close(got, want.float(), atol=1e-4, rtol=1e-4)
    assert (got - step.logp).abs().max() > 1e-3  # the agent is not the base


def test_generation_keeps_the_budget_on_every_sequence(trained):
    run, tmp = trained
    out = export_agent(run, tmp / "exported2")
    proc, tok = AgentProcessor.from_pretrained(out)
    from transformers import LogitsProcessorList

    ids = tok([PROMPT] * 200, return_tensors="pt").input_ids
    torch.manual_seed(0)
    proc.base.generate(ids, max_new_tokens=12, do_sample=True, top_k=0, top_p=1.0,
                       temperature=1.0, logits_processor=LogitsProcessorList([proc]),
                       pad_token_id=tok.eos_token_id)  # fmt: skip
    assert (proc.kl_spent <= 3.0 + 1e-9).all() and proc.kl_spent.max() > 0


def test_export_refuses_bad_input(trained, tmp_path, capsys):
    run, _ = trained
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    assert main(["export", str(run), "--out", str(tmp_path / "full")]) == 2
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "already holds files" in err[0] and "not a run folder" in err[1]
    assert not (tmp_path / "new").exists()
    with pytest.raises(BudgetError, match="not an exported agent"):
        AgentProcessor.from_pretrained(tmp_path / "full")
