"""`klbudget frontier` end to end at a tiny scale, and the interpolation behind B*."""

from __future__ import annotations

import csv
import math

import pytest

from klbudget.cli import main
from klbudget.core.best_of_n import kl_bound
from klbudget.pipelines.frontier import budget_at_kl

pytestmark = pytest.mark.slow


def test_frontier_tiny(tmp_path, capsys):
    out = tmp_path / "frontier"
    rc = main([
        "frontier", "--out", str(out), "--cache", str(tmp_path / "cache"),
        "--budgets", "2,6", "--coefs", "1,0.01", "--targets", "3", "--n", "1,4",
        "--episodes", "8",
        "--world-set", "n_train=40", "--world-set", "n_heldout=6",
        "--imitator-set", "steps=4", "--imitator-set", "n_embd=32", "--imitator-set", "n_head=2",
        "--imitator-set", "vocab_size=400", "--imitator-set", "eval_transcripts=4",
        "--imitator-set", "probe_samples=1", "--imitator-set", "batch_size=4",
        "--set", "env.n_envs=4", "--set", "env.length=100", "--set", "train.total_agent_steps=400",
        "--set", "ppo.tokens_per_update=200", "--set", "ppo.minibatch=100",
    ])  # fmt: skip
    assert rc == 0
    assert "best_of_n" in capsys.readouterr().out
    with open(out / "frontier.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by = {(r["method"], float(r["value"])): r for r in rows}
    assert set(by) == {("base", 0.0), ("tau", 0.0), ("budget", 2.0), ("budget", 6.0),
                       ("fixed", 1.0), ("fixed", 0.01), ("adaptive", 3.0),
                       ("best_of_n", 1.0), ("best_of_n", 4.0)}  # fmt: skip
    # The hard budget holds on every evaluation episode (expected mode).
    for b in (2.0, 6.0):
        assert float(by[("budget", b)]["kl_max"]) <= b + 1e-4
        assert float(by[("budget", b)]["over_budget"]) == 0.0
    # β is its own base; τ never leaves its own support.
    assert float(by[("base", 0.0)]["kl_mean"]) == 0.0
    assert float(by[("tau", 0.0)]["tau_outside"]) == 0.0
    # Best-of-1 is β; best-of-n's KL is below the continuous bound and its max is log n.
    assert float(by[("best_of_n", 1.0)]["kl_mean"]) == 0.0
    assert 0.0 <= float(by[("best_of_n", 4.0)]["kl_mean"]) <= kl_bound(4) + 1e-12
    assert math.isclose(float(by[("best_of_n", 4.0)]["kl_max"]), math.log(4))
    # Penalty rows carry their equivalent budget and the share of episodes above it.
    for key in (("fixed", 1.0), ("fixed", 0.01), ("adaptive", 3.0)):
        assert by[key]["budget_equiv"] != "" and 0.0 <= float(by[key]["over_budget"]) <= 1.0
        assert float(by[key]["coef_final"]) >= 0.0
    assert float(by[("fixed", 1.0)]["coef_final"]) == 1.0  # a fixed λ never moves
    page = (out / "frontier.html").read_text()
    assert "data:image/png;base64," in page and "<script" not in page


def test_budget_at_kl_interpolates_or_falls_back_to_the_mean():
    rows = [{"method": "budget", "value": b, "kl_mean": k}
            for b, k in ((2, 1.0), (6, 3.0), (10, 7.0), (20, 6.5))]  # fmt: skip
    assert budget_at_kl(rows, 2.0) == pytest.approx(4.0)
    assert budget_at_kl(rows, 5.0) == pytest.approx(8.0)
    assert budget_at_kl(rows, 7.0) == pytest.approx(10.0)
    assert budget_at_kl(rows, 0.5) == 0.5  # below every budget agent's mean: K itself
    assert budget_at_kl(rows, 9.0) == 9.0  # above it too
    assert budget_at_kl([], 1.5) == 1.5
