"""`klbudget sweep` on a tiny grid: every cell trained and evaluated, a second run redoes
nothing, a cell whose evaluation was lost is redone alone, and Ray gives the same rows."""

from __future__ import annotations

import csv
import math

import pytest

from klbudget.cli import main
from klbudget.config import ConfigError
from klbudget.pipelines.sweep import bootstrap_ci, cells, load_grid

pytestmark = pytest.mark.slow

TINY = """preset = "demo"
eval_episodes = 4
[fixed]
"world.n_train" = 40
"world.n_heldout" = 6
"imitator.steps" = 4
"imitator.n_embd" = 32
"imitator.n_head" = 2
"imitator.vocab_size" = 400
"imitator.eval_transcripts" = 4
"imitator.probe_samples" = 1
"imitator.batch_size" = 4
"env.n_envs" = 4
"env.length" = 120
"train.total_agent_steps" = 200
"ppo.tokens_per_update" = 100
"ppo.minibatch" = 50
[grid]
"budget.total" = [2.0, 4.0]
"""


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    (tmp / "grid.toml").write_text(TINY)
    argv = ["sweep", "--grid", str(tmp / "grid.toml"), "--seeds", "2", "--cache",
            str(tmp / "cache")]  # fmt: skip
    assert main([*argv, "--out", str(tmp / "out")]) == 0
    return tmp, argv


def test_every_cell_is_trained_evaluated_and_summarized(swept):
    tmp, _ = swept
    rows = _rows(tmp / "out" / "sweep.csv")
    runs = {r["run"] for r in rows}
    assert runs == {f"total={b}-seed{s}" for b in ("2", "4") for s in (0, 1)}
    # Per run: agent, base and τ at L/2 and L.
    assert len(rows) == 4 * 3 * 2
    assert {r["policy"] for r in rows} == {"agent", "base", "tau"}
    summary = _rows(tmp / "out" / "summary.csv")
    assert len(summary) == 2 * 3 * 2 and {r["seeds"] for r in summary} == {"2"}
    for r in summary:
        for name in ("return", "kl"):
            lo, mean, hi = (float(r[f"{name}_lo"]), float(r[name]), float(r[f"{name}_hi"]))
            assert lo <= mean + 1e-12 and mean <= hi + 1e-12
    assert (tmp / "out" / "summary.png").stat().st_size > 1000
    # The seeds are seeds: the two runs of a cell trained on different episodes.
    a, b = (tmp / "out" / "runs" / f"total=4-seed{s}" / "episodes.jsonl" for s in (0, 1))
    assert a.read_text() != b.read_text()


def test_a_second_run_redoes_nothing_and_a_lost_evaluation_is_redone_alone(swept, capsys):
    tmp, argv = swept
    runs = tmp / "out" / "runs"
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp / "out")]) == 0
    assert "4 runs, 4 already done" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()} == stamps
    lost = runs / "total=2-seed1" / "eval"
    for p in lost.iterdir():
        p.unlink()
    assert main([*argv, "--out", str(tmp / "out")]) == 0
    assert (lost / "metrics.json").is_file()
    others = {p: t for p, t in stamps.items() if "total=2-seed1" not in str(p)}
    assert {p: p.stat().st_mtime_ns for p in others} == others


def test_ray_backend_gives_the_same_rows(swept):
    pytest.importorskip("ray")
    tmp, argv = swept
    assert main([*argv, "--out", str(tmp / "ray"), "--backend", "ray"]) == 0
    assert _rows(tmp / "ray" / "sweep.csv") == _rows(tmp / "out" / "sweep.csv")


def test_bootstrap_interval():
    mean, lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0, math.nan])
    assert mean == 2.5 and 1.0 <= lo < 2.5 < hi <= 4.0
    assert bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    assert all(math.isnan(x) for x in bootstrap_ci([math.nan]))


def test_bad_grids_are_refused_in_one_line(tmp_path, capsys):
    cases = {
        "missing.toml": None,
        "unknown.toml": 'colour = "red"\n[grid]\n"budget.total" = [1.0]\n',
        "empty.toml": '[grid]\n"budget.total" = []\n',
        "seed.toml": '[grid]\n"train.seed" = [1, 2]\n',
        "badkey.toml": '[grid]\n"budget.nope" = [1.0]\n',
    }
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        code = main(["sweep", "--grid", str(tmp_path / name), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, (name, err)
    assert not (tmp_path / "o").exists()


def test_cells_are_the_product_of_axes_and_seeds(tmp_path):
    (tmp_path / "g.toml").write_text('[grid]\n"env.length" = [64, 128]\n"budget.total" = [10.0]\n')
    got = [(c.name, c.seed) for c in cells(load_grid(tmp_path / "g.toml"), 2)]
    assert got == [
        ("length=64-total=10-seed0", 0),
        ("length=64-total=10-seed1", 1),
        ("length=128-total=10-seed0", 0),
        ("length=128-total=10-seed1", 1),
    ]


def test_variants_change_one_thing_at_a_time(tmp_path):
    (tmp_path / "g.toml").write_text(
        '[fixed]\n"budget.total" = 20.0\n"env.length" = 128\n'
        '[variants.as_is]\n'
        '[variants.mean]\n"reward.per" = "mean"\n'
        '[variants.short]\n"env.length" = 64\n"world.quiet_students" = 0.0\n'
    )  # fmt: skip
    grid = load_grid(tmp_path / "g.toml")
    got = cells(grid, 1)
    assert [c.name for c in got] == ["variant=as_is-seed0", "variant=mean-seed0",
                                     "variant=short-seed0"]  # fmt: skip
    values = [grid.values(c) for c in got]
    assert values[0] == {"budget.total": 20.0, "env.length": 128}
    assert values[1] == {"budget.total": 20.0, "env.length": 128, "reward.per": "mean"}
    assert values[2] == {"budget.total": 20.0, "env.length": 64, "world.quiet_students": 0.0}
    (tmp_path / "bad.toml").write_text("[variants]\nmean = 3\n")
    with pytest.raises(ConfigError, match="table of values"):
        load_grid(tmp_path / "bad.toml")
