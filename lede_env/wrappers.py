"""Wrappers: the flat action space for DQN-style and offline agents."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


def flatten_action(action, nvec) -> int:
    """``[j, kidx] -> j * K + kidx``."""
    j, kidx = (int(x) for x in np.asarray(action).reshape(-1))
    return j * int(nvec[1]) + kidx


def unflatten_action(index: int, nvec) -> np.ndarray:
    """``j * K + kidx -> [j, kidx]``."""
    index = int(index)
    if not 0 <= index < int(nvec[0]) * int(nvec[1]):
        raise ValueError(f"Flat action {index} is outside Discrete({int(nvec[0]) * int(nvec[1])}).")
    return np.array(divmod(index, int(nvec[1])), dtype=np.int64)


class FlattenAction(gym.ActionWrapper):
    """``MultiDiscrete([J, K]) -> Discrete(J * K)``; flat action ``a`` means exit index ``a // K`` and length
    index ``a % K``. `flatten` maps the other way (for datasets recorded in the MultiDiscrete space)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        if not isinstance(env.action_space, spaces.MultiDiscrete) or env.action_space.shape != (2,):
            raise ValueError(f"FlattenAction needs a MultiDiscrete([J, K]) action space, got {env.action_space}.")
        self.nvec = env.action_space.nvec
        self.action_space = spaces.Discrete(int(self.nvec[0] * self.nvec[1]))

    def action(self, action) -> np.ndarray:
        return unflatten_action(action, self.nvec)

    def flatten(self, action) -> int:
        return flatten_action(action, self.nvec)
