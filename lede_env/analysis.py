"""Analysis over traces: oracle and best static speedups, agreement per exit layer (no model needed)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lede_env.oracle import aggregate_speedup, best_static, solve
from lede_env.traces import TraceSet


def profile_for_traces(ts: TraceSet, threads: int = 2, path: str = "auto"):
    """The stored latency profile matching the traces' model, dtype and exit heads, for execution path ``path``."""
    from lede_env.engine.profile import find_profile

    m = ts.meta
    return find_profile(m["model"], m["dtype"], "cpu", threads, path, m["exit_heads"])


def oracle_summary(ts: TraceSet, cost_table: np.ndarray, spec_lengths: Sequence[int], lam: float = 1.0) -> dict:
    """Oracle speedup, best static setting and its speedup, agreement per exit layer."""
    results = [solve(t, cost_table, spec_lengths, lam) for t in ts.traces if t.length > 1]
    j, kidx, static = best_static(list(ts.traces), cost_table, spec_lengths, lam)
    layers = ts.traces[0].exit_layers
    agree = np.concatenate([t.agree for t in ts.traces if t.length > 1])
    return {"oracle_speedup": aggregate_speedup(results), "best_static": (layers[j], spec_lengths[kidx]),
            "best_static_speedup": static, "agreement": dict(zip(layers, agree.mean(axis=0).tolist())),
            "tokens": int(sum(t.length - 1 for t in ts.traces))}


def oracle_report(path: str, spec_lengths: Sequence[int], lam: float = 1.0, threads: int = 2,
                  profile: str | None = None, engine_path: str = "auto") -> dict:
    """Print the oracle and best static speedups of a trace file under its stored latency profile (or the
    profile JSON ``profile``)."""
    from lede_env.engine.profile import LatencyProfile

    ts = TraceSet.load(path)
    prof = LatencyProfile.load(profile) if profile else profile_for_traces(ts, threads, engine_path)
    table = prof.cost_table(ts.traces[0].exit_layers, max(spec_lengths))
    s = oracle_summary(ts, table, spec_lengths, lam)
    print(f"{path}: {len(ts)} traces, {s['tokens']} tokens; model {ts.meta['model']}, heads {ts.meta['exit_heads']}")
    print("top-1 agreement per exit layer: " + ", ".join(f"L{L}={a:.2f}" for L, a in s["agreement"].items()))
    print(f"oracle speedup {s['oracle_speedup']:.2f}x; best static L={s['best_static'][0]}, k={s['best_static'][1]}: "
          f"{s['best_static_speedup']:.2f}x (latency profile {prof.key})")
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
