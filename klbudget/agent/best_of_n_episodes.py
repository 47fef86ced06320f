"""Best-of-n episodes from the base policy: the untrained yardstick beside the RL agents.

β plays n·E episodes (a budget agent at budget 0 plays β exactly), the pool is cut into E
groups of n and the highest-return episode of each group is kept
(`klbudget.core.best_of_n`). Its cost is the exact KL(π_n‖β) of best-of-n when β's return
distribution is the pool's empirical one. The kept records are β's own episodes, so their
per-token `kl` and `log_ratio` are 0: the selection's KL lives at the episode level only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from klbudget.agent.policy import Actor, Critic
from klbudget.agent.rollout import Oracle, run_episode
from klbudget.core.best_of_n import kl_best_of_n, kl_bound, select
from klbudget.envs.chat import ChatEnv


@dataclass
class BestOfN:
    records: list[dict]  # the E kept episodes (docs/run-folder.md), policy "best_of_<n>"
    kl: float  # exact KL(π_n‖β) for the pool's empirical return distribution
    kl_bound: float  # log n − (n − 1)/n
    pool_returns: np.ndarray  # (n·E,) returns of every β episode played
    chosen: np.ndarray  # (E,) indices into the pool of the kept episodes


def play_pool(
    env: ChatEnv,
    count: int,
    *,
    seed: int = 0,
    budget_scale: float = 1.0,
    reference: Oracle | None = None,
) -> list[dict]:
    """`count` β episodes on `env`, in batches of `env.n_envs` with environment seeds seed,
    seed + 1, ... (so a larger pool starts with a smaller one). `reference` (e.g. τ)
    annotates every agent token as in `run_episode`."""
    base = env.base
    obs_dim = base.feature_dim + 2
    actor, critic = Actor(obs_dim, base.num_actions), Critic(obs_dim, 8)
    g = torch.Generator().manual_seed(seed)
    pool: list[dict] = []
    for i in range(math.ceil(count / env.n_envs)):
        ep = run_episode(
            env, actor, critic, budget=0.0, mode="expected", budget_scale=budget_scale,
            generator=g, seed=seed + i, policy="base", reference=reference,
        )  # fmt: skip
        pool += ep.records
    return pool[:count]


def keep_best(pool: list[dict], n: int, episodes: int, *, seed: int = 0) -> BestOfN:
    """The best of each group of n among the first n·`episodes` records of `pool`, as
    policy "best_of_<n>"; ties are broken at random (numpy generator seeded with `seed`)."""
    if n < 1 or episodes < 1:
        raise ValueError(f"n and episodes must be >= 1, got n={n}, episodes={episodes}")
    if len(pool) < n * episodes:
        raise ValueError(f"a pool of {len(pool)} episodes is short of {n} x {episodes}")
    pool = pool[: n * episodes]
    returns = np.array([rec["return"] for rec in pool], dtype=np.float64)
    chosen = select(returns, n, np.random.default_rng(seed))
    records = [
        {**pool[idx], "episode": j, "policy": f"best_of_{n}"}
        for j, idx in enumerate(chosen.tolist())
    ]
    return BestOfN(
        records=records,
        kl=kl_best_of_n(returns, n),
        kl_bound=kl_bound(n),
        pool_returns=returns,
        chosen=chosen,
    )


def best_of_n_episodes(
    env: ChatEnv,
    n: int,
    episodes: int,
    *,
    seed: int = 0,
    budget_scale: float = 1.0,
    reference: Oracle | None = None,
) -> BestOfN:
    """Play n·`episodes` β episodes on `env` (:func:`play_pool`) and keep the best of each
    group of n (:func:`keep_best`)."""
    if n < 1 or episodes < 1:
        raise ValueError(f"n and episodes must be >= 1, got n={n}, episodes={episodes}")
    pool = play_pool(env, n * episodes, seed=seed, budget_scale=budget_scale, reference=reference)
    return keep_best(pool, n, episodes, seed=seed)
