"""Environment wrappers for checks of the learning machinery."""

from __future__ import annotations

import torch


class PlantedTokenReward:
    """Adds `bonus` whenever the agent writes `token_id`: a reward with a known optimum.

    Used to test that the agent learns, and learns more with more budget: the optimal
    budgeted policy emits the planted token more often than the base, and more as the
    budget grows.
    """

    def __init__(self, env, token_id: int, bonus: float = 1.0) -> None:
        self.env = env
        self.token_id = token_id
        self.bonus = bonus

    def __getattr__(self, name: str):
        return getattr(self.env, name)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        return self.env.reset(seed=seed, options=options)

    def step(self, actions: torch.Tensor):
        agent_turn = self.env.agent_turn()
        obs, reward, terminated, truncated, info = self.env.step(actions)
        hit = agent_turn & (info["tokens"] == self.token_id)
        return obs, reward + self.bonus * hit.float(), terminated, truncated, info
