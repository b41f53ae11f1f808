"""The static-speedup model behind `required_agreement` (what acceptance an exit needs for a target speedup)."""

import math

import pytest

from lede_env.analysis import required_agreement, static_speedup
from lede_env.engine.profile import LatencyProfile, cpu_signature

N = 10


def profile(draft_per_layer: float, verify_growth: float) -> LatencyProfile:
    """A 10-layer model: 1 ms per layer at one position (+ ``verify_growth`` per extra position), 1 ms head."""
    layer = tuple(0.001 * (1 + verify_growth * q) for q in range(13))
    head = tuple(0.001 for _ in range(13))
    verify = tuple(N * layer[q] + head[q] for q in range(13))
    return LatencyProfile(model="synthetic", dtype="float32", device="cpu", threads=1, path="eager", cpu=cpu_signature(),
                          exit_heads="identity", num_layers=N, draft_cost={L: draft_per_layer * L + 0.001 for L in
                                                                            range(1, N)},
                          verify_cost=verify, layer_cost=layer, head_cost=head)


def test_static_speedup_by_hand():
    p = profile(0.001, 0.0)   # verifying q positions costs as much as one
    # perfect drafts at exit 5 with k = 2: 3 tokens for 2 drafts (6 ms each) + one full step (11 ms)
    assert static_speedup(p, 5, 2, 1.0) == pytest.approx(3 * 0.011 / (2 * 0.006 + 0.011))
    # no accepted draft: one token for the same cost
    assert static_speedup(p, 5, 2, 0.0) == pytest.approx(0.011 / (2 * 0.006 + 0.011))
    # expected tokens with acceptance 0.5 and k = 2: 1 + 0.5 + 0.25
    assert static_speedup(p, 5, 2, 0.5) == pytest.approx(1.75 * 0.011 / (2 * 0.006 + 0.011))


def test_required_agreement_reaches_target_and_grows_with_depth_and_verify_cost():
    cheap, costly = profile(0.001, 0.0), profile(0.001, 0.3)
    need = required_agreement(cheap, [2, 5, 8], target=1.1, kmax=8)
    for L, a in need.items():
        assert max(static_speedup(cheap, L, k, a) for k in range(1, 9)) >= 1.1 - 1e-9
        assert max(static_speedup(cheap, L, k, a - 1e-3) for k in range(1, 9)) < 1.1
    assert need[2] < need[5] < need[8] < 1
    need_costly = required_agreement(costly, [2, 5, 8], target=1.1, kmax=8)
    assert all(need_costly[L] > need[L] for L in need)
    # a draft as expensive as a full step can never pay
    assert math.isinf(required_agreement(profile(0.0011, 0.0), [9], target=1.1)[9])
