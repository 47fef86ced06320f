"""End-to-end `klbudget train`: bad input exits 2 and loses nothing; runs resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from klbudget.cli import main

pytestmark = pytest.mark.slow


def write_config(tmp: Path, model: Path, **extra: str) -> Path:
    cfg = tmp / "run.toml"
    lines = [
        'preset = "cpu"',
        "[model]",
        f'path = "{model}"',
        "[env]",
        'prompt = "Student: Hi!\\n\\nTeacher:"',
        "n_envs = 4",
        "length = 40",
        "[ppo]",
        "tokens_per_update = 64",
        "minibatch = 32",
        "epochs = 2",
        "[train]",
        "total_agent_steps = 300",
    ]
    cfg.write_text("\n".join(lines) + "\n" + "\n".join(f"{k} = {v}" for k, v in extra.items()))
    return cfg


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "klbudget.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_train_writes_documented_run_folder(tiny_model, tmp_path):
    out = tmp_path / "run"
    rc = main(["train", "--config", str(write_config(tmp_path, tiny_model)), "--out", str(out),
               "--no-progress"])  # fmt: skip
    assert rc == 0
    assert (out / "config.toml").is_file()
    assert list(out.glob("events.out.tfevents.*"))
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics and {"reward/mean", "kl/episode_mean", "budget/spent"} <= set(metrics[-1])
    episodes = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines()]
    tok = episodes[0]["tokens"][0]
    assert set(tok) == {"id", "text", "speaker", "kl", "log_ratio", "budget_left"}
    assert {t["speaker"] for t in episodes[0]["tokens"]} <= {"prompt", "agent", "env"}
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())["checkpoint"]
    assert (out / "checkpoints" / f"{latest}.safetensors").is_file()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--set", "ppo.nonsense=1"], "unknown key ppo.nonsense"),
        (["--set", "ppo.epochs=many"], "ppo.epochs: expected int"),
        (["--set", "budget.mode=sometimes"], "budget.mode"),
        (["--set", "model.path=/no/such/model"], "no model folder at /no/such/model"),
        (["--set", "oops"], "bad override"),
        (["--set", "base.kind=pessimistic"], "base.members must name"),
        (["--set", "base.kind=bayes", "--set", "base.members=/no/such"], "no model folder"),
        (["--set", "base.help=sometimes"], "base.help = 'sometimes': must be one of token|turn"),
        (["--set", "budget.total=inf"], "budget.total = inf: must be a finite number"),
        (["--set", "budget.total=nan"], "budget.total = nan: must be a finite number"),
        (["--set", "ppo.clip=-1"], "ppo.clip = -1.0: must be in (0, 10]"),
        (["--set", "ppo.clip=nan"], "ppo.clip = nan"),
        (["--set", "model.temperature=inf"], "model.temperature = inf"),
        (["--set", "env.length=5"], "env.length = 5: must be longer than the prompt"),
        (["--set", "ppo.actor_lr=nan"], "ppo.actor_lr = nan"),
        (["--set", "model.device=mps"], "model.device = 'mps': no such device"),
    ],
)
def test_bad_input_is_one_line_exit_2(tiny_model, tmp_path, args, needle):
    cfg = write_config(tmp_path, tiny_model)
    r = run_cli("train", "--config", str(cfg), "--out", str(tmp_path / "run"), *args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_missing_config_and_bad_toml(tmp_path):
    r = run_cli("train", "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\npath=")
    r = run_cli("train", "--config", str(bad), "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "not valid TOML" in r.stderr


def test_existing_run_is_not_overwritten_and_corrupt_checkpoint_is_refused(tiny_model, tmp_path):
    out = tmp_path / "run"
    cfg = write_config(tmp_path, tiny_model)
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = run_cli("train", "--config", str(cfg), "--out", str(out))
    assert r.returncode == 2 and "already holds files" in r.stderr
    r = run_cli("eval", str(out), "--world", str(tmp_path / "no_world"))
    assert r.returncode == 2 and "not a world folder" in r.stderr, r.stderr
    assert not (out / "eval").exists()
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())["checkpoint"]
    ck = out / "checkpoints" / f"{latest}.safetensors"
    ck.write_bytes(b"this is not a safetensors file")
    r = run_cli("train", "--out", str(out), "--resume", "--set", "train.total_agent_steps=600")
    assert r.returncode == 2 and "corrupt" in r.stderr and "Traceback" not in r.stderr
    for p, data in before.items():
        if p != ck:
            assert p.read_bytes() == data, f"{p} changed"


def test_an_out_path_that_cannot_be_a_folder_is_one_line_exit_2(tiny_model, tmp_path):
    cfg = write_config(tmp_path, tiny_model)
    afile = tmp_path / "afile"
    afile.write_text("kept")
    for out in (afile, afile / "run"):
        r = run_cli("train", "--config", str(cfg), "--out", str(out))
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == f"klbudget: error: Not a directory: {out}", r.stderr
    assert afile.read_text() == "kept"


@pytest.mark.parametrize(
    "meta,needle",
    [
        ({"step": "x"}, "no counters"),
        (
            {
                "counters": {"update": -1, "agent_steps": 0, "episodes": 0, "wall_s": 0.0},
                "log_sizes": {},
            },
            "counters.update is -1",
        ),  # fmt: skip
        (
            {
                "counters": {"update": 1, "agent_steps": 0, "episodes": 0, "wall_s": "soon"},
                "log_sizes": {},
            },
            "counters.wall_s is 'soon'",
        ),  # fmt: skip
        (None, "log_sizes names a file outside the run folder"),  # set below: ../victim
    ],
)
def test_a_corrupt_checkpoint_record_is_refused_and_nothing_is_cut(
    tiny_model, tmp_path, meta, needle
):
    out = tmp_path / "run"
    cfg = write_config(tmp_path, tiny_model)
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    victim = tmp_path / "victim"
    victim.write_text("a file beside the run folder")
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())["checkpoint"]
    record = out / "checkpoints" / f"{latest}.json"
    if meta is None:  # a valid record whose log names point outside the run folder
        meta = json.loads(record.read_text())
        meta["log_sizes"] = {"../victim": 0}
    record.write_text(json.dumps(meta))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = run_cli("train", "--out", str(out), "--resume", "--set", "train.total_agent_steps=600")
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert victim.read_text() == "a file beside the run folder"
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_resume_after_sigkill(tiny_model, tmp_path):
    out = tmp_path / "run"
    cfg = write_config(tmp_path, tiny_model, **{})
    proc = subprocess.Popen(
        [sys.executable, "-m", "klbudget.cli", "train", "--config", str(cfg), "--out", str(out),
         "--no-progress", "--set", "train.total_agent_steps=100000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 300
    latest = out / "checkpoints" / "latest.json"
    while time.time() < deadline:
        if latest.exists() and json.loads(latest.read_text())["checkpoint"] >= "step_000002":
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = json.loads(latest.read_text())["checkpoint"]
    r = run_cli("train", "--out", str(out), "--resume", "--no-progress",
                "--set", "train.total_agent_steps=1000")  # fmt: skip
    assert r.returncode == 0, r.stderr
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    updates = [m["time/update"] for m in metrics]
    assert updates == list(range(1, len(updates) + 1)), "duplicated or lost updates"
    assert len(updates) > int(done_before.split("_")[1])
    episodes = [json.loads(x)["episode"] for x in (out / "episodes.jsonl").read_text().splitlines()]
    assert episodes == list(range(len(episodes)))


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--agents", "single"], "KIND:BUDGET"),
        (["--agents", "oracle:10"], "unknown base kind"),
        (["--agents", "single:ten"], "BUDGET is a number"),
        (["--agents", "single:10:many"], "STEPS an integer"),
        (["--agents", "single:10", "--budgets", "5"], "not both"),
        (["--agents", "single:inf"], "finite"),
        (["--agents", "single:-5"], "BUDGET must be a finite number >= 0"),
        (["--agents", "single:10:0"], "STEPS must be at least 1"),
        (["--agents", "single:10:-5"], "STEPS must be at least 1"),
    ],
)
def test_demo_agents_bad_input(tmp_path, args, needle):
    out = tmp_path / "demo"
    r = run_cli("demo", "--out", str(out), *args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not out.exists()


@pytest.mark.parametrize("damage", ["missing", "garbled", "short"])
def test_resume_over_a_damaged_log_stops_and_changes_nothing(tiny_model, tmp_path, capsys, damage):
    out = tmp_path / "run"
    cfg = write_config(tmp_path, tiny_model)
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    if damage == "missing":
        metrics.unlink()
    elif damage == "garbled":
        metrics.write_text(lines[0][:-3] + "@@\n" + "".join(lines[1:]))
    else:
        metrics.write_text("".join(lines[:-1]))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    code = main(["train", "--out", str(out), "--resume", "--no-progress",
                 "--set", "train.total_agent_steps=600"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "cannot resume" in err[0] or "corrupt" in err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
