"""The demo's agents in parallel processes: the same learning as one after another, and a
worker's error reaches the caller."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from klbudget.base.hf import ModelLoadError
from klbudget.config import apply_overrides, preset
from klbudget.pipelines.demo import AgentJob, job_count, run_parallel, train_and_evaluate

pytestmark = pytest.mark.slow


def _jobs(model, out, seeds=(0, 1)) -> list[AgentJob]:
    jobs = []
    for seed in seeds:
        cfg = apply_overrides(preset("cpu"), [
            f"model.path={model}", 'env.prompt="Student: Hi!\\n\\nTeacher:"', "env.n_envs=4",
            "env.length=40", "ppo.tokens_per_update=64", "ppo.minibatch=32", "ppo.epochs=2",
            "train.total_agent_steps=200", "budget.total=4", f"train.seed={seed}",
        ]).validate()  # fmt: skip
        jobs.append(AgentJob(cfg, out / f"seed{seed}", f"seed {seed}", eval_episodes=2))
    return jobs


def _final(run) -> dict[str, torch.Tensor]:
    return load_file(sorted((run / "checkpoints").glob("step_*.safetensors"))[-1])


def test_parallel_jobs_learn_bit_for_bit_as_sequential_ones(tmp_path, fitted_tiny_model):
    old = torch.get_num_threads()
    try:  # one thread in both: the same floating-point reductions
        seq = _jobs(fitted_tiny_model, tmp_path / "seq")
        for job in seq:
            train_and_evaluate(job, None, threads=1, progress=False)
    finally:
        torch.set_num_threads(old)
    par = _jobs(fitted_tiny_model, tmp_path / "par")
    run_parallel(par, None, 2, threads=1, progress=False)
    for a, b in zip(seq, par, strict=True):
        want, got = _final(a.run), _final(b.run)
        assert want.keys() == got.keys() and len(want) > 0
        for key in want:
            assert torch.equal(want[key], got[key]), key
        # The evaluation's records too (its metrics file also holds training wall times).
        names = sorted(p.name for p in (a.run / "eval").glob("episodes_*.jsonl"))
        assert names
        for name in names:
            assert (a.run / "eval" / name).read_text() == (b.run / "eval" / name).read_text()
    # The two seeds learned different agents (the comparison above is not vacuous).
    w0, w1 = _final(seq[0].run), _final(seq[1].run)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)


def test_a_workers_error_is_raised_in_the_caller(tmp_path, fitted_tiny_model):
    good, bad = _jobs(fitted_tiny_model, tmp_path, seeds=(0, 1))
    bad = AgentJob(
        apply_overrides(bad.cfg, [f"model.path={tmp_path / 'missing'}"]), bad.run, "bad", 2
    )
    with pytest.raises(ModelLoadError, match="no model folder"):
        run_parallel([good, bad], None, 2, threads=1, progress=False)


def test_job_count(monkeypatch):
    assert job_count(1, 3) == 1
    assert job_count(5, 3) == 3
    for cores, agents, want in ((1, 3, 1), (2, 3, 3), (2, 12, 3), (16, 12, 12), (8, 1, 1)):
        monkeypatch.setattr("os.cpu_count", lambda c=cores: c)
        assert job_count(0, agents) == want, (cores, agents)
    with pytest.raises(ValueError, match="jobs must be >= 0"):
        job_count(-1, 3)


def test_agent_specs():
    from klbudget.config import ConfigError
    from klbudget.pipelines.demo import parse_agents

    assert parse_agents("single:10, pessimistic:20:5000,") == (
        ("single", 10.0, None),
        ("pessimistic", 20.0, 5000),
    )
    for bad in ("single", "single:", "single:ten", "single:10:1.5", "single:10:5:1", ":10"):
        with pytest.raises(ConfigError, match="KIND:BUDGET|BUDGET is a number"):
            parse_agents(bad)
