"""The PPO update of a trained agent, with the mixture's hand-written backward, the same
with the solve started from its own estimate instead of the rollout's α ("cold start"), with
autograd through the solver's algebra, and with each minibatch in one part and the solve
over all its rows at once ("one part": every (rows, actions) tensor as large as the
minibatch, as before `ppo.microbatch`), side by side on the same batch.

    python benchmarks/ppo_update.py --run runs/demo/agent_B20
    python benchmarks/ppo_update.py --run runs/demo/pessimistic_B20 --set base.world=runs/demo/world
    python benchmarks/ppo_update.py --run runs/smollm2 --only hand-written,one-part

The run folder is copied and resumed from its newest checkpoint, one batch of episodes is
collected (timed: the rollout), and each variant runs whole updates (`ppo_update`, the
trainer's settings) from the same actor, critic and optimiser state, alternating, so both
see the same machine. Prints medians over the timed repetitions and the ratio.
`--against FILE` adds a variant with another version's solver (`fixed_kl_mixture` of FILE,
e.g. `git show 2aeba38:klbudget/core/mixture.py > /tmp/old.py`) in the trainer's settings.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import klbudget.agent.policy as policy
import klbudget.core.mixture as mixture
from klbudget.agent.ppo import micro_rows, ppo_update
from klbudget.agent.trainer import Trainer, cat_batches
from klbudget.config import load
from klbudget.core.mixture import fixed_kl_mixture

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rollout import load_solver  # noqa: E402

VARIANTS = ("hand-written", "cold start", "autograd", "one-part")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", required=True, help="a trained run folder (config.toml, checkpoints)")
    p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    p.add_argument("--reps", type=int, default=3, help="timed updates per variant")
    p.add_argument("--only", default="", help="comma-separated variants to run (default: all)")
    p.add_argument("--against", metavar="FILE", help="also: another version of core/mixture.py")
    args = p.parse_args()
    names = args.only.split(",") if args.only else list(VARIANTS)
    if unknown := set(names) - set(VARIANTS):
        p.error(f"unknown variants {sorted(unknown)}; expected some of {list(VARIANTS)}")
    other = None
    if args.against is not None:
        if (other := load_solver(args.against)) is None:
            p.error(f"--against {args.against}: not a Python file defining fixed_kl_mixture")
        names.append("against")
    if not (Path(args.run) / "config.toml").is_file():
        p.error(f"{args.run}: not a run folder (no config.toml)")
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
        whole = dataclasses.replace(cfg.ppo, microbatch=cfg.ppo.minibatch)
        chunk = mixture.SOLVE_BYTES
        # name: (mixture, PPO settings, the solve's bytes per part)
        variants = {
            "hand-written": (hand, cfg.ppo, chunk),  # the solve starts from the rollout's α
            "cold start": (lambda *a, alpha0=None, **k: hand(*a, **k), cfg.ppo, chunk),
            "autograd": (functools.partial(hand, autograd=True), cfg.ppo, chunk),
            "one-part": (hand, whole, 1 << 62),
            "against": (other, cfg.ppo, chunk),  # another version's solver (--against)
        }
        variants = {n: variants[n] for n in names}
        times: dict[str, list[float]] = {name: [] for name in variants}
        try:
            for i in range(args.reps + 1):  # the first round is a warm-up
                for name, (fn, ppo_cfg, solve_bytes) in variants.items():
                    for module, sd in zip(trainer._state()[0].values(), state, strict=True):
                        module.load_state_dict(sd)
                    for opt, sd in zip(trainer._state()[1].values(), opts, strict=True):
                        opt.load_state_dict(sd)
                    policy.fixed_kl_mixture = fn
                    mixture.SOLVE_BYTES = solve_bytes
                    gen = torch.Generator().manual_seed(i)
                    t0 = time.perf_counter()
                    ppo_update(
                        trainer.actor, trainer.critic, trainer.actor_opt, trainer.critic_opt, batch,
                        ppo_cfg, kl_target_coef=cfg.agent.kl_target_coef,
                        kl_target_grad=cfg.agent.kl_target_grad, generator=gen,
                    )  # fmt: skip
                    if i:
                        times[name].append(time.perf_counter() - t0)
        finally:  # the module's own solver and chunk size, whatever happened
            policy.fixed_kl_mixture = fixed_kl_mixture
            mixture.SOLVE_BYTES = chunk
    steps = len(batch)
    part = min(micro_rows(cfg.ppo.microbatch, batch.base_logp), cfg.ppo.minibatch)
    print(f"{args.run}: {steps} agent steps, {100 * interior:.0f}% of them with 0 < α < 1, "
          f"{cfg.ppo.epochs} epochs of minibatch {cfg.ppo.minibatch}, parts of {part}")  # fmt: skip
    print(f"rollout            {rollout:6.2f} s")
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, m in med.items():
        print(f"update {name:<12}{m:6.2f} s  (median of {args.reps})")
    if "hand-written" in med:
        for name in ("autograd", "cold start", "one-part", "against"):
            if name in med:
                print(f"{name} / hand-written: {med[name] / med['hand-written']:.2f}x")


if __name__ == "__main__":
    main()
