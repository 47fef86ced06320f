"""`klbudget base train` over a damaged world folder or a damaged cached imitator: one line,
exit 2, nothing trained or written."""

from __future__ import annotations

import shutil

import pytest

from klbudget.cli import main

ARGS = ["--set", "steps=2", "--set", "n_layer=1", "--set", "n_embd=32", "--set", "n_head=2",
        "--set", "vocab_size=400", "--set", "block_size=96", "--set", "max_position=128",
        "--set", "eval_transcripts=2", "--set", "probe_samples=1", "--set",
        "peer_transcripts=4", "--set", "batch_size=2"]  # fmt: skip


def _damage(folder, name, how):
    path = folder / name
    if how == "garbage line":
        path.write_text(path.read_text() + "not json\n")
    elif how == "wrong record":
        path.write_text(path.read_text() + '{"turns": 3}\n')
    elif how == "empty":
        path.write_text("")
    elif how == "empty object":
        path.write_text("{}")


@pytest.mark.parametrize(
    ("name", "how", "says"),
    [
        ("train.jsonl", "garbage line", "not a JSON record"),
        ("train.jsonl", "wrong record", "needs a string 'text'"),
        ("heldout.jsonl", "empty", "holds no transcript"),
        ("world.json", "empty object", "not a valid world manifest"),
    ],
)
def test_a_damaged_world_is_refused_in_one_line(small_dir, tmp_path, capsys, name, how, says):
    world = tmp_path / "world"
    shutil.copytree(small_dir, world)
    _damage(world, name, how)
    code = main(["base", "train", "--world", str(world), "--cache", str(tmp_path / "c"), *ARGS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and says in err[0], err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("damage", ["report", "weights"])
def test_a_damaged_cached_imitator_is_refused_not_used(small_dir, tmp_path, capsys, damage):
    cache = tmp_path / "c"
    argv = ["base", "train", "--world", str(small_dir), "--cache", str(cache), *ARGS]
    assert main(argv) == 0
    (folder,) = cache.iterdir()
    if damage == "report":
        (folder / "imitator.json").write_text("{garbage")
    else:
        weights = folder / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF  # one flipped byte
        weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"delete {folder}" in err[0], err
