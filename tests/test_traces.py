"""`Trace.outcome` and `Trace.max_draft` (what replay and the oracle build on), on a hand-made trace whose
agreement is known position by position."""

from __future__ import annotations

import numpy as np
import pytest

from lede_env.traces import Trace


def hand_trace(agree_rows, *, eos=False, max_new_tokens=None, max_context=1000, prompt_len=3) -> Trace:
    """A trace of T = len(agree_rows) + 1 tokens 10, 11, ...; column j's draft at row t agrees when
    ``agree_rows[t][j]``."""
    agree = np.asarray(agree_rows, dtype=bool)
    T = len(agree) + 1
    tokens = np.arange(10, 10 + T, dtype=np.int64)
    if eos:
        tokens[-1] = 2
    draft = np.where(agree, tokens[1:, None], 99).astype(np.int64)
    J = agree.shape[1]
    return Trace(prompt_index=0, prompt_ids=np.arange(prompt_len, dtype=np.int64), tokens=tokens,
                 exit_layers=tuple(range(1, J + 1)), probe_layers=(1,), draft_tokens=draft,
                 draft_maxprob=np.full((T - 1, J), 0.5, np.float32), full_maxprob=np.full(T - 1, 0.5, np.float32),
                 full_entropy=np.ones(T - 1, np.float32), probe_cos=np.ones((T - 1, 1), np.float32), eos=eos,
                 max_new_tokens=max_new_tokens or T + 20, max_context=max_context)


# rows t = 0..7 (T = 9); column 0 agrees at 0, 1, 2, 4, 5; column 1 never
AGREE = [[1, 0], [1, 0], [1, 0], [0, 0], [1, 0], [1, 0], [0, 0], [0, 0]]


def test_outcome_counts_the_agreeing_run_then_one_token():
    tr = hand_trace(AGREE)
    assert tr.run_length[:, 0].tolist() == [3, 2, 1, 0, 2, 1, 0, 0]
    o = tr.outcome(0, 0, 5)                        # run of 3, then the correction
    assert (o.drafted, o.accepted, o.produced, o.finished) == (5, 3, 4, False)
    o = tr.outcome(0, 0, 2)                        # all 2 accepted, then the bonus token
    assert (o.drafted, o.accepted, o.produced) == (2, 2, 3)
    o = tr.outcome(3, 0, 4)                        # a mismatch at once: only the correction
    assert (o.drafted, o.accepted, o.produced) == (4, 0, 1)
    o = tr.outcome(1, 1, 3)                        # the column that never agrees
    assert (o.drafted, o.accepted, o.produced) == (3, 0, 1)
    o = tr.outcome(2, 0, 0)                        # k = 0: one plain token, nothing drafted
    assert (o.drafted, o.accepted, o.produced) == (0, 0, 1)


def test_outcome_at_the_end_stops_at_the_last_token_without_a_bonus():
    tr = hand_trace(AGREE, eos=True)
    o = tr.outcome(4, 0, 6)                        # run of 2 from t=4, then the correction: pending g_7
    assert (o.accepted, o.produced, o.finished) == (2, 3, False)
    o = tr.outcome(6, 0, 3)                        # t=6: mismatch, one token to 7; then 7 -> 8 is the last
    assert (o.accepted, o.produced, o.finished) == (0, 1, False)
    o = tr.outcome(7, 0, 3)                        # the last step: it produces the final (EOS) token
    assert (o.produced, o.finished) == (1, True)
    all_agree = hand_trace([[1]] * 5, eos=True)    # T = 6: drafts run into the final token
    o = all_agree.outcome(2, 0, 8)
    assert (o.drafted, o.accepted, o.produced, o.finished) == (8, 3, 3, True)


def test_outcome_refuses_positions_without_a_step():
    tr = hand_trace(AGREE)
    for t in (-1, tr.length - 1, tr.length):
        with pytest.raises(ValueError, match=f"No step starts at position {t}"):
            tr.outcome(t, 0, 1)


def test_max_draft_is_clipped_by_the_budget_and_by_the_context():
    tr = hand_trace(AGREE, max_new_tokens=6)       # pending g_t: t + 1 generated; a step makes at most k + 1
    assert [tr.max_draft(t) for t in range(5)] == [4, 3, 2, 1, 0]
    assert tr.outcome(2, 0, 9).drafted == 2
    tr = hand_trace(AGREE, max_context=3 + 5)      # prompt 3 + t + 1 positions used of 8
    assert [tr.max_draft(t) for t in range(4)] == [3, 2, 1, 0]
    assert tr.outcome(0, 0, 9).drafted == 3 and tr.outcome(0, 0, 9).accepted == 3
