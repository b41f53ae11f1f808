"""Live wall-clock speedup of static (L, k) settings over plain greedy decoding on SmolLM2 (prints a table; not a
test). Exactness is checked on every prompt: each setting's output must equal plain greedy's.

Interleaved, so that every ratio compares methods under the same machine load (a torch call leaves its thread pool
spinning for a while, so methods run in blocks get different machines): for each prompt, plain greedy and every
setting run one after the other, the order reversed on every other prompt, ``--repeats`` rounds. Reported per
setting: the median over prompts of (plain greedy time / setting time) on the same prompt (each time the median of
its rounds), the aggregate ratio (total plain time / total setting time), mean tokens per step and exactness.

    .venv/bin/python benchmarks/live_static.py --prompts mixed:test --settings 1:1,2:1,4:1 [--heads default]
        [--limit N] [--max-new-tokens 128] [--repeats 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from tqdm import tqdm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", default="mixed:test")
    ap.add_argument("--settings", default="1:1,2:1,4:1", help="comma-separated L:k")
    ap.add_argument("--heads", default="default")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from lede_env.wiring import build_decoder

    settings = [tuple(int(x) for x in s.split(":")) for s in args.settings.split(",")]
    setup = build_decoder("smollm2-135m", heads=args.heads, threads=args.threads)
    dec = setup.decoder
    ids = setup.encode(args.prompts, limit=args.limit)
    print(f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {len(ids)} prompts of {args.prompts}, "
          f"{args.max_new_tokens} new tokens, heads {setup.heads_label}, path {dec.path}, {args.threads} threads")
    dec.generate(ids[0], 8)   # warm-up
    methods = [("plain", 0, 0)] + [(f"L{L} k{k}", L, k) for L, k in settings]
    times = {m[0]: [] for m in methods}
    tokens = {m[0]: 0 for m in methods}
    steps = {m[0]: 0 for m in methods}
    exact = {m[0]: True for m in methods}
    for i, p in enumerate(tqdm(ids, desc="prompts")):
        order = methods if i % 2 == 0 else methods[::-1]
        per: dict[str, list[float]] = {m[0]: [] for m in methods}
        outs = {}
        for _ in range(args.repeats):
            for name, L, k in order:
                t0 = time.perf_counter()
                out, res = dec.generate(p, args.max_new_tokens, exit_layer=max(L, 1), k=k)
                per[name].append(time.perf_counter() - t0)
                outs[name] = (out, len(res))
        ref = outs["plain"][0]
        for name, _, _ in methods:
            times[name].append(statistics.median(per[name]))
            tokens[name] += len(outs[name][0])
            steps[name] += outs[name][1]
            exact[name] &= outs[name][0] == ref
    plain = times["plain"]
    print(f"plain greedy: {tokens['plain'] / sum(plain):.1f} tokens/s")
    print(f"{'setting':>10} {'median ratio':>13} {'aggregate':>10} {'tokens/step':>12} {'exact':>6}")
    for name, _, _ in methods[1:]:
        ratios = [a / b for a, b in zip(plain, times[name])]
        print(f"{name:>10} {statistics.median(ratios):12.3f}x {sum(plain) / sum(times[name]):9.3f}x "
              f"{tokens[name] / max(1, steps[name]):12.2f} {str(exact[name]):>6}")
    print(f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
