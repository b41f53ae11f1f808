"""Reward recomputation from stored parts (`recompute_rewards`, `OfflineData.rewards_for`), by hand."""

from __future__ import annotations

import numpy as np

from lede_env.datasets import OfflineData, recompute_rewards


def test_recompute_rewards_skips_the_reset_row_and_uses_lam():
    # row 0 is the reset's info (no step): it has no reward
    infos = {"tokens": [0, 1, 3, 2], "cost": [0.0, 0.02, 0.05, 0.03], "c_ar": [0.02, 0.02, 0.02, 0.025]}
    np.testing.assert_allclose(recompute_rewards(infos, 1.0), [0.0, 0.5, 0.8], rtol=1e-12)
    np.testing.assert_allclose(recompute_rewards(infos, 0.5), [0.5, 1.75, 1.4], rtol=1e-12)
    np.testing.assert_allclose(recompute_rewards(infos, 0.0), [1, 3, 2], rtol=1e-12)
    assert recompute_rewards(infos, 1.0).dtype == np.float64


def test_offline_rewards_for_another_lam():
    z = np.zeros(3)
    data = OfflineData(dataset_id="x", observations=np.zeros((3, 1), np.float32), actions=np.zeros(3, np.int64),
                       multi_actions=np.zeros((3, 2), np.int64), rewards=z, next_observations=np.zeros((3, 1), np.float32),
                       terminals=np.array([False, False, True]), timeouts=np.array([False, True, False]),
                       episode_ids=np.zeros(3, np.int64), tokens=np.array([1, 4, 2]), cost=np.array([0.02, 0.06, 0.01]),
                       c_ar=np.array([0.02, 0.02, 0.01]), lam=1.0, exit_layers=(2, 4), spec_lengths=(0, 1, 2),
                       metadata={})
    np.testing.assert_allclose(data.rewards_for(1.0), [0.0, 1.0, 1.0], rtol=1e-12)
    np.testing.assert_allclose(data.rewards_for(0.25), [0.75, 3.25, 1.75], rtol=1e-12)
    assert data.dones.tolist() == [False, True, True]
    assert data.nvec == (2, 3) and data.n_actions == 6 and len(data) == 3
