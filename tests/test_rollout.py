"""The one episode loop (`lede_env.rollout.rollout`): hooks, recurrent state, episode starts, info filtering, the
step bound and the agent's own time, on a tiny countdown environment (no model)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from lede_env.rollout import rollout


class Countdown(gym.Env):
    """Ends after ``n`` steps (or never, ``n=None``); the reward is the action; info counts the steps."""

    def __init__(self, n: int | None = 3):
        self.n, self.t = n, 0
        self.observation_space = spaces.Box(0, 100, (1,), np.float32)
        self.action_space = spaces.Discrete(5)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {"t": 0, "extra": "x", "options": options}

    def step(self, action):
        self.t += 1
        done = self.n is not None and self.t >= self.n
        return np.full(1, self.t, np.float32), float(action), done, False, {"t": self.t, "extra": "x"}


class Recorder:
    """Acts 2, counts its calls, threads a recurrent state through and records the hooks' infos."""

    def __init__(self):
        self.calls, self.resets, self.observed = [], [], []

    def predict(self, obs, state=None, episode_start=None, deterministic=True):
        self.calls.append((float(obs[0]), state, bool(episode_start[0]), deterministic))
        return 2, (state or 0) + 1

    def reset(self, info):
        self.resets.append(info["t"])

    def observe(self, info):
        self.observed.append(info["t"])


def test_rollout_runs_one_episode_with_hooks_and_state():
    agent = Recorder()
    ep = rollout(Countdown(3), agent, seed=7, options={"a": 1}, deterministic=False)
    assert ep.steps == len(ep) == 3 and ep.seed == 7
    assert ep.observations.shape == (4, 1) and ep.observations[:, 0].tolist() == [0, 1, 2, 3]
    assert ep.actions.tolist() == [2, 2, 2] and ep.rewards.tolist() == [2.0, 2.0, 2.0] and ep.episode_return == 6.0
    assert ep.terminations.tolist() == [False, False, True] and not ep.truncations.any()
    # the state returned by predict comes back; episode_start only on the first call; deterministic passed on
    assert agent.calls == [(0.0, None, True, False), (1.0, 1, False, False), (2.0, 2, False, False)]
    assert agent.resets == [0] and agent.observed == [1, 2, 3]
    assert [row["t"] for row in ep.infos] == [0, 1, 2, 3] and ep.infos[0]["options"] == {"a": 1}
    assert ep.info_array("t").tolist() == [0, 1, 2, 3]
    assert ep.predict_seconds > 0


def test_rollout_keeps_only_the_info_keys_asked_for():
    ep = rollout(Countdown(2), Recorder(), info_keys=("t",))
    assert all(set(row) == {"t"} for row in ep.infos)


def test_rollout_works_without_hooks_and_calls_on_step():
    class Plain:
        def predict(self, obs, state=None, episode_start=None, deterministic=True):
            return 1, None

    seen = []
    ep = rollout(Countdown(2), Plain(), on_step=lambda i, info: seen.append((i, info["t"])))
    assert ep.steps == 2 and seen == [(0, 1), (1, 2)]


def test_rollout_refuses_an_endless_episode_and_a_non_agent():
    with pytest.raises(RuntimeError, match="ran 10 steps without ending"):
        rollout(Countdown(None), Recorder(), max_steps=10)
    with pytest.raises(TypeError, match="predict"):
        rollout(Countdown(2), object())
