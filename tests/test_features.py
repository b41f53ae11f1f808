"""Observation features (`lede_env.features`): every index of the layout pinned on hand-built `BackendStep`s,
with the expected values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lede_env.backends.base import BackendStep
from lede_env.features import EMA_PRIOR, EMA_WEIGHT, FeatureTracker, ObservationLayout

EXITS = (2, 4, 6, 8, 10)        # J = 5: exit fractions 0, .25, .5, .75, 1
SPEC = (0, 1, 2, 4)             # kmax = 4
PROBES = (3, 7)                 # P = 2
VOCAB = 100
LAYOUT = ObservationLayout(EXITS, SPEC, PROBES, VOCAB)
# Indices of the layout for these sizes.
COS = slice(7, 9)
EMA = {L: 9 + i for i, L in enumerate(EXITS)}
BUDGET = 14


def step(exit_layer=4, k=2, drafted=2, accepted=1, tokens=(11, 12), full_maxprob=0.7, full_entropy=1.5,
         draft_maxprob=0.4, probe_cos=(0.25, -0.5), finished=False, truncated=False) -> BackendStep:
    return BackendStep(exit_layer=exit_layer, k=k, drafted=drafted, accepted=accepted, tokens=tuple(tokens),
                       wall_time=None, full_maxprob=full_maxprob, full_entropy=full_entropy,
                       draft_maxprob=draft_maxprob, probe_cos=tuple(probe_cos), finished=finished,
                       truncated=truncated)


def test_layout_names_size_and_bounds():
    assert LAYOUT.size == 15
    assert LAYOUT.names == ["last_exit", "last_drafted", "last_accept_rate", "last_tokens", "full_maxprob",
                            "full_entropy", "draft_maxprob", "cos_l3", "cos_l7", "accept_ema_L2", "accept_ema_L4",
                            "accept_ema_L6", "accept_ema_L8", "accept_ema_L10", "budget_used"]
    low, high = LAYOUT.bounds()
    np.testing.assert_array_equal(low, [0] * 7 + [-1, -1] + [0] * 6)
    np.testing.assert_array_equal(high, np.ones(15))
    assert low.dtype == high.dtype == np.float32
    lines = LAYOUT.table().splitlines()
    assert len(lines) == 15 and lines[7].split() == ["7", "cos_l3", "[-1,", "1]"]
    assert lines[14].split() == ["14", "budget_used", "[0,", "1]"]
    d = LAYOUT.as_dict()
    assert d == {"exit_layers": list(EXITS), "spec_lengths": list(SPEC), "probe_layers": list(PROBES),
                 "vocab_size": VOCAB, "names": LAYOUT.names}


def test_reset_values():
    ft = FeatureTracker(LAYOUT)
    obs = ft.reset(generated=3, max_new_tokens=12)
    expected = np.zeros(15, np.float32)
    expected[9:14] = EMA_PRIOR
    expected[BUDGET] = 0.25
    np.testing.assert_array_equal(obs, expected)
    assert obs.dtype == np.float32 and EMA_PRIOR == 0.5 and EMA_WEIGHT == 0.25
    # reset clears what a previous episode left (confidence, cosines, EMAs, last action).
    ft.update(step(exit_layer=8, drafted=4, accepted=4, tokens=(1, 2, 3, 4, 5)), 8, 12)
    np.testing.assert_array_equal(ft.reset(1, 4), np.r_[np.zeros(9), np.full(5, 0.5), 0.25].astype(np.float32))
    # the budget feature at reset is capped at 1
    assert ft.reset(generated=5, max_new_tokens=4)[BUDGET] == 1.0


def test_every_feature_of_one_step_by_hand():
    ft = FeatureTracker(LAYOUT)
    ft.reset(1, 20)
    obs = ft.update(step(exit_layer=6, k=4, drafted=3, accepted=1, tokens=(11, 12), full_maxprob=0.7,
                         full_entropy=1.5, draft_maxprob=0.4, probe_cos=(0.25, -0.5)), generated=3, max_new_tokens=20)
    expected = np.array([
        0.5,                     # last_exit: exit 6 is index 2 of 5 -> 2/4
        3 / 4,                   # last_drafted: 3 / kmax
        1 / 3,                   # last_accept_rate: accepted / drafted
        2 / 5,                   # last_tokens: 2 tokens / (kmax + 1)
        0.7,                     # full_maxprob
        1.5 / math.log(100),     # full_entropy / ln V
        0.4,                     # draft_maxprob
        0.25, -0.5,              # cos_l3, cos_l7
        0.5, 0.5,                # EMAs of exits 2, 4: untouched prior
        0.75 * 0.5 + 0.25 / 3,   # EMA of exit 6, the one that drafted
        0.5, 0.5,                # EMAs of exits 8, 10
        3 / 20,                  # budget_used
    ], dtype=np.float32)
    np.testing.assert_allclose(obs, expected, rtol=1e-6, atol=0)
    assert obs.dtype == np.float32 and obs.shape == (15,)


@pytest.mark.parametrize("j", range(len(EXITS)))
def test_last_exit_is_index_over_j_minus_1(j):
    ft = FeatureTracker(LAYOUT)
    ft.reset(1, 10)
    assert ft.update(step(exit_layer=EXITS[j]), 2, 10)[0] == pytest.approx(j / 4)


def test_single_exit_layer_fraction_is_zero():
    ft = FeatureTracker(ObservationLayout((5,), (0, 3), (2,), 10))
    obs = ft.update(step(exit_layer=5, drafted=3, accepted=3, tokens=(1, 2, 3, 4), probe_cos=(0.1,)), 4, 10)
    assert obs[0] == 0.0 and obs[1] == 1.0 and obs[3] == 1.0


def test_ema_updates_only_the_exit_that_drafted_and_accumulates():
    ft = FeatureTracker(LAYOUT)
    ft.reset(1, 100)
    ema4 = ema8 = 0.5
    history = [(4, 2, 2), (4, 4, 0), (8, 4, 3), (4, 1, 1), (8, 0, 0), (4, 0, 0), (8, 2, 1)]
    for t, (L, drafted, accepted) in enumerate(history):
        obs = ft.update(step(exit_layer=L, k=drafted, drafted=drafted, accepted=accepted,
                             tokens=tuple(range(accepted + 1))), 2 + t, 100)
        if drafted:
            rate = accepted / drafted
            if L == 4:
                ema4 = 0.75 * ema4 + 0.25 * rate
            else:
                ema8 = 0.75 * ema8 + 0.25 * rate
        assert obs[EMA[4]] == pytest.approx(ema4, rel=1e-6)
        assert obs[EMA[8]] == pytest.approx(ema8, rel=1e-6)
        for other in (2, 6, 10):
            assert obs[EMA[other]] == 0.5
    # by hand: exit 4 saw rates 1, 0, 1 -> .5 -> .625 -> .46875 -> .6015625
    assert ema4 == pytest.approx(0.6015625)
    # exit 8 saw rates .75, .5 -> .5625 -> .546875
    assert ema8 == pytest.approx(0.546875)


def test_k0_step_is_plain_and_leaves_ema():
    ft = FeatureTracker(LAYOUT)
    ft.reset(1, 10)
    obs = ft.update(step(exit_layer=10, k=0, drafted=0, accepted=0, tokens=(7,), draft_maxprob=0.0,
                         full_maxprob=0.9, full_entropy=0.2, probe_cos=(0.9, 0.8)), 2, 10)
    np.testing.assert_allclose(obs, np.array([1.0, 0, 0, 1 / 5, 0.9, 0.2 / math.log(100), 0, 0.9, 0.8,
                                              0.5, 0.5, 0.5, 0.5, 0.5, 0.2], np.float32), rtol=1e-6)


def test_a_step_overwrites_the_previous_step_features():
    ft = FeatureTracker(LAYOUT)
    ft.reset(1, 10)
    ft.update(step(exit_layer=8, drafted=4, accepted=4, tokens=(1, 2, 3, 4, 5), draft_maxprob=0.9,
                   full_maxprob=0.8, full_entropy=2.0, probe_cos=(0.3, 0.4)), 6, 10)
    obs = ft.update(step(exit_layer=2, k=1, drafted=1, accepted=0, tokens=(9,), draft_maxprob=0.1,
                         full_maxprob=0.2, full_entropy=0.5, probe_cos=(-0.3, 0.1)), 7, 10)
    np.testing.assert_allclose(obs[:9], [0, 0.25, 0, 0.2, 0.2, 0.5 / math.log(100), 0.1, -0.3, 0.1], rtol=1e-6)
    assert obs[BUDGET] == pytest.approx(0.7)


def test_clamping_and_budget_cap():
    ft = FeatureTracker(LAYOUT)
    ft.reset(1, 10)
    hi = ft.update(step(full_maxprob=1.0000002, full_entropy=10 * math.log(100), draft_maxprob=1.5,
                        probe_cos=(1.0000001, -1.0000001)), generated=12, max_new_tokens=10)
    assert hi[4] == 1.0 and hi[5] == 1.0 and hi[6] == 1.0 and hi[7] == 1.0 and hi[8] == -1.0
    assert hi[BUDGET] == 1.0
    lo = ft.update(step(full_maxprob=-1e-7, full_entropy=-1e-6, draft_maxprob=-0.1, probe_cos=(-3.0, 2.0)), 3, 10)
    assert lo[4] == 0.0 and lo[5] == 0.0 and lo[6] == 0.0 and lo[7] == -1.0 and lo[8] == 1.0
    low, high = LAYOUT.bounds()
    assert ((lo >= low) & (lo <= high)).all() and ((hi >= low) & (hi <= high)).all()


def test_observation_is_a_copy():
    ft = FeatureTracker(LAYOUT)
    a = ft.reset(1, 10)
    b = ft.update(step(), 3, 10)
    a_before, b_before = a.copy(), b.copy()
    ft.update(step(exit_layer=10, drafted=4, accepted=4, tokens=(1, 2, 3, 4, 5)), 8, 10)
    np.testing.assert_array_equal(a, a_before)
    np.testing.assert_array_equal(b, b_before)


def test_two_exits_and_the_shortest_length_list():
    """The edges of the normalisations: with two exits the second has fraction 1; with lengths (0, 1) a one-token
    draft is the whole of ``last_drafted`` and two tokens fill ``last_tokens``."""
    ft = FeatureTracker(ObservationLayout((3, 5), (0, 1), (2,), 10))
    ft.reset(1, 10)
    obs = ft.update(step(exit_layer=5, k=1, drafted=1, accepted=1, tokens=(1, 2), probe_cos=(0.5,)), 3, 10)
    assert obs[0] == 1.0 and obs[1] == 1.0 and obs[3] == 1.0
    ft = FeatureTracker(ObservationLayout((3, 5), (0,), (2,), 10))         # no drafts at all: kmax counts as 1
    ft.reset(1, 10)
    obs = ft.update(step(exit_layer=3, k=0, drafted=0, accepted=0, tokens=(1,), probe_cos=(0.5,)), 2, 10)
    assert obs[1] == 0.0 and obs[3] == 0.5
