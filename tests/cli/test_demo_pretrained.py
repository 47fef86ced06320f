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
