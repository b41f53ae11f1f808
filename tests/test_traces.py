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


# ------------------------------------------------------------------------------------------ first drafts (issue 14)
def with_first(tr: Trace, first_agree_rows, first_maxprob=None) -> Trace:
    """``tr`` with a step's first draft recorded apart (eagle heads): column j's first draft from row t agrees when
    ``first_agree_rows[t][j]``."""
    from dataclasses import replace

    fa = np.asarray(first_agree_rows, dtype=bool)
    first = np.where(fa, tr.tokens[1:, None], 98).astype(np.int64)
    p = np.full(fa.shape, 0.9, np.float32) if first_maxprob is None else np.asarray(first_maxprob, np.float32)
    return replace(tr, first_tokens=first, first_maxprob=p, first_entropy=np.full(fa.shape, 0.1, np.float32))


def test_first_drafts_recorded_apart_set_the_run_from_each_row():
    """With first_* arrays the run from row t is the first draft's agreement at t, then the later drafts' agreement
    from row t+1 on (`Trace.run_length`); the later drafts' own run is unchanged."""
    first = [[0, 1], [1, 1], [1, 0], [1, 1], [0, 1], [1, 0], [1, 1], [0, 0]]
    tr = with_first(hand_trace(AGREE), first)
    assert tr.has_first and not hand_trace(AGREE).has_first
    # later drafts' runs from row t+1: col 0 -> [2, 1, 0, 2, 1, 0, 0, 0]; col 1 -> zeros
    assert tr.run_length[:, 0].tolist() == [0, 2, 1, 3, 0, 1, 1, 0]
    assert tr.run_length[:, 1].tolist() == [1, 1, 0, 1, 1, 0, 1, 0]
    o = tr.outcome(1, 0, 5)                    # first agrees, then row 2 agrees, row 3 does not
    assert (o.drafted, o.accepted, o.produced) == (5, 2, 3)
    assert tr.outcome(0, 0, 3).accepted == 0   # the later drafts agree at row 0, the first draft does not
    assert tr.first_agree[:, 1].tolist() == [bool(r[1]) for r in first]


def test_stop_rules_read_the_first_draft_then_the_later_ones():
    from lede_env.engine.stop_rules import parse_stop_rule

    first = [[1, 0]] * 8
    fp = np.full((8, 2), 0.9, np.float32)
    fp[2, 0] = 0.1                                   # the first draft from row 2 is unsure
    tr = with_first(hand_trace(AGREE), first, fp)    # later drafts: maxprob 0.5 everywhere
    assert tr.drafted_under(parse_stop_rule("p<0.3"), 2, 0, 4) == 1    # stops at the first draft (0.1)
    assert tr.drafted_under(parse_stop_rule("p<0.3"), 1, 0, 4) == 4    # row 2 is a later draft here (0.5)
    assert tr.drafted_under(parse_stop_rule("p<0.6"), 0, 0, 4) == 2    # first 0.9, then 0.5 stops


def test_first_arrays_round_trip_and_all_or_none(tmp_path):
    from dataclasses import replace

    from lede_env.traces import TraceSet

    tr = with_first(hand_trace(AGREE), [[1, 0]] * 8)
    path = TraceSet((tr, hand_trace(AGREE)), {"exit_layers": [1, 2], "probe_layers": [1], "max_new_tokens": 29})\
        .save(tmp_path / "t.npz")
    a, b = TraceSet.load(path).traces
    assert a.has_first and not b.has_first
    np.testing.assert_array_equal(a.first_tokens, tr.first_tokens)
    np.testing.assert_array_equal(a.run_length, tr.run_length)
    with pytest.raises(ValueError, match="all three first_"):
        replace(tr, first_entropy=None)
