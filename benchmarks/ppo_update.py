"""The PPO update of a trained agent, with the mixture's hand-written backward, the same
with the solve started from its χ² estimate instead of the rollout's α ("cold start"), and
with autograd through the solver's algebra, side by side on the same batch.

    python benchmarks/ppo_update.py --run runs/demo/agent_B20
    python benchmarks/ppo_update.py --run runs/demo/pessimistic_B20 --set base.world=runs/demo/world

The run folder is copied and resumed from its newest checkpoint, one batch of episodes is
collected (timed: the rollout), and each variant runs whole updates (`ppo_update`, the
trainer's settings) from the same actor, critic and optimiser state, alternating, so both
see the same machine. Prints medians over the timed repetitions and the ratio.
"""

from __future__ import annotations

import argparse
import copy
import functools
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import klbudget.agent.policy as policy
from klbudget.agent.ppo import ppo_update
from klbudget.agent.trainer import Trainer, cat_batches
from klbudget.config import load
from klbudget.core.mixture import fixed_kl_mixture


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", required=True, help="a trained run folder (config.toml, checkpoints)")
    p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    p.add_argument("--reps", type=int, default=3, help="timed updates per variant")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(args.run, run)
        cfg = load(run / "config.toml", args.set).validate()
        trainer = Trainer(cfg, run, resume=True, progress=False)
        t0 = time.perf_counter()
        episodes, _ = trainer.collect()
        rollout = time.perf_counter() - t0
        batch = cat_batches([e.batch for e in episodes])
        base_logp = batch.base_logp[:]  # all rows (recomputed when kept as hidden states)
        alpha = trainer.actor(batch.obs, base_logp, batch.budget_left).alpha.detach()
        interior = ((alpha > 0) & (alpha < 1)).float().mean().item()
        state = [copy.deepcopy(x.state_dict()) for x in trainer._state()[0].values()]
        opts = [copy.deepcopy(x.state_dict()) for x in trainer._state()[1].values()]
        hand = policy.fixed_kl_mixture
        variants = {
            "hand-written": hand,  # the solve starts from the rollout's α (PPO's default)
            "cold start": lambda *a, alpha0=None, **k: hand(*a, **k),  # from the χ² estimate
            "autograd": functools.partial(hand, autograd=True),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for i in range(args.reps + 1):  # the first round is a warm-up
            for name, fn in variants.items():
                for module, sd in zip(trainer._state()[0].values(), state, strict=True):
                    module.load_state_dict(sd)
                for opt, sd in zip(trainer._state()[1].values(), opts, strict=True):
                    opt.load_state_dict(sd)
                policy.fixed_kl_mixture = fn
                gen = torch.Generator().manual_seed(i)
                t0 = time.perf_counter()
                ppo_update(
                    trainer.actor, trainer.critic, trainer.actor_opt, trainer.critic_opt, batch,
                    cfg.ppo, kl_target_coef=cfg.agent.kl_target_coef,
                    kl_target_grad=cfg.agent.kl_target_grad, generator=gen,
                )  # fmt: skip
                if i:
                    times[name].append(time.perf_counter() - t0)
        policy.fixed_kl_mixture = fixed_kl_mixture
    steps = len(batch)
    print(f"{args.run}: {steps} agent steps, {100 * interior:.0f}% of them with 0 < α < 1, "
          f"{cfg.ppo.epochs} epochs of minibatch {cfg.ppo.minibatch}")  # fmt: skip
    print(f"rollout            {rollout:6.2f} s")
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, m in med.items():
        print(f"update {name:<12}{m:6.2f} s  (median of {args.reps})")
    print(f"autograd / hand-written: {med['autograd'] / med['hand-written']:.2f}x")
    print(f"cold start / hand-written: {med['cold start'] / med['hand-written']:.2f}x")


if __name__ == "__main__":
    main()
