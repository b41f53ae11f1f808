"""`lede_env.wrappers`: the flat action encoding ``j * K + kidx`` and `FlattenAction`, without a model."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from lede_env.wrappers import FlattenAction, flatten_action, unflatten_action


class _Recorder(gym.Env):
    """A MultiDiscrete([3, 4]) env that reports the action it received."""

    action_space = spaces.MultiDiscrete([3, 4])
    observation_space = spaces.Box(0, 1, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), 0.0, False, False, {"action": np.asarray(action).tolist()}


def test_flat_encoding_by_hand():
    nvec = (3, 4)
    assert flatten_action([0, 0], nvec) == 0
    assert flatten_action([0, 3], nvec) == 3
    assert flatten_action([1, 0], nvec) == 4
    assert flatten_action(np.array([2, 1]), nvec) == 9
    assert flatten_action(np.array([[2, 3]]), nvec) == 11
    assert unflatten_action(9, nvec).tolist() == [2, 1]
    assert unflatten_action(np.int64(4), nvec).tolist() == [1, 0]
    assert unflatten_action(11, nvec).dtype == np.int64
    for a in range(12):
        assert flatten_action(unflatten_action(a, nvec), nvec) == a


@pytest.mark.parametrize("bad", [-1, 12, 100])
def test_unflatten_refuses_out_of_range(bad):
    with pytest.raises(ValueError, match=r"outside Discrete\(12\)"):
        unflatten_action(bad, (3, 4))


def test_flatten_wrapper_maps_flat_actions():
    env = FlattenAction(_Recorder())
    assert env.action_space == spaces.Discrete(12)
    assert env.nvec.tolist() == [3, 4]
    env.reset(seed=0)
    for a, pair in ((0, [0, 0]), (5, [1, 1]), (7, [1, 3]), (8, [2, 0]), (11, [2, 3])):
        assert env.step(a)[4]["action"] == pair
        assert env.flatten(pair) == a
    with pytest.raises(ValueError, match="outside"):
        env.step(12)


def test_flatten_wrapper_needs_a_pair_or_triple_space():
    class Flat(_Recorder):
        action_space = spaces.Discrete(5)

    class Quad(_Recorder):
        action_space = spaces.MultiDiscrete([2, 2, 2, 2])

    for env in (Flat(), Quad()):
        with pytest.raises(ValueError, match=r"MultiDiscrete\(\[J, K\]\)"):
            FlattenAction(env)


def test_flatten_wrapper_with_stop_rules_is_row_major():
    class Triple(_Recorder):
        action_space = spaces.MultiDiscrete([2, 3, 4])

    env = FlattenAction(Triple())
    assert env.action_space.n == 24
    assert env.action(0).tolist() == [0, 0, 0] and env.action(23).tolist() == [1, 2, 3]
    assert env.action(5).tolist() == [0, 1, 1]          # (0 * 3 + 1) * 4 + 1
    assert [env.flatten(env.action(a)) for a in range(24)] == list(range(24))
