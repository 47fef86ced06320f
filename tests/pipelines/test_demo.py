"""The demo pipeline end to end at a tiny scale: world → imitator → agent → eval → report."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest

from klbudget.cli import main
from klbudget.runs.folder import from_jsonable

pytestmark = pytest.mark.slow


def test_demo_tiny(tmp_path, capsys, monkeypatch):
    # Relative --out and --cache, as the README's command has them: the run folders' configs
    # must still name their model, members and world by absolute paths (checked below).
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "demo"
    rc = main([
        "demo", "--out", "demo", "--budgets", "4", "--cache", "cache",
        "--eval-episodes", "4",
        "--world-set", "n_train=40", "--world-set", "n_heldout=6",
        "--imitator-set", "steps=4", "--imitator-set", "n_embd=32", "--imitator-set", "n_head=2",
        "--imitator-set", "vocab_size=400", "--imitator-set", "eval_transcripts=4",
        "--imitator-set", "probe_samples=1", "--imitator-set", "batch_size=4",
        "--set", "env.n_envs=4", "--set", "env.length=120", "--set", "train.total_agent_steps=200",
        "--set", "ppo.tokens_per_update=100", "--set", "ppo.minibatch=50",
        # A uniform prior keeps the 4-step imitators plausible beside τ (their held-out loss
        # would otherwise leave τ alone in M^α, and ν_α = τ asks for no help).
        "--set", "base.demo_tokens=0",
        "--bases", "single,bayes,pessimistic", "--ensemble", "2", "--help-fractions", "0.5",
    ])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "report:" in text and "agent_B4" in text and "pessimistic_B4" in text
    assert "help rate of the pessimistic base" in text
    # The empty-turn prior: β, the other member and ν_α on the same transcripts.
    assert "cost of the n-th empty teacher turn" in text
    prior = json.loads((out / "prior.json").read_text())
    assert {r["base"] for r in prior} == {"β (member 0)", "member 1", "τ", "ν_α + help"}
    by_base = {(r["base"], r["first_tau"]): from_jsonable(r["by_n"]) for r in prior}
    assert by_base[("τ", 0)]  # (after 3 τ turns, 120 tokens leave no room for silence)
    for first in (0, 3):
        # τ never writes an empty turn, and with τ in the class neither does ν_α.
        assert all(row["median"] == math.inf for row in by_base[("τ", first)])
        for n, row in enumerate(by_base[("ν_α + help", first)]):
            # ν_α ≤ every plausible member pointwise, so its cost is at least theirs.
            members = [by_base[(b, first)][n]["median"] for b in ("β (member 0)", "member 1")]
            assert row["median"] >= min(members) - 1e-6
    assert (out / "report.html").is_file()
    metrics = json.loads((out / "agent_B4" / "eval" / "metrics.json").read_text())
    assert set(metrics["eval"]) == {
        f"{p}_L{n}" for p in ("agent", "base", "tau") for n in (60, 120)
    }
    # τ acting: never an empty turn, never outside its own support, KL(τ‖τ) = 0.
    tau = metrics["eval"]["tau_L120"]
    assert tau["empty_turn_frac"]["mean"] == 0.0
    assert tau["tau_support"]["violation_share"] == 0.0
    assert tau["tau_support"]["judged_turns"] > 0
    assert abs(tau["tau_support"]["kl_in_support_mean"]) < 1e-5
    assert tau["kl_to_base"]["over_budget_frac"] is None  # τ plays without a budget
    # Expected-mode budget: no evaluation episode of the agent exceeds 4 nats.
    assert metrics["eval"]["agent_L120"]["kl_to_base"]["exact_max"] <= 4 + 1e-4
    assert metrics["eval"]["base_L120"]["kl_to_base"]["exact_max"] == 0.0

    # The pessimistic base: help is taken, every agent run keeps its budget against its base.
    pess = json.loads((out / "pessimistic_B4" / "eval" / "metrics.json").read_text())["eval"]
    assert pess["base_L120"]["help_rate"] > 0
    assert pess["tau_L120"]["tau_support"]["violation_share"] == 0.0
    bayes = json.loads((out / "bayes_B4" / "eval" / "metrics.json").read_text())["eval"]
    assert bayes["base_L120"]["help_rate"] is None  # no help action in the mixture
    for ev in (pess, bayes):
        assert ev["agent_L120"]["kl_to_base"]["exact_max"] <= 4 + 1e-4
    study = json.loads((out / "help_study.json").read_text())
    assert [r["fraction"] for r in study] == [0.5] and study[0]["help_rate"] > 0
    assert "Help rate and demonstration data" in (out / "report.html").read_text()
    # Calibration on held-out demonstrations, teacher-forced: τ (the truth) beats the barely
    # trained imitator; the pessimistic base with help is scored too.
    cal = metrics["calibration"]
    assert cal["tau"]["tokens"] == cal["base"]["tokens"] == cal["agent"]["tokens"] > 0
    assert cal["tau"]["loss"] < cal["base"]["loss"]
    assert cal["agent_minus_base"] is not None
    pess_cal = json.loads((out / "pessimistic_B4" / "eval" / "metrics.json").read_text())
    assert pess_cal["calibration"]["base"]["loss"] is not None
    # A run folder resumes and evaluates from any working directory.
    saved = tomllib.loads((out / "pessimistic_B4" / "config.toml").read_text())
    folders = [saved["model"]["path"], saved["base"]["world"]]
    folders += [m for m in saved["base"]["members"].split(",") if m != "tau"]
    assert len(folders) == 3 and "tau" in saved["base"]["members"].split(",")
    assert all(Path(f).is_absolute() and Path(f).is_dir() for f in folders), folders
