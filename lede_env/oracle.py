"""The oracle: the best action sequence for one trace under a cost model, found by dynamic programming.

Setting (DESIGN.md section 2). A trace ``g_0 .. g_{T-1}`` is replayed from pending position ``t = 0``;
an action ``(j, kidx)`` picks exit column ``j`` (an index into ``trace.exit_layers``) and requested
speculation length ``k = spec_lengths[kidx]``. ``trace.outcome(t, j, k)`` says how many tokens the step
drafted (``d``, ``k`` clipped by the budget) and produced (``n >= 1``); the next pending position is
``t + n`` and the episode ends when it reaches ``T - 1``. Cost model: ``cost_table[j, d]`` seconds, with
``c_ar = cost_table[0, 0]`` the plain autoregressive step. Reward of a step::

    r(t, a) = n(t, a) - lam * cost_table[j, d(t, a)] / c_ar

Recurrence. Reward and transition depend only on ``(t, a)`` (the trace fixes everything else), so the
episode is a shortest-path problem on the positions ``0 .. T-1`` and backward induction is exact::

    V[T-1] = 0
    V[t]   = max_a  r(t, a) + V[t + n(t, a)]        for t = T-2, ..., 0

``V[0]`` is the highest return any policy can reach on the trace: no agent can beat it under the same cost
model. Ties (within a relative 1e-9) are broken deterministically: fewer drafted tokens, then lower exit
column, then shorter requested ``k`` (then lower ``kidx``). Every ``n(t, a) >= 1``, so each ``V[t]`` only
reads positions already solved; per position the work is vectorised over all ``J * K`` actions (the
tables of ``d``, ``n`` and ``r`` are built for all positions at once).

Which ``lam``. Every action sequence produces the same ``N = T - 1`` tokens in total, so the return is
``N - lam * total_cost / c_ar``: for every ``lam > 0`` maximising it is minimising the total cost, which is
maximising the speedup ``N * c_ar / total_cost``. The optimal actions are therefore the same for every
``lam > 0`` and the reported speedup is the highest any policy reaches; the DP is run with ``lam = 1`` (so that
a tiny ``lam`` cannot drown the cost differences in the tie tolerance) and the return is reported under the
``lam`` asked for. ``lam <= 0`` is refused by the optimisers (:func:`solve`, :func:`best_static`,
the oracle agent, `agents.oracle`): with ``lam = 0`` every sequence has the same return ``N`` (the "optimum" would be any
sequence at all, the tie-break picks plain autoregressive decoding), with ``lam < 0`` the DP would maximise the
cost. Best static and the oracle thus optimise the same objective, and the oracle's speedup is never below best
static's on the same traces. :func:`evaluate_actions` and :func:`rollout_static` only replay actions and take
any finite ``lam``.

Speedup. ``N * c_ar / total_cost``: the wall-clock speedup over autoregressive decoding under the cost
table; with ``lam = 1`` it equals ``N / (N - return)``. Over several traces, :func:`aggregate_speedup` and
:func:`best_static` use ``sum N * c_ar / sum cost`` (token-weighted, i.e. total autoregressive time over
total time).

Pure numpy: no model, no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from lede_env.engine.stop_rules import StopRule, parse_stop_rule
from lede_env.reward import step_reward
from lede_env.traces import Trace, TraceSet

__all__ = ["OracleResult", "Rollout", "solve", "policy_table", "q_table", "evaluate_actions", "rollout_static", "best_static",
           "aggregate_speedup"]

_TIE_RTOL = 1e-9


@dataclass(frozen=True)
class Rollout:
    """Totals of one episode: return (sum of rewards), tokens produced (``N = T - 1``), total cost in
    seconds, wall-clock speedup ``N * c_ar / total_cost`` (1.0 for an episode with no steps), steps."""

    episode_return: float
    tokens: int
    total_cost: float
    speedup: float
    steps: int


@dataclass(frozen=True)
class OracleResult:
    """An episode with the actions that produced it: ``actions[i] = (exit column j, index into
    spec_lengths)`` of step ``i``. Returned by :func:`solve` (the optimal sequence) and
    :func:`evaluate_actions` (any sequence)."""

    actions: tuple[tuple[int, int], ...]
    episode_return: float
    tokens: int
    total_cost: float
    speedup: float
    steps: int


# ------------------------------------------------------------------------------------------ checks
def _check(trace: Trace, cost_table: np.ndarray, spec_lengths: Sequence[int]
           ) -> tuple[np.ndarray, np.ndarray, float]:
    table = np.asarray(cost_table, dtype=np.float64)
    ks = np.asarray([int(k) for k in spec_lengths], dtype=np.int64)
    J = len(trace.exit_layers)
    if table.ndim != 2 or table.shape[0] != J:
        raise ValueError(f"cost_table must have shape [J, Dmax+1] with J = {J} exit columns of the trace "
                         f"(exit layers {list(trace.exit_layers)}); got shape {table.shape}.")
    if ks.ndim != 1 or ks.size == 0 or (ks < 0).any():
        raise ValueError(f"spec_lengths must be a non-empty list of lengths >= 0; got {list(spec_lengths)}.")
    if ks.max() >= table.shape[1]:
        raise ValueError(f"spec_lengths go up to {ks.max()} but cost_table only covers drafts of up to "
                         f"{table.shape[1] - 1} tokens (shape {table.shape}).")
    if not np.isfinite(table).all():
        raise ValueError("cost_table has non-finite entries.")
    c_ar = float(table[0, 0])
    if not c_ar > 0:
        raise ValueError(f"cost_table[0, 0] (the autoregressive step, c_ar) must be > 0; got {c_ar}.")
    return table, ks, c_ar


def check_lam(lam: float, optimise: bool) -> float:
    """``lam`` as a float; ``ValueError`` unless finite (and > 0 when ``optimise``: module docstring)."""
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"lam must be a number, got {lam!r}.") from None
    if not np.isfinite(value):
        raise ValueError(f"lam must be finite, got {lam!r}.")
    if optimise and value <= 0:
        raise ValueError(f"lam must be > 0 for the oracle and best static, got {lam!r}: they maximise the return "
                         "N - lam * cost / c_ar, which for every lam > 0 means the highest speedup (the same actions "
                         "for any lam > 0); with lam = 0 every action sequence has the same return, with lam < 0 the "
                         "slowest one would win.")
    return value


def _speedup(tokens: int, total_cost: float, c_ar: float) -> float:
    return 1.0 if tokens == 0 else tokens * c_ar / total_cost


# ------------------------------------------------------------------------------------------ tables
@dataclass(frozen=True)
class _Tables:
    """Outcome of every action at every position, arrays of shape [T-1, J, K]."""

    drafted: np.ndarray
    produced: np.ndarray
    cost: np.ndarray
    reward: np.ndarray


def _stop_lengths(trace: Trace, stops: Sequence[StopRule], kmax: int) -> np.ndarray:
    """``first[t, j, s]``: the draft length at which rule ``s`` stops a draft from pending ``g_t`` at exit column
    ``j`` with no cap (``kmax + 1`` when it does not stop within ``kmax`` tokens): `Trace.drafted_under` for all
    (t, j, s) at once, the same reading of the trace (a test holds the two equal)."""
    if any(r.needs_entropy for r in stops) and not trace.has_entropy:
        raise ValueError("An entropy stop rule (H>...) needs the draft entropies, which this trace did not record "
                         "(trace format 1): re-record it with `lede trace`.")
    last = trace.length - 1
    J, S = len(trace.exit_layers), len(stops)
    never = kmax + 1
    first = np.full((last, J, S), never, dtype=np.int64)
    p = trace.draft_maxprob.astype(np.float64)
    H = trace.draft_entropy.astype(np.float64)
    p_first, H_first = trace.step_maxprob().astype(np.float64), trace.step_entropy().astype(np.float64)
    product = np.ones((last, J, S))
    t = np.arange(last)
    for i in range(1, kmax + 1):
        rows = t + i - 1
        valid = (rows < last)[:, None]                     # past the end of the trace: no stop
        r = np.minimum(rows, last - 1)
        pr, hr = (p_first, H_first) if i == 1 else (p[r], H[r])      # [T-1, J]; the first draft may differ
        for s, rule in enumerate(stops):
            if rule.kind == "none":
                continue
            if rule.kind == "p":
                cond = pr < rule.threshold
            elif rule.kind == "prod":
                product[:, :, s] = np.where(valid, product[:, :, s] * pr, product[:, :, s])
                cond = product[:, :, s] < rule.threshold
            else:
                cond = hr > rule.threshold
            hit = valid & cond & (first[:, :, s] == never)
            first[:, :, s] = np.where(hit, i, first[:, :, s])
    return first


def _tables(trace: Trace, table: np.ndarray, ks: np.ndarray, c_ar: float, lam: float,
            stops: Sequence[StopRule] | None = None) -> _Tables:
    """Vectorised ``trace.outcome(t, j, ks[kidx])`` for all (t, j, kidx) (the same rule; a test holds the
    two equal), plus each step's cost and reward. With ``stops`` the last axis enumerates ``(kidx, s)`` as
    ``kidx * S + s`` (``trace.outcome(t, j, ks[kidx], stops[s])``)."""
    T = trace.length
    last = T - 1
    t = np.arange(last, dtype=np.int64)
    max_draft = np.fromiter((trace.max_draft(int(i)) for i in t), dtype=np.int64, count=last)
    cap = np.minimum(ks[None, :], max_draft[:, None])                                   # [T-1, K]
    J = table.shape[0]
    if stops is None:
        drafted = np.broadcast_to(cap[:, None, :], (last, J, len(ks)))
    else:
        first = _stop_lengths(trace, stops, int(ks.max()))                              # [T-1, J, S]
        drafted = np.minimum(cap[:, None, :, None], first[:, :, None, :]).reshape(last, J, -1)
    run = np.asarray(trace.run_length, dtype=np.int64)                                  # [T-1, J]
    accepted = np.where(drafted > 0, np.minimum(run[:, :, None], drafted), 0)
    to_end = (last - t)[:, None, None]
    produced = np.where(t[:, None, None] + accepted >= last, to_end, accepted + 1)      # [T-1, J, A]
    cost = table[np.arange(J)[None, :, None], drafted]
    reward = step_reward(produced, cost, c_ar, lam)
    return _Tables(drafted=drafted, produced=produced, cost=cost, reward=reward)


def _policy(trace: Trace, table: np.ndarray, ks: np.ndarray, c_ar: float, lam: float,
            stops: Sequence[StopRule] | None = None) -> tuple[np.ndarray, np.ndarray, _Tables]:
    """Backward induction. Returns ``V`` [T] (optimal return-to-go from each position), ``policy`` [T-1, 2]
    (the optimal (j, a) at each position, on or off the optimal path; ``a`` is ``kidx``, or ``kidx * S + s`` with
    stop rules) and the tables."""
    tabs = _tables(trace, table, ks, c_ar, lam, stops)
    last = trace.length - 1
    J, K = table.shape[0], len(ks)
    S = 1 if stops is None else len(stops)
    A = K * S
    V = np.zeros(last + 1)
    policy = np.zeros((last, 2), dtype=np.int64)
    # Tie-break key: fewer drafted tokens, then lower j, then shorter requested k, then lower kidx, then lower s.
    krank = np.empty(K, dtype=np.int64)
    krank[np.lexsort((np.arange(K), ks))] = np.arange(K)
    arank = (krank[:, None] * S + np.arange(S)[None, :]).reshape(-1)
    jk = (np.arange(J)[:, None] * A + arank[None, :])
    key = tabs.drafted * (J * A) + jk[None]
    nxt = np.arange(last)[:, None, None] + tabs.produced
    big = np.iinfo(np.int64).max
    for t in range(last - 1, -1, -1):
        q = tabs.reward[t] + V[nxt[t]]
        best = q.max()
        ties = q >= best - _TIE_RTOL * max(1.0, abs(best))
        j, kidx = np.unravel_index(int(np.argmin(np.where(ties, key[t], big))), (J, A))
        policy[t] = (j, kidx)
        V[t] = q[j, kidx]
    return V, policy, tabs


# ------------------------------------------------------------------------------------------ public API
def solve(trace: Trace, cost_table: np.ndarray, spec_lengths: Sequence[int],
          lam: float = 1.0, stop_rules: Sequence[str] | None = None) -> OracleResult:
    """The best action sequence for ``trace`` (exact, by the backward recurrence in the module docstring).

    Action set: every ``(j, kidx)`` with ``j in range(len(trace.exit_layers))`` and
    ``kidx in range(len(spec_lengths))``; with ``stop_rules`` every ``(j, kidx, s)`` (the environment's
    ``stop_rules`` option, replayed by `Trace.drafted_under`). The reported totals come from replaying the chosen
    actions forward (rewards summed in step order), so they match what an environment would accumulate.
    A trace with ``T == 1`` has no steps: return 0, speedup 1.0.

    Stop rules cannot raise the optimum: a step under any rule drafts some ``d`` tokens and accepts
    ``min(run, d)``, which the fixed length ``k = d`` does too at the same cost (if ``d`` is a configured length).
    So with the lengths ``0..kmax`` the optimum equals the one without stop rules; a test holds it."""
    lam = check_lam(lam, optimise=True)
    table, ks, c_ar = _check(trace, cost_table, spec_lengths)
    stops = None if stop_rules is None else [parse_stop_rule(r) for r in stop_rules]
    if trace.length == 1:
        return OracleResult(actions=(), episode_return=0.0, tokens=0, total_cost=0.0, speedup=1.0, steps=0)
    _, policy, tabs = _policy(trace, table, ks, c_ar, 1.0, stops)     # the same optimum for every lam > 0
    if lam != 1.0:
        tabs = _Tables(drafted=tabs.drafted, produced=tabs.produced, cost=tabs.cost,
                       reward=step_reward(tabs.produced, tabs.cost, c_ar, lam))
    res = _follow(trace, table, tabs, c_ar, lambda t: (int(policy[t, 0]), int(policy[t, 1])))
    if stops is None:
        return res
    S = len(stops)
    return replace(res, actions=tuple((j, a // S, a % S) for j, a in res.actions))


def policy_table(trace: Trace, cost_table: np.ndarray, spec_lengths: Sequence[int],
                 stop_rules: Sequence[str] | None = None) -> np.ndarray:
    """The optimal action from every pending position of ``trace``, on the optimal path or off it: an int64 array
    [T-1, 2] of ``(j, kidx)``, or [T-1, 3] of ``(j, kidx, s)`` with ``stop_rules`` (the oracle agent plays it)."""
    table, ks, c_ar = _check(trace, cost_table, spec_lengths)
    width = 2 if stop_rules is None else 3
    if trace.length == 1:
        return np.zeros((0, width), dtype=np.int64)
    stops = None if stop_rules is None else [parse_stop_rule(r) for r in stop_rules]
    policy = _policy(trace, table, ks, c_ar, 1.0, stops)[1]
    if stops is None:
        return policy
    S = len(stops)
    return np.stack([policy[:, 0], policy[:, 1] // S, policy[:, 1] % S], axis=1)


def q_table(trace: Trace, cost_table: np.ndarray, spec_lengths: Sequence[int], lam: float = 1.0) -> np.ndarray:
    """The hindsight action values ``Q*(t, j, kidx)`` [T-1, J, K]: the reward of action ``(j, kidx)`` from pending
    position ``t`` plus the optimal return-to-go from where it lands (`policy_table` is their argmax, up to its
    tie-break). What an imitation study regresses from the observation."""
    lam = check_lam(lam, optimise=True)
    table, ks, c_ar = _check(trace, cost_table, spec_lengths)
    if trace.length == 1:
        return np.zeros((0, table.shape[0], len(ks)))
    V, _, tabs = _policy(trace, table, ks, c_ar, lam)
    nxt = np.arange(trace.length - 1)[:, None, None] + tabs.produced
    return tabs.reward + V[nxt]


def _follow(trace: Trace, table: np.ndarray, tabs: _Tables, c_ar: float,
            choose: Callable[[int], tuple[int, int]]) -> OracleResult:
    """Play ``choose(t)`` from t = 0 to the end. The total cost is ``sum count[j, d] * cost_table[j, d]``
    (steps counted per cell, not summed step by step), so an all-autoregressive episode costs exactly
    ``N * c_ar`` and has speedup exactly 1.0."""
    last = trace.length - 1
    J, K = tabs.produced.shape[1:]
    counts = np.zeros(table.shape)
    actions: list[tuple[int, int]] = []
    ret = 0.0
    t = 0
    while t < last:
        j, kidx = choose(t)
        if not (0 <= j < J and 0 <= kidx < K):
            raise ValueError(f"Action ({j}, {kidx}) at position {t} is outside the action space "
                             f"[0, {J}) x [0, {K}).")
        actions.append((j, kidx))
        ret += float(tabs.reward[t, j, kidx])
        counts[j, tabs.drafted[t, j, kidx]] += 1
        t += int(tabs.produced[t, j, kidx])
    total_cost = float((counts * table).sum())
    return OracleResult(actions=tuple(actions), episode_return=ret, tokens=last, total_cost=total_cost,
                        speedup=_speedup(last, total_cost, c_ar), steps=len(actions))


def evaluate_actions(trace: Trace, cost_table: np.ndarray, spec_lengths: Sequence[int],
                     actions: Sequence[tuple[int, int]] | Callable[[int], tuple[int, int]],
                     lam: float = 1.0) -> OracleResult:
    """Replay ``actions`` on ``trace``: a sequence of ``(j, kidx)`` (one per step; it must last until the
    episode ends, extra entries are an error) or a function ``position t -> (j, kidx)``. Any finite ``lam``."""
    lam = check_lam(lam, optimise=False)
    table, ks, c_ar = _check(trace, cost_table, spec_lengths)
    if trace.length == 1:
        if not callable(actions) and len(actions) > 0:
            raise ValueError("The trace has no steps (T == 1) but actions were given.")
        return OracleResult(actions=(), episode_return=0.0, tokens=0, total_cost=0.0, speedup=1.0, steps=0)
    tabs = _tables(trace, table, ks, c_ar, lam)
    if callable(actions):
        choose = lambda t: tuple(int(a) for a in actions(t))  # noqa: E731
    else:
        seq = [tuple(int(a) for a in pair) for pair in actions]
        it = iter(seq)

        def choose(t: int) -> tuple[int, int]:
            try:
                return next(it)
            except StopIteration:
                raise ValueError(f"The {len(seq)} actions ran out at position {t} before the episode "
                                 f"ended (T = {trace.length}).") from None
    res = _follow(trace, table, tabs, c_ar, choose)
    if not callable(actions) and res.steps != len(actions):
        raise ValueError(f"The episode ended after {res.steps} steps but {len(actions)} actions were given.")
    return res


def rollout_static(trace: Trace, cost_table: np.ndarray, j: int, k: int, lam: float = 1.0) -> Rollout:
    """Play the fixed action (exit column ``j``, requested length ``k``) until the episode ends."""
    res = evaluate_actions(trace, cost_table, (int(k),), lambda t: (int(j), 0), lam)
    return Rollout(episode_return=res.episode_return, tokens=res.tokens, total_cost=res.total_cost,
                   speedup=res.speedup, steps=res.steps)


def aggregate_speedup(results: Iterable[OracleResult | Rollout]) -> float:
    """Token-weighted speedup of several episodes: ``sum N * c_ar / sum cost`` (total autoregressive time
    over total time). Each result's autoregressive time is ``speedup * total_cost`` (= ``N * c_ar``), so
    no cost table is needed. Episodes with no steps count for nothing; 1.0 when there is no cost at all."""
    ar = cost = 0.0
    for r in results:
        ar += r.speedup * r.total_cost
        cost += r.total_cost
    return 1.0 if cost == 0 else ar / cost


def best_static(traces: Iterable[Trace] | TraceSet, cost_table: np.ndarray, spec_lengths: Sequence[int],
                lam: float = 1.0) -> tuple[int, int, float]:
    """Grid search over the fixed actions ``(j, kidx)``: the one with the highest aggregate speedup
    ``sum_traces N * c_ar / sum_traces cost`` over ``traces`` (token-weighted; as the total N is fixed, this
    is also the highest total return for any ``lam > 0``). Ties: shorter requested length, then lower j.
    Returns ``(j, kidx, speedup)``. ``lam`` must be > 0 (module docstring); the choice does not depend on it."""
    check_lam(lam, optimise=True)
    traces = list(traces.traces if isinstance(traces, TraceSet) else traces)
    if not traces:
        raise ValueError("best_static needs at least one trace.")
    table, ks, c_ar = _check(traces[0], cost_table, spec_lengths)
    J, K = table.shape[0], len(ks)
    tokens = 0
    counts = np.zeros((J, K, table.shape[1]))    # steps of each static policy per drafted length
    jj, kk = np.meshgrid(np.arange(J), np.arange(K), indexing="ij")
    for tr in traces:
        _check(tr, table, spec_lengths)
        if tr.length == 1:
            continue
        tabs = _tables(tr, table, ks, c_ar, lam)
        last = tr.length - 1
        tokens += last
        # All J*K static policies walk the trace at once.
        pos = np.zeros((J, K), dtype=np.int64)
        live = pos < last
        while live.any():
            p, j, k = pos[live], jj[live], kk[live]
            np.add.at(counts, (j, k, tabs.drafted[p, j, k]), 1)
            pos[live] = p + tabs.produced[p, j, k]
            live = pos < last
    cost = (counts * table[:, None, :]).sum(-1)
    if tokens == 0:
        return 0, int(np.argmin(ks)), 1.0
    speed = tokens * c_ar / cost
    order = sorted(((int(ks[kidx]), j, kidx) for j in range(J) for kidx in range(K)))
    best = max(speed.max(), 0.0)
    for _, j, kidx in order:
        if speed[j, kidx] >= best * (1 - _TIE_RTOL):
            return j, kidx, float(speed[j, kidx])
    raise AssertionError("unreachable")
