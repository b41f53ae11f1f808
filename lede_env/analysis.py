"""Analysis over traces: oracle and best static speedups, agreement per exit layer (no model needed)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lede_env.oracle import _TIE_RTOL, aggregate_speedup, best_static, solve
from lede_env.traces import TraceSet

_PROFILE_KEYS = ("model", "dtype", "exit_heads")   # what `lede trace` writes and a stored profile is found by


def check_trace_meta(ts: TraceSet, keys=_PROFILE_KEYS, source: str | None = None) -> dict:
    """The traces' metadata, if it has ``keys`` (``ValueError`` naming ``source``, the file, and the missing keys
    otherwise: a trace file written by other code than `lede trace`)."""
    missing = [k for k in keys if k not in ts.meta]
    if missing:
        where = source if source is not None else "The trace set"
        raise ValueError(f"{where} lacks the trace metadata {missing} that `lede trace` writes (model, dtype, "
                         "exit_heads): re-record it with `lede trace`, or pass a latency profile (--profile).")
    return ts.meta


def profile_for_traces(ts: TraceSet, threads: int = 2, path: str = "auto", source: str | None = None):
    """The stored latency profile matching the traces' model, dtype and exit heads, for execution path ``path``
    (``source``: the trace file, named by the error when the metadata lacks one of them)."""
    from lede_env.engine.profile import find_profile

    m = check_trace_meta(ts, _PROFILE_KEYS, source)
    return find_profile(m["model"], m["dtype"], "cpu", threads, path, m["exit_heads"])


def oracle_summary(ts: TraceSet, cost_table: np.ndarray, spec_lengths: Sequence[int], lam: float = 1.0) -> dict:
    """Oracle speedup, best static setting and its speedup, agreement per exit layer (``agreement``: a step's first
    draft; ``later_agreement``: the drafts after it, which differ for heads that read the verified feature), and the
    oracle's return
    under ``lam`` (> 0: `lede_env.oracle`'s docstring says why). Both optimise the same objective, so the
    oracle's speedup is never below best static's."""
    traces = list(ts.traces if isinstance(ts, TraceSet) else ts)
    if not traces:
        raise ValueError("The trace set is empty: there is nothing to compute an oracle on.")
    results = [solve(t, cost_table, spec_lengths, lam) for t in traces if t.length > 1]
    j, kidx, static = best_static(traces, cost_table, spec_lengths, lam)
    layers = traces[0].exit_layers
    def mean_of(name: str) -> list[float]:
        stepped = [getattr(t, name) for t in traces if t.length > 1]
        return np.concatenate(stepped).mean(axis=0).tolist() if stepped else [float("nan")] * len(layers)

    agree, later = mean_of("first_agree"), mean_of("agree")
    oracle = aggregate_speedup(results)
    # Cannot happen for lam > 0 (same objective): a bug if it does, up to the DP's tie rule, which may give up a
    # relative _TIE_RTOL of the return-to-go at each position it solves (|V| <= tokens + cost / c_ar, so relative to
    # the total cost at most _TIE_RTOL * (1 + speedup) per position), summed over the positions (at most one step
    # each).
    positions = sum(t.length - 1 for t in traces)
    if oracle < static * (1 - _TIE_RTOL * max(1, positions) * (1 + max(oracle, static))):
        raise AssertionError(f"oracle speedup {oracle} below best static {static}")
    return {"oracle_speedup": oracle, "best_static": (layers[j], spec_lengths[kidx]),
            "best_static_speedup": static, "agreement": dict(zip(layers, agree)),
            "later_agreement": dict(zip(layers, later)),
            "oracle_return": float(sum(r.episode_return for r in results)),
            "tokens": int(sum(t.length - 1 for t in traces))}


def check_spec_lengths(spec_lengths: Sequence[int]) -> tuple[int, ...]:
    """Speculation lengths as a tuple: non-empty, distinct, each >= 0 (``ValueError`` otherwise)."""
    try:
        ks = tuple(int(k) for k in spec_lengths)
    except (TypeError, ValueError):
        raise ValueError(f"spec_lengths must be integers, got {spec_lengths!r}.") from None
    if not ks or min(ks) < 0 or len(set(ks)) != len(ks):
        raise ValueError(f"spec_lengths must be a non-empty list of distinct lengths >= 0, got {list(ks)}.")
    return ks


def oracle_report(path: str, spec_lengths: Sequence[int], lam: float = 1.0, threads: int = 2,
                  profile: str | None = None, engine_path: str = "auto") -> dict:
    """Print the oracle and best static speedups of a trace file under its stored latency profile (or the
    profile JSON ``profile``). Checks ``lam`` and ``spec_lengths`` before reading anything."""
    from lede_env.engine.profile import LatencyProfile
    from lede_env.oracle import check_lam

    check_lam(lam, optimise=True)
    spec_lengths = check_spec_lengths(spec_lengths)
    ts = TraceSet.load(path)
    meta = check_trace_meta(ts, _PROFILE_KEYS, str(path))
    prof = LatencyProfile.load(profile) if profile else profile_for_traces(ts, threads, engine_path, str(path))
    table = prof.cost_table(ts.traces[0].exit_layers, max(spec_lengths))
    s = oracle_summary(ts, table, spec_lengths, lam)
    print(f"{path}: {len(ts)} traces, {s['tokens']} tokens; model {meta['model']}, heads {meta['exit_heads']}")
    print("top-1 agreement per exit layer: " + ", ".join(f"L{L}={a:.2f}" for L, a in s["agreement"].items()))
    print(f"oracle speedup {s['oracle_speedup']:.2f}x; best static L={s['best_static'][0]}, k={s['best_static'][1]}: "
          f"{s['best_static_speedup']:.2f}x (latency profile {prof.key})")
    print(f"oracle return at lam={lam:g}: {s['oracle_return']:.2f} (r = tokens - lam * cost / c_ar, summed over "
          f"the {len(ts)} traces)")
    return s


def static_speedup(profile, exit_layer: int, k: int, alpha: float) -> float:
    """Modelled speedup of the static setting (exit_layer, k) over plain greedy if every draft token were accepted
    independently with probability ``alpha`` (expected tokens per step ``(1 - alpha^(k+1)) / (1 - alpha)``)."""
    tokens = k + 1 if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)
    return tokens * profile.c_ar / profile.step_cost(exit_layer, k)


def required_agreement(profile, exit_layers: Sequence[int], target: float = 1.1, kmax: int = 12) -> dict[int, float]:
    """Per exit layer: the smallest per-token acceptance rate with which some static k in 1..kmax reaches
    ``target`` speedup under ``profile`` (bisection; 1.0 or above: unreachable even with perfect drafts, returned
    as ``inf``). Compare with the measured agreement to see whether drafts or costs are what is missing."""
    out = {}
    for L in exit_layers:
        best = max(static_speedup(profile, L, k, 1.0) for k in range(1, kmax + 1))
        if best < target:
            out[L] = float("inf")
            continue
        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            if max(static_speedup(profile, L, k, mid) for k in range(1, kmax + 1)) >= target:
                hi = mid
            else:
                lo = mid
        out[L] = hi
    return out
