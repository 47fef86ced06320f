"""Commands refuse an --out that holds files unless --force, and usage errors are one line
with a pointer to --help; nothing is written either way."""

from __future__ import annotations

import pytest

from klbudget.cli import main


def _snapshot(folder):
    return sorted((p.name, p.stat().st_size) for p in folder.iterdir())


@pytest.mark.parametrize(
    "argv",
    [
        ["theory", "--out", "{out}"],
        ["world", "build", "--out", "{out}"],
        ["models", "smollm2", "--out", "{out}"],
    ],
    ids=["theory", "world", "models"],
)
def test_an_out_holding_files_is_refused(tmp_path, capsys, argv):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    code = main([a.format(out=out) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "already holds files" in err[0]
    assert _snapshot(out) == before and (out / "notes.txt").read_text() == "mine"


def test_usage_errors_are_one_line_with_a_hint(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2
    assert len(err) == 1 and "see klbudget eval --help" in err[0]


def test_a_negative_theory_seed_is_refused(tmp_path, capsys):
    out = tmp_path / "lab"
    assert main(["theory", "--out", str(out), "--seed", "-1"]) == 2
    assert "--seed must be >= 0" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("setting", ["env.n_envs=-1", "ppo.clip=nan", "budget.mode=never"])
def test_demo_checks_agent_settings_before_building_anything(tmp_path, capsys, setting):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--set", setting, "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and setting.split("=")[0] in err[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_an_error_under_a_progress_bar_gets_its_own_line(capsys):
    from tqdm.auto import tqdm

    from klbudget.cli import _run
    from klbudget.config import ConfigError

    def command():
        bar = tqdm(total=10, desc="eval")
        bar.update(3)
        raise ConfigError("the reward function returned 2 values for 3 replies")

    assert _run(command) == 2
    err = capsys.readouterr().err
    last = err.strip().replace("\r", "\n").splitlines()[-1]
    assert last == "klbudget: error: the reward function returned 2 values for 3 replies"
    assert "\nklbudget: error:" in err  # after the bar's line, not on it
