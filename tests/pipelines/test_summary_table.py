"""The demo's printed table reads as numbers: no "nan" where a column does not apply to a
run, no "-0.000"."""

from __future__ import annotations

import math

from klbudget.pipelines.demo import COLUMNS, summary_table


def _row(run: str, **values: float) -> dict:
    row = {"run": run, "policy": "agent", "L": 256}
    row.update({k: values.get(k, 0.0) for k, *_ in COLUMNS})
    return row


def test_no_nan_and_no_negative_zero():
    rows = [
        _row("agent_B20", help=math.nan, kl_tau=-0.0000001),
        _row("pessimistic_B20", help=0.033, kl_tau=1.25),
    ]
    text = summary_table(rows)
    assert "nan" not in text and "-0.000" not in text
    line = next(x for x in text.splitlines() if x.startswith("agent_B20"))
    assert line.split()[-1] == "—" and "0.033" in text
