"""Corrupt world manifests and model weights are refused in one line, never a traceback."""

from __future__ import annotations

import json
import shutil

import pytest

from klbudget.base.hf import ModelLoadError, load_local
from klbudget.cli import main
from klbudget.world.corpus import WorldError, load_world


@pytest.mark.parametrize(
    "text,needle",
    [
        ("{not json", "not a valid world manifest: Expecting property name"),
        ("[1, 2]", "not a valid world manifest: list indices"),
        ("{}", "not a valid world manifest: 'world_version'"),
        (json.dumps({"world_version": -7}), "has version -7"),
    ],
)
def test_a_corrupt_world_manifest_is_a_world_error(tmp_path, text, needle) -> None:
    (tmp_path / "world.json").write_text(text)
    with pytest.raises(WorldError, match=needle):
        load_world(tmp_path)
    with pytest.raises(WorldError, match="not a world folder"):
        load_world(tmp_path / "nowhere")


def test_the_cli_says_so_in_one_line(tiny_model, tmp_path, capsys) -> None:
    world = tmp_path / "world"
    world.mkdir()
    (world / "world.json").write_text("[1, 2]")
    rc = main(["base", "prior", "--model", str(tiny_model), "--world", str(world)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not a valid world manifest" in err[0], err


def test_truncated_model_weights_are_a_model_load_error(tiny_model, tmp_path) -> None:
    broken = tmp_path / "model"
    shutil.copytree(tiny_model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match=f"cannot load the model in {broken}"):
        load_local(broken)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["eval", "{run}", "--episodes", "0"], "--episodes must be at least 1"),
        (["eval", "{run}", "--episodes", "2", "--lengths", "64,-64"], "--lengths must be positive"),
        (["report", "{run}", "--out", "{run}/config.toml"], "the report is an .html file"),
        (["theory", "--out", ""], "--out is empty"),
    ],
)
def test_refused_before_anything_is_written(tmp_path, capsys, argv, needle) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("kept")
    rc = main([a.replace("{run}", str(run)) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert sorted(p.name for p in run.iterdir()) == ["config.toml"]
    assert (run / "config.toml").read_text() == "kept"
