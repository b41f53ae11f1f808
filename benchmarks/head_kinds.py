"""The table of exit-head kinds on SmolLM2 (prints it; not a test; replay only, no model): per kind, the first
draft's agreement per exit on the test traces, the drafts after it, the draft's cost per token and its share of a
plain step (latency profile), the best static setting and the oracle (modelled with the same profile).

``eagle`` traces record both kinds at once: their ``draft_*`` arrays are the ``kl`` map's drafts (eagle's later
drafts) and their ``first_*`` arrays eagle's first drafts, so ``kl`` here is the same traces with the first drafts
read from ``draft_*`` (the same heads, fitted on the same text, minus the verified feature). Both are priced with the
one profile (measured with the eagle heads; a kl first draft costs the smaller head, about 30 us less per step).

    .venv/bin/python benchmarks/head_kinds.py [--traces mixed:test,humaneval:test] [--spec 0,1,2,3,4,6,8]
        [--profile path.json]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from lede_env.analysis import oracle_summary, profile_for_traces
from lede_env.defaults import shipped_traces
from lede_env.engine.profile import LatencyProfile
from lede_env.traces import TraceSet


def without_first(ts: TraceSet) -> TraceSet:
    """The traces as heads without the verified feature draft them (the later drafts' map for every draft)."""
    return TraceSet(tuple(replace(t, first_tokens=None, first_maxprob=None, first_entropy=None) for t in ts.traces),
                    ts.meta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", default="mixed:test,humaneval:test")
    ap.add_argument("--spec", default="0,1,2,3,4,5,6,8")
    ap.add_argument("--profile", default=None)
    args = ap.parse_args()
    spec = tuple(int(k) for k in args.spec.split(","))
    for name in args.traces.split(","):
        path = shipped_traces(name)
        ts = TraceSet.load(path)
        prof = LatencyProfile.load(args.profile) if args.profile else profile_for_traces(ts, source=str(path))
        exits = ts.traces[0].exit_layers
        table = prof.cost_table(exits, max(spec))
        print(f"\n{name}: {len(ts)} traces, profile {prof.key} ({prof.cpu})")
        print("draft cost per token (ms) / share of a plain step: "
              + ", ".join(f"L{L} {prof.draft_cost[L] * 1e3:.2f} / {prof.draft_cost[L] / prof.c_ar:.0%}"
                          for L in exits))
        kinds = [("eagle", ts), ("kl", without_first(ts))] if ts.traces[0].has_first else [(ts.meta["exit_heads"], ts)]
        for kind, sub in kinds:
            s = oracle_summary(sub, table, spec)
            L, k = s["best_static"]
            print(f"{kind:>6}: first-draft agreement " + " ".join(f"L{x}={a:.3f}" for x, a in s["agreement"].items()))
            print(f"{'':>6}  later drafts          " + " ".join(f"L{x}={a:.3f}" for x, a in s["later_agreement"].items()))
            print(f"{'':>6}  best static L{L} k{k} {s['best_static_speedup']:.3f}x (first-draft agreement there "
                  f"{s['agreement'][L]:.3f}); oracle {s['oracle_speedup']:.3f}x")


if __name__ == "__main__":
    main()
