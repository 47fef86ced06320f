"""`klbudget demo --base smollm2` at a tiny scale: the paper's format on a given model folder
(a tiny random model stands in for SmolLM2), its prior, the silence table, two agents, the
report; and its refusals, which write nothing."""

from __future__ import annotations

import json
import math

import pytest

from klbudget.cli import main

pytestmark = pytest.mark.slow

SMALL = [
    "--eval-episodes", "4", "--set", "env.n_envs=4", "--set", "env.length=360",
    "--set", "train.total_agent_steps=200", "--set", "ppo.tokens_per_update=100",
    "--set", "ppo.minibatch=50",
]  # fmt: skip


def test_pretrained_demo_tiny(tmp_path, capsys, tiny_model):
    out = tmp_path / "paper"
    rc = main(["demo", "--base", "smollm2", "--model", str(tiny_model), "--out", str(out),
               "--budgets", "4,8", *SMALL])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "does silence pay?" in text and "base acting alone: return" in text
    prior = json.loads((out / "prior.json").read_text())
    assert prior["episodes"] == 32 and prior["by_n"][0]["count"] == 32
    assert all(math.isfinite(row["median"]) and row["median"] >= 0 for row in prior["by_n"])
    silence = json.loads((out / "silence.json").read_text())
    assert [r["teacher"] for r in silence["fixed"]][0] == ""
    assert silence["silent_transcript"].startswith("\n\nStudent:")
    for budget in (4, 8):
        run = out / f"agent_B{budget}"
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        assert set(metrics["eval"]) == {f"{p}_L{n}" for p in ("agent", "base") for n in (180, 360)}
        # The budget holds on every evaluation episode (exact KL, strict mode).
        agent = metrics["eval"]["agent_L360"]
        assert agent["kl_to_base"]["exact_max"] <= budget + 1e-4
    assert (out / "report.html").is_file()
    # No world: the table has no τ columns.
    assert "∉supp τ" not in text.split("[4/4] report")[1].split("replies:")[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ensemble", "2"], "--ensemble belongs to the world's demo"),
        (["--agents", "pessimistic:20"], "kind single only"),
        (["--set", "env.length=200"], "needs more than the prompt's"),
        (["--model", "no/such/folder"], "no model folder there"),
    ],
)
def test_pretrained_demo_refuses_bad_input_before_writing(
    tmp_path, capsys, tiny_model, args, message
):
    out = tmp_path / "paper"
    model = [] if "--model" in args else ["--model", str(tiny_model)]
    rc = main(["demo", "--base", "smollm2", "--out", str(out), *model, *SMALL, *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_imitator_demo_tiny(tmp_path, capsys, tiny_model):
    """`--base smollm2-imitator`: the world without quiet students, two in-context imitators
    (seeds 0 and 1) as the class of ν_α without τ, an agent against each base, τ's verdicts."""
    out = tmp_path / "imitator"
    rc = main(["demo", "--base", "smollm2-imitator", "--model", str(tiny_model), "--shots", "1",
               "--out", str(out), "--cache", str(tmp_path / "cache"),
               "--agents", "single:4,pessimistic:4", "--ensemble", "2", "--no-tau",
               "--world-set", "n_train=8", "--world-set", "n_heldout=3", "--eval-episodes", "4",
               "--set", "env.n_envs=4", "--set", "env.length=160",
               "--set", "train.total_agent_steps=200", "--set", "ppo.tokens_per_update=100",
               "--set", "ppo.minibatch=50", "--set", "base.demo_tokens=0"])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert text.count("in-context imitator") == 1 and text.count("      incontext-") == 2
    world = json.loads((out / "world" / "world.json").read_text())
    assert world["config"]["quiet_students"] == 0
    prior = json.loads((out / "prior.json").read_text())
    by_base = {(r["base"], r["first_tau"]): r["by_n"] for r in prior}
    assert {b for b, _ in by_base} == {"β (member 0)", "member 1", "ν_α + help"}
    for n, row in enumerate(by_base[("ν_α + help", 0)]):
        members = [by_base[(b, 0)][n]["median"] for b in ("β (member 0)", "member 1")]
        assert row["median"] >= min(members) - 1e-6
    # Whether silence pays, with the student's replies sorted by the world's pools.
    silence = json.loads((out / "silence.json").read_text())
    assert silence["fixed"][0]["teacher"] == "" and silence["fixed"][0]["pools"] is not None
    assert "student/teacher: share of the student's replies" in text
    run = out / "pessimistic_B4"
    cfg = (run / "config.toml").read_text()
    assert "incontext-" in cfg and "tau" not in cfg.split("members")[1].splitlines()[0]
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert {"agent_L160", "base_L160", "tau_L160"} <= set(metrics["eval"])
    assert metrics["eval"]["agent_L160"]["kl_to_base"]["exact_max"] <= 4 + 1e-4
    assert "tau_support" in metrics["eval"]["agent_L160"]
