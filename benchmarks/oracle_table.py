"""Oracle and best static speedups of several trace files side by side (prints a table; no model needed).

Each trace file is priced with the stored latency profile of its model, dtype and exit heads (or --profile), on
the execution path --path. Typical use, after `lede trace` on the TEST prompts with different heads:

    .venv/bin/python benchmarks/oracle_table.py artifacts/traces/smollm2-135m-mixed-test-*.npz
"""

from __future__ import annotations

import argparse

from lede_env.analysis import oracle_summary, profile_for_traces
from lede_env.engine.profile import LatencyProfile
from lede_env.traces import TraceSet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--profile", default=None, help="price every file with this latency profile JSON")
    ap.add_argument("--path", default="auto", help="execution path of the stored profiles")
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--kmax", type=int, default=12)
    args = ap.parse_args()
    spec = tuple(range(args.kmax + 1))
    rows = []
    for path in args.traces:
        ts = TraceSet.load(path)
        prof = LatencyProfile.load(args.profile) if args.profile else profile_for_traces(ts, 2, args.path)
        s = oracle_summary(ts, prof.cost_table(ts.traces[0].exit_layers, args.kmax), spec, args.lam)
        rows.append((path, ts, prof, s))
    layers = sorted({L for _, _, _, s in rows for L in s["agreement"]})
    print(f"{'traces':58s} {'heads':>12s} {'tokens':>6s} " + " ".join(f"{'L' + str(L):>5s}" for L in layers)
          + f" {'best static':>14s} {'oracle':>7s}  profile")
    for path, ts, prof, s in rows:
        agree = " ".join(f"{s['agreement'][L]:5.2f}" if L in s["agreement"] else "    -" for L in layers)
        L, k = s["best_static"]
        static = f"{s['best_static_speedup']:.2f}x (L{L},k{k})"
        print(f"{path[-58:]:58s} {ts.meta['exit_heads']:>12s} {s['tokens']:6d} {agree} {static:>14s} "
              f"{s['oracle_speedup']:6.2f}x  {prof.key}")
    print("agreement: top-1 agreement of each exit with the full model's greedy token; speedups: modelled with the "
          "latency profile, over plain greedy on the same path (lam = %g)" % args.lam)


if __name__ == "__main__":
    main()
