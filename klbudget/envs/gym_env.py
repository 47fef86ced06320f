"""A single conversation as a `gymnasium.Env` (passes `gymnasium.utils.env_checker`).

Every step is an agent step: the action is the next teacher token; if it completes the
hand-over, the student's whole reply is generated inside the same step and its reward
(s + 1)/2 is returned. The observation holds the base model's features at the next agent
position and the position in the episode; the base log-probabilities are in `info` (they
can be -inf, which a Box observation should not contain).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from klbudget.envs.chat import ChatEnv


class ChatGymEnv(gym.Env):
    metadata = {"render_modes": ["ansi"]}

    def __init__(self, env: ChatEnv, render_mode: str | None = None) -> None:
        if env.n_envs != 1:
            raise ValueError("ChatGymEnv wraps a ChatEnv with n_envs = 1")
        self.env = env
        self.render_mode = render_mode
        f = env.base.feature_dim
        self.observation_space = gym.spaces.Dict(
            {
                "features": gym.spaces.Box(-np.inf, np.inf, shape=(f,), dtype=np.float32),
                "position": gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32),
            }
        )
        self.action_space = gym.spaces.Discrete(env.base.num_actions)
        self._obs: dict | None = None

    def _convert(self, obs: dict) -> dict[str, np.ndarray]:
        return {
            "features": obs["features"][0].numpy().astype(np.float32),
            "position": np.array([obs["position"][0].item()], dtype=np.float32),
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(0, 2**31 - 1))
        obs, info = self.env.reset(seed=seed)
        self._obs = obs
        return self._convert(obs), {"base_logp": obs["base_logp"][0].numpy()}

    def step(self, action):
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        total = 0.0
        obs, reward, terminated, truncated, _ = self.env.step(torch.tensor([int(action)]))
        total += float(reward[0])
        # The student's reply (and any forced hand-back) belongs to this step.
        while not bool(truncated[0]) and not bool(obs["agent_turn"][0]):
            obs, reward, terminated, truncated, _ = self.env.step(torch.zeros(1, dtype=torch.long))
            total += float(reward[0])
        self._obs = obs
        info = {"base_logp": obs["base_logp"][0].numpy()}
        return self._convert(obs), total, bool(terminated[0]), bool(truncated[0]), info

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self.env.transcript(0)
        return None
