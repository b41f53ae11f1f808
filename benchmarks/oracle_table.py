"""Oracle and best static speedups of several trace files side by side (prints a table; no model needed).

Each trace file is priced with the stored latency profile of its model, dtype and exit heads (or --profile), on
the execution path --path. Typical use, after `lede trace` on the TEST prompts with different heads:

    .venv/bin/python benchmarks/oracle_table.py artifacts/traces/smollm2-135m-mixed-test-*.npz
"""

from __future__ import annotations

import argparse
import dataclasses

from lede_env.analysis import oracle_summary, profile_for_traces, required_agreement
from lede_env.engine.profile import LatencyProfile
from lede_env.traces import TraceSet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--profile", default=None, help="price every file with this latency profile JSON")
    ap.add_argument("--path", default="auto", help="execution path of the stored profiles")
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--kmax", type=int, default=12)
    ap.add_argument("--target", type=float, default=1.1,
                    help="also print the per-token acceptance each exit needs for this static speedup")
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
    seen = {}
    for _, _, prof, _ in rows:
        seen.setdefault(prof.key, prof)
    for key, prof in seen.items():
        need = required_agreement(prof, layers, args.target, args.kmax)
        print(f"{'acceptance needed for ' + format(args.target, '.2f') + 'x static':58s} {'':>12s} {'':>6s} "
              + " ".join(f"{need[L]:5.2f}" for L in layers) + f"  ({key})")
        # the same if verifying q positions cost no more than one (the ideal that issue 6 aims at)
        flat = dataclasses.replace(prof, layer_cost=(prof.layer_cost[0],) * len(prof.layer_cost),
                                   head_cost=(prof.head_cost[0],) * len(prof.head_cost),
                                   verify_cost=(prof.verify_cost[0],) * len(prof.verify_cost))
        need = required_agreement(flat, layers, args.target, args.kmax)
        print(f"{'  ... if verifying q positions cost as much as one':58s} {'':>12s} {'':>6s} "
              + " ".join(f"{need[L]:5.2f}" for L in layers))
    print("agreement: top-1 agreement of each exit with the full model's greedy token; speedups: modelled with the "
          "latency profile, over plain greedy on the same path (lam = %g); 'acceptance needed': the i.i.d. per-token "
          "acceptance with which the best k at that exit reaches the target (inf: not even with perfect drafts)" % args.lam)


if __name__ == "__main__":
    main()
