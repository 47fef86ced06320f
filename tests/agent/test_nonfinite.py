"""A NaN never trains: a non-finite loss stops the run before anything of that update is
written, and the last good checkpoint resumes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from klbudget.agent.trainer import Trainer, TrainingError
from klbudget.config import from_dict
from klbudget.runs import folder as rf
from tests.envs.test_chat_env import SHORT


def config(model, total: int):
    return from_dict({
        "model": {"path": str(model)},
        "env": {"prompt": SHORT.prompt, "n_envs": 4, "length": 40},
        "agent": {"critic_hidden": 16},
        "budget": {"ramp_fraction": 0.0},
        "ppo": {"tokens_per_update": 64, "minibatch": 32, "epochs": 1},
        "train": {"total_agent_steps": total, "seed": 1},
    }).validate()  # fmt: skip


def rows(path) -> list[dict]:
    return [json.loads(x, parse_constant=pytest.fail) for x in path.read_text().splitlines()]


def test_nan_loss_stops_before_writing_and_the_run_resumes(tiny_model, tmp_path):
    torch.set_num_threads(1)
    armed = {"on": False}

    def poison(played, batch, idx):  # NaN in every minibatch once armed
        return played.log_x.sum() * (math.nan if armed["on"] else 0.0)

    def arm(metrics: dict) -> bool:  # after update 1 has been logged
        armed["on"] = True
        return True

    run = tmp_path / "run"
    trainer = Trainer(config(tiny_model, 400), run, extra_loss=poison, progress=False)
    before = {k: v.clone() for k, v in trainer.actor.state_dict().items()}
    with pytest.raises(TrainingError, match=r"^update 2: the actor loss is not finite"):
        trainer.learn(arm)
    assert len(rows(run / "metrics.jsonl")) == 1  # update 1 only, every value finite
    assert all(math.isfinite(v) for v in rows(run / "metrics.jsonl")[0].values())
    episodes = rows(run / "episodes.jsonl")
    assert [e["episode"] for e in episodes] == list(range(len(episodes)))
    assert rf.latest_checkpoint(run) == "step_000001"
    # The parameters were never stepped with a NaN.
    assert all(torch.isfinite(v).all() for v in trainer.actor.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in trainer.actor.state_dict().items())

    resumed = Trainer(config(tiny_model, 400), run, resume=True, progress=False)
    resumed.learn()
    after = rows(run / "metrics.jsonl")
    assert [m["time/update"] for m in after] == list(range(1, len(after) + 1))
    episodes = rows(run / "episodes.jsonl")
    assert [e["episode"] for e in episodes] == list(range(len(episodes)))  # none lost, none twice
