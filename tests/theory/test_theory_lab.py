"""The experiments' invariants and the pipeline end to end, on the reduced setting."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from klbudget.theory.experiments import LabConfig, event_complexity, kl_versus_data
from klbudget.theory.lab import run


@pytest.fixture(scope="module")
def small_kl() -> dict:
    return kl_versus_data(LabConfig.small(), seed=0)


def test_kl_ordering_and_reach(small_kl: dict) -> None:
    for rec in small_kl["records"]:
        # least KL ≤ best deterministic policy's KL ≤ the construction's bound
        assert rec["kl_xi"] <= rec["kl_det"] + 1e-6
        assert rec["kl_det"] <= rec["bound"] + 1e-9
        assert math.isfinite(rec["bound"]) and rec["bound_event"] != "none"
        assert rec["kl_nu"] == math.inf and rec["kl_tau"] == math.inf
        assert rec["max_silent_nu"] == 0.0
    assert small_kl["row"]["ordering_holds"]


def test_switch_models_are_what_keeps_the_kl_small(small_kl: dict) -> None:
    stationary = small_kl["by_k"]["kl_stationary"][:, 0]
    assert np.all(np.diff(stationary) > 0)  # without switches the cost grows with k
    assert np.all(small_kl["by_k"]["kl_xi"][:, 0] < stationary)


def test_simplest_unprecedented_event_never_gets_simpler() -> None:
    res = event_complexity(LabConfig.small(), seed=0)
    overall = res["overall"]
    assert np.all(np.diff(overall) >= 0)  # the set of unprecedented events only shrinks
    for family in res["family"].values():
        assert np.all(overall <= family)
    assert overall[0] == 4.0  # time(1) = "one symbol so far": 2 + N(1) = 4 bits at k = 1


def test_run_writes_figures_and_table(tmp_path: Path) -> None:
    out = run(tmp_path / "lab", seed=1, progress=False, config=LabConfig.small())
    assert len(out["rows"]) == 4
    for name in out["figures"]:
        assert (tmp_path / "lab" / name).stat().st_size > 5_000
    table = (tmp_path / "lab" / "table.md").read_text()
    assert table.count("\n| ") == 5 and "klbudget theory --out" in table
    payload = json.loads((tmp_path / "lab" / "table.json").read_text())
    assert payload["seed"] == 1
    assert payload["rows"][0]["numbers"]["kl_pi_tau"] == "inf"
    assert payload["rows"][1]["numbers"]["kl_nu_all_inf"] is True
