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


def test_oracle_below_static_tolerance_grows_with_the_steps(monkeypatch, tmp_path):
    """The DP's tie rule may lose up to a relative _TIE_RTOL per position: oracle_summary tolerates that summed over
    the positions, and no more."""
    import numpy as np

    from lede_env import analysis
    from lede_env.oracle import _TIE_RTOL
    from lede_env.traces import Trace

    T = 400
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 50, T)
    tr = Trace(prompt_index=0, prompt_ids=np.arange(4), tokens=tokens, exit_layers=(2, 4), probe_layers=(3,),
               draft_tokens=np.tile(tokens[1:, None], (1, 2)), draft_maxprob=np.ones((T - 1, 2), np.float32),
               full_maxprob=np.ones(T - 1, np.float32), full_entropy=np.zeros(T - 1, np.float32),
               probe_cos=np.ones((T - 1, 1), np.float32), eos=False, max_new_tokens=T, max_context=1024)
    p = profile(0.001, 0.0)
    table = p.cost_table((2, 4), 3)
    _, _, static = analysis.best_static([tr], table, (0, 1, 2, 3))
    # a loss of 100 ties' worth (of the T - 1 = 399 positions) is tolerated, one of 2 * 399 * (1 + speedup) is not
    small = static * (1 - 100 * _TIE_RTOL)
    monkeypatch.setattr(analysis, "aggregate_speedup", lambda results: small)
    assert analysis.oracle_summary([tr], table, (0, 1, 2, 3))["oracle_speedup"] == small
    big = static * (1 - 2 * (T - 1) * _TIE_RTOL * (1 + static))
    monkeypatch.setattr(analysis, "aggregate_speedup", lambda results: big)
    with pytest.raises(AssertionError, match="below best static"):
        analysis.oracle_summary([tr], table, (0, 1, 2, 3))
