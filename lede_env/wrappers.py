"""Wrappers: the flat action space for DQN-style and offline agents."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


def flatten_action(action, nvec) -> int:
    """``[j, kidx] -> j * K + kidx`` (with a stop-rule index ``s``: ``(j * K + kidx) * S + s``)."""
    idx = [int(x) for x in np.asarray(action).reshape(-1)]
    return int(np.ravel_multi_index(idx, [int(n) for n in nvec]))


def unflatten_action(index: int, nvec) -> np.ndarray:
    """``j * K + kidx -> [j, kidx]`` (and the same for three components)."""
    index, dims = int(index), [int(n) for n in nvec]
    size = int(np.prod(dims))
    if not 0 <= index < size:
        raise ValueError(f"Flat action {index} is outside Discrete({size}).")
    return np.array(np.unravel_index(index, dims), dtype=np.int64)


class FlattenAction(gym.ActionWrapper):
    """``MultiDiscrete([J, K]) -> Discrete(J * K)``; flat action ``a`` means exit index ``a // K`` and length
    index ``a % K`` (an environment with stop rules, ``MultiDiscrete([J, K, S])``, becomes ``Discrete(J * K * S)``
    in the same row-major order). `flatten` maps the other way (for datasets recorded in the MultiDiscrete
    space)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        if not isinstance(env.action_space, spaces.MultiDiscrete) or env.action_space.shape not in ((2,), (3,)):
            raise ValueError(f"FlattenAction needs a MultiDiscrete([J, K]) or ([J, K, S]) action space, got "
                             f"{env.action_space}.")
        self.nvec = env.action_space.nvec
        self.action_space = spaces.Discrete(int(np.prod(self.nvec)))

    def action(self, action) -> np.ndarray:
        return unflatten_action(action, self.nvec)

    def flatten(self, action) -> int:
        return flatten_action(action, self.nvec)
