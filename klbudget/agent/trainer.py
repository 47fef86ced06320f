"""Training loop: learn → collect episodes → PPO update → log → checkpoint.

The trainer trains the parts it is given: the environment (built by `klbudget.compose`
unless passed in) and the KL control of the config (`klbudget.agent.kl_control`: a hard
per-episode budget, ramped up over training, or a fixed or adaptive KL penalty), which
says what each episode's budget is, what the rollout and the update pay, and what is
logged and checkpointed. Logs and checkpoints follow docs/run-folder.md. Ctrl-C (SIGINT)
or SIGTERM asks the loop to stop at the next safe point, where it saves a checkpoint
first; `resume=True` continues from the newest checkpoint, even after SIGKILL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from klbudget.agent.actors import make_actor
from klbudget.agent.distributed import SINGLE, Group
from klbudget.agent.kl_control import make_kl_control
from klbudget.agent.lora import SeqRef
from klbudget.agent.policy import Critic
from klbudget.agent.ppo import (
    Batch,
    ExtraLoss,
    HiddenLogp,
    NonFiniteError,
    combine,
    ppo_update,
)
from klbudget.agent.rollout import Rollout, run_episode
from klbudget.compose import build_env
from klbudget.config import Config, to_toml
from klbudget.envs.chat import ChatEnv
from klbudget.runs import folder as rf

Callback = Callable[[dict[str, float]], bool]  # metrics of one update → keep going?


def cat_batches(batches: list[Batch]) -> Batch:
    if len(batches) == 1:
        return batches[0]

    def cat(parts: list):
        if any(p is None for p in parts):
            return None
        if isinstance(parts[0], HiddenLogp | SeqRef):
            return type(parts[0]).cat(parts)
        return torch.cat(parts)

    return Batch(*(cat([getattr(b, f) for b in batches]) for f in Batch.__dataclass_fields__))


@dataclass
class Counters:
    update: int = 0
    agent_steps: int = 0
    episodes: int = 0
    wall_s: float = 0.0


_RANK_STRIDE = 7_919  # seed offset between the agents' random streams in a process group


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN or infinite loss, gradient or metric); one line."""


class Trainer:
    """Owns the env, the agent and the run folder; `learn()` trains to the step budget."""

    def __init__(
        self,
        cfg: Config,
        run_dir: str | Path,
        *,
        resume: bool = False,
        env: ChatEnv | None = None,
        extra_loss: ExtraLoss | None = None,
        progress: bool = True,
        group: Group = SINGLE,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.group = group
        self.progress = progress and group.main
        self.extra_loss = extra_loss
        if not resume and group.main:
            rf.require_new(self.run_dir)
        torch.manual_seed(cfg.train.seed)
        self.env = env or build_env(cfg)
        base = self.env.base
        obs_dim = base.feature_dim + 2
        self.kl = make_kl_control(cfg)
        agent = cfg.agent
        self.actor = make_actor(obs_dim, base, agent.head, mixture=self.kl.mixture,
                                lora_rank=agent.lora_rank, lora_alpha=agent.lora_alpha)  # fmt: skip
        if cfg.agent.head == "lora" and group.world > 1:
            raise ValueError("agent.head = lora trains in one process (--processes 1)")
        self.critic = Critic(obs_dim, cfg.agent.critic_hidden)
        eps = cfg.ppo.adam_eps
        trained = [p for p in self.actor.parameters() if p.requires_grad]  # not a LoRA's LM
        self.actor_opt = torch.optim.Adam(trained, lr=cfg.ppo.actor_lr, eps=eps)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.ppo.critic_lr, eps=eps)
        # Every process starts from the same agent (the seed above) and samples its own way.
        self.gen = torch.Generator().manual_seed(cfg.train.seed + _RANK_STRIDE * group.rank)
        self.counters = Counters()
        self.budget_scale = max(cfg.budget.total, 1.0)
        self._stop = False
        if resume:
            self._resume()
        elif group.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            rf.atomic_write_text(self.run_dir / "config.toml", to_toml(cfg))
        group.barrier()

    # -- state ----------------------------------------------------------------------------
    def _state(self):
        modules = {"actor": self.actor, "critic": self.critic}
        opts = {"actor": self.actor_opt, "critic": self.critic_opt}
        gens = {"agent": self.gen, "env": self.env.generator}
        return modules, opts, gens

    def _resume(self) -> None:
        stem = rf.latest_checkpoint(self.run_dir)
        if stem is None:
            raise rf.RunFolderError(f"{self.run_dir} has no checkpoint to resume from")
        meta = rf.load_checkpoint(self.run_dir, stem, *self._state())
        c = meta["counters"]
        self.counters = Counters(c["update"], c["agent_steps"], c["episodes"], c["wall_s"])
        self.kl.load_state(c)
        if not self.group.main:
            # The checkpoint holds rank 0's random streams; the others start fresh ones.
            self.gen.manual_seed(self.cfg.train.seed + _RANK_STRIDE * self.group.rank + c["update"])
            return
        rf.truncate_logs(self.run_dir, meta["log_sizes"])

    def save(self) -> Path | None:
        """Write a checkpoint (rank 0 of a process group; the others write nothing)."""
        if not self.group.main:
            return None
        c = self.counters
        counters = {
            "update": c.update,
            "agent_steps": c.agent_steps,
            "episodes": c.episodes,
            "wall_s": c.wall_s,
            **self.kl.state(),
        }
        return rf.save_checkpoint(
            self.run_dir, c.update, *self._state(), counters, self.cfg.train.keep_checkpoints
        )

    # -- loop -----------------------------------------------------------------------------
    def budget_now(self) -> float:
        """The budget of the episodes played now; +inf for a KL-penalty agent."""
        return self.kl.episode_budget(self.counters.agent_steps / self.cfg.train.total_agent_steps)

    def collect(self) -> tuple[list[Rollout], list[float]]:
        """Whole episodes until at least `tokens_per_update` agent steps (this process's share
        of them in a process group)."""
        episodes, empties = [], []
        steps = 0
        world, rank = self.group.world, self.group.rank
        wanted = math.ceil(self.cfg.ppo.tokens_per_update / world)
        # λ as a reward penalty is paid at rollout time; as a loss term it is paid in ppo_update.
        coef = self.kl.reward_coef()
        while steps < wanted and not self._stop:
            # Distinct across processes and updates (counters.episodes counts conversations).
            index = self.counters.episodes + len(episodes) * world + rank
            seed = self.cfg.train.seed * 1_000_003 + index
            ep = run_episode(
                self.env,
                self.actor,
                self.critic,
                budget=self.budget_now(),
                mode=self.cfg.budget.mode,  # type: ignore[arg-type]
                budget_scale=self.budget_scale,
                generator=self.gen,
                seed=seed,
                penalty_coef=coef,
                estimator=self.cfg.penalty.estimator,
                gae_lambda=self.cfg.ppo.gae_lambda,
            )
            episodes.append(ep)
            empties.append(self.env.empty_share())
            steps += ep.agent_steps
        return episodes, empties

    def learn(self, callback: Callback | None = None) -> Counters:
        total = self.cfg.train.total_agent_steps
        writer = _tensorboard(self.run_dir) if self.group.main else None
        old_handlers = _install_stop_handlers(self)
        bar = tqdm(
            total=total, initial=min(self.counters.agent_steps, total), unit="step",
            desc="train", disable=not self.progress, dynamic_ncols=True,
        )  # fmt: skip
        try:
            while self.counters.agent_steps < total and not self._stop:
                t0 = time.perf_counter()
                budget = self.budget_now()
                episodes, empties = self.collect()
                if self.group.any(self._stop):  # every process stops at the same update
                    self._stop = True
                    break
                batch = cat_batches([e.batch for e in episodes])
                penalty_loss = self.kl.loss()
                try:
                    stats = ppo_update(
                        self.actor, self.critic, self.actor_opt, self.critic_opt, batch,
                        self.cfg.ppo, kl_target_coef=self.cfg.agent.kl_target_coef,
                        kl_target_grad=self.cfg.agent.kl_target_grad, generator=self.gen,
                        extra_loss=combine(self.extra_loss, penalty_loss), group=self.group,
                    )  # fmt: skip
                except NonFiniteError as err:
                    raise self._diverged(err.quantity) from err
                stats.update(self.kl.loss_stats())
                stats = self._mean_stats(stats)
                episodes, empties = self._gathered(episodes, empties)
                stats.update(self.kl.after_update(episodes))
                metrics = self._log(episodes, empties, stats, budget, time.perf_counter() - t0)
                if writer is not None:
                    for name, val in metrics.items():
                        writer.add_scalar(name, val, self.counters.agent_steps)
                    writer.flush()
                bar.update(sum(e.agent_steps for e in episodes))
                bar.set_postfix(
                    reward=f"{metrics['reward/mean']:.2f}",
                    kl=f"{metrics['kl/episode_mean']:.2f}",
                    **self.kl.postfix(metrics, budget),
                    empty=f"{metrics['episodes/empty_turn_frac']:.2f}",
                )
                if self.counters.update % self.cfg.train.checkpoint_every == 0:
                    self.save()
                if callback is not None and not callback(metrics):
                    break
        finally:
            bar.close()
            if writer is not None:
                writer.close()
            _restore_handlers(old_handlers)
        if self._stop or self.counters.update % self.cfg.train.checkpoint_every != 0:
            self.save()
        return self.counters

    def _mean_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """The update's statistics averaged over the processes of a group."""
        if self.group.world == 1:
            return stats
        keys = sorted(stats)
        total = self.group.sum(torch.tensor([stats[k] for k in keys], dtype=torch.float64))
        return {k: v / self.group.world for k, v in zip(keys, total.tolist(), strict=True)}

    def _gathered(
        self, episodes: list[Rollout], empties: list[float]
    ) -> tuple[list[Rollout], list[float]]:
        """Every process's episodes of this update (without their PPO batches), so that the
        logs, the counters and an adaptive λ are the same on all of them."""
        if self.group.world == 1:
            return episodes, empties
        fields = ("returns", "kl", "log_ratio", "k3", "kl_estimate", "penalty")
        mine = {
            "episodes": [
                {"records": e.records, "agent_steps": e.agent_steps,
                 **{f: getattr(e, f).tolist() for f in fields}}
                for e in episodes
            ],
            "empties": empties,
        }  # fmt: skip
        out_eps, out_empties = [], []
        for part in self.group.gather_json(mine):
            out_empties += part["empties"]
            for e in part["episodes"]:
                tensors = {f: torch.tensor(e[f], dtype=torch.float32) for f in fields}
                out_eps.append(Rollout(None, e["records"], agent_steps=e["agent_steps"], **tensors))
        return out_eps, out_empties

    def _diverged(self, quantity: str) -> TrainingError:
        stem = rf.latest_checkpoint(self.run_dir)
        kept = f"checkpoint {stem} is intact" if stem else "no checkpoint was written yet"
        return TrainingError(
            f"update {self.counters.update + 1}: {quantity} is not finite; training stopped "
            f"before writing it ({kept}; --resume continues from it)"
        )

    def _log(
        self,
        episodes: list[Rollout],
        empties: list[float],
        stats: dict[str, float],
        budget: float,
        seconds: float,
    ) -> dict[str, float]:
        c, before = self.counters, dataclasses.replace(self.counters)
        records = []
        for ep in episodes:
            for rec in ep.records:
                records.append({"episode": c.episodes, **rec})
                c.episodes += 1
        steps = sum(e.agent_steps for e in episodes)
        c.update += 1
        c.agent_steps += steps
        c.wall_s += seconds
        returns = torch.cat([e.returns for e in episodes])
        kl = torch.cat([e.kl for e in episodes])
        lr = torch.cat([e.log_ratio for e in episodes])
        k3 = torch.cat([e.k3 for e in episodes])
        q = torch.quantile(returns, torch.tensor([0.1, 0.5, 0.9]))
        left_end = torch.tensor([r["tokens"][-1]["budget_left"] for r in records])
        budget_metrics = {
            "budget/full": budget,
            "budget/spent": (budget - left_end).mean().item(),
            "budget/left_end": left_end.mean().item(),
        }
        metrics = {
            "time/agent_steps": float(c.agent_steps),
            "time/update": float(c.update),
            "time/wall_s": c.wall_s,
            "time/agent_steps_per_s": steps / max(seconds, 1e-9),
            "reward/mean": returns.mean().item(),
            "reward/q10": q[0].item(),
            "reward/q50": q[1].item(),
            "reward/q90": q[2].item(),
            "kl/episode_mean": kl.mean().item(),
            "kl/episode_max": kl.max().item(),
            "kl/k1_mean": lr.mean().item(),
            "kl/k3_mean": k3.mean().item(),
            **(budget_metrics if self.kl.logs_budget() else {}),
            "episodes/empty_turn_frac": sum(empties) / len(empties),
            **stats,
        }
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:  # nothing of this update is written, the last checkpoint stays the last
            self.counters = before
            raise self._diverged(f"metric {bad[0]}")
        if self.group.main:
            rf.append_jsonl(self.run_dir / "episodes.jsonl", records)
            rf.append_jsonl(self.run_dir / "metrics.jsonl", [metrics])
        return metrics


def _tensorboard(run_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir))


def _install_stop_handlers(trainer: Trainer):
    def handler(signum, frame):  # noqa: ARG001
        if trainer._stop:  # a second Ctrl-C stops at once (the checkpoint is still there)
            raise KeyboardInterrupt
        trainer._stop = True
        tqdm.write("stopping: saving a checkpoint after the current episode (Ctrl-C again to quit)")

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: no handlers
            old[sig] = signal.signal(sig, handler)
    return old


def _restore_handlers(old) -> None:
    for sig, h in old.items():
        signal.signal(sig, h)
