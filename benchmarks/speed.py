"""Engine speed per execution path on SmolLM2 (prints a table; not a test).

In one run, interleaved so that every ratio compares paths under the same machine load:
  * plain greedy tokens/s (prefill included) of each path and of `model.generate(do_sample=False)`, and the
    ratio to generate measured prompt by prompt;
  * one static self-speculative setting per path (tokens/s and its speedup over the same path's plain greedy);
  * the decoder's verification of q = 1..13 positions (q - 1 drafts at exit 1: layer 0 on one position, the
    others on q, one at a time on a stack that is not batch-invariant; final norm, LM head, argmax), ratio to q = 1;
  * one decoder layer at q = 1, the draft cost per exit layer, the LM head (norm, head, argmax) at q = 1, 13;
  * whether each path meets the engine-speed bar (plain greedy >= 2x generate; verify 13 <= 1.3x verify 1).
Every path computes the LM head with its own kernels (`stack.logits`). The draft rows use the exit heads given
with --heads (and their draft vocabulary, if they carry one).
All figures are medians over repeats; quote them with the load average printed at the top and the bottom.

    .venv/bin/python benchmarks/speed.py [--threads 2] [--prompts 4] [--max-new-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="passes over the prompts (generation figures)")
    ap.add_argument("--component-repeats", type=int, default=15)
    ap.add_argument("--paths", default="eager,fast,fast-bf16")
    ap.add_argument("--heads", default="identity", help="exit heads for the drafts: identity, default or a path")
    ap.add_argument("--spec", default="26,2", help="static 'L,k' of the speculative row")
    ap.add_argument("--context", type=int, default=128, help="cache length of the component measurements")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from lede_env.engine.measure import component_timers
    from lede_env.models import load_model
    from lede_env.wiring import build_decoder

    print(f"load average at start: {_load()}  (threads {args.threads}, torch {torch.__version__})")
    loaded = load_model("smollm2-135m")
    model = loaded[0]
    N = model.config.num_hidden_layers
    paths = args.paths.split(",")
    decs, setup = {}, {}
    for name in paths:
        t0 = time.perf_counter()
        built = build_decoder("smollm2-135m", heads=args.heads, path=name, loaded=loaded)
        setup[name] = time.perf_counter() - t0
        dec, heads = built.decoder, built.heads
        prompts = built.encode("mixed:test", limit=args.prompts)
        dec.generate(prompts[0], 8)   # warm-up
        decs[name] = dec
    model.generate(torch.tensor([prompts[0]]), max_new_tokens=8, do_sample=False)

    # ---------------------------------------------------------------- generation, interleaved
    L_spec, k_spec = (int(x) for x in args.spec.split(","))
    tps = {name: [] for name in ["generate", *paths]}
    spec_tps = {name: [] for name in paths}
    ratio = {name: [] for name in paths}
    spec_ratio = {name: [] for name in paths}
    exact = {name: True for name in paths}
    equal_generate = {name: True for name in paths}
    n = args.max_new_tokens
    for _ in range(args.repeats):
        for p in prompts:
            out = {}
            t = _time(lambda: out.__setitem__("g", model.generate(torch.tensor([p]), max_new_tokens=n,
                                                                   do_sample=False)[0, len(p):].tolist()))
            gen_tps = len(out["g"]) / t
            tps["generate"].append(gen_tps)
            for name, dec in decs.items():
                t = _time(lambda: out.__setitem__("plain", dec.generate(p, n)[0]))
                plain_tps = len(out["plain"]) / t
                tps[name].append(plain_tps)
                ratio[name].append(plain_tps / gen_tps)
                equal_generate[name] &= out["plain"] == out["g"]
                t = _time(lambda: out.__setitem__("spec", dec.generate(p, n, exit_layer=L_spec, k=k_spec)[0]))
                spec_tps[name].append(len(out["spec"]) / t)
                spec_ratio[name].append(len(out["spec"]) / t / plain_tps)
                exact[name] &= out["spec"] == out["plain"]

    # ---------------------------------------------------------------- components, interleaved
    qs = (1, 2, 4, 8, 13)
    draft_layers = (4, 16)
    comp: dict[tuple[str, str], list[float]] = {}
    tasks = {name: component_timers(dec, draft_layers, qs, context=args.context) for name, dec in decs.items()}
    with torch.inference_mode():
        for name in decs:
            for fn in tasks[name].values():
                fn()
        for _ in range(args.component_repeats):
            for name in decs:
                for key, fn in tasks[name].items():
                    comp.setdefault((name, key), []).append(_time(fn))
    med = {k: statistics.median(v) * 1e3 for k, v in comp.items()}

    # ---------------------------------------------------------------- table
    width = max(16, *(len(p) + 2 for p in paths))

    def row(label, values):
        print(f"{label:34s}" + "".join(f"{v:>{width}s}" for v in values))

    print(f"\nSmolLM2-135M fp32 weights, {args.threads} threads, {len(prompts)} prompts x {n} new tokens x "
          f"{args.repeats} passes; components at context {args.context}, medians of {args.component_repeats}")
    print(f"before: 'eager' (transformers' layers); after: the fast paths; exit heads {heads!r}")
    row("", paths)
    row("stack setup (s)", [f"{setup[p]:.1f}" for p in paths])
    g = statistics.median(tps["generate"])
    row("generate: plain greedy tok/s", [f"{g:.1f}"] * len(paths))
    row("plain greedy tok/s", [f"{statistics.median(tps[p]):.1f}" for p in paths])
    row("  / generate (median of ratios)", [f"{statistics.median(ratio[p]):.2f}x" for p in paths])
    row("  greedy output == generate", [str(equal_generate[p]) for p in paths])
    row(f"spec L={L_spec} k={k_spec} tok/s", [f"{statistics.median(spec_tps[p]):.1f}" for p in paths])
    row("  / plain greedy, same path", [f"{statistics.median(spec_ratio[p]):.2f}x" for p in paths])
    row("  spec output == plain, same path", [str(exact[p]) for p in paths])
    for q in qs:
        row(f"verify q={q} (ms)", [f"{med[(p, f'verify q={q}')]:.2f}" for p in paths])
    row("verify q=13 / q=1", [f"{med[(p, 'verify q=13')] / med[(p, 'verify q=1')]:.2f}x" for p in paths])
    row("verify q=4 / q=1", [f"{med[(p, 'verify q=4')] / med[(p, 'verify q=1')]:.2f}x" for p in paths])
    row("decoder layer q=1 (ms)", [f"{med[(p, 'layers q=1')] / N:.3f}" for p in paths])
    row("decoder layer q=13 (ms)", [f"{med[(p, 'layers q=13')] / N:.3f}" for p in paths])
    L0, L1 = draft_layers
    row(f"draft token L={L1} (ms)", [f"{med[(p, f'draft L={L1}')]:.2f}" for p in paths])
    row("draft cost per layer (ms)",
        [f"{(med[(p, f'draft L={L1}')] - med[(p, f'draft L={L0}')]) / (L1 - L0):.3f}" for p in paths])
    row("LM head q=1 (ms)", [f"{med[(p, 'head q=1')]:.2f}" for p in paths])
    row("LM head q=13 (ms)", [f"{med[(p, 'head q=13')]:.2f}" for p in paths])
    # the engine-speed bar (issue 6): plain greedy >= 2x generate; verifying 13 positions <= 1.3x one
    row("bar: plain >= 2x generate", ["met" if statistics.median(ratio[p]) >= 2 else "not met" for p in paths])
    row("bar: verify 13 <= 1.3x verify 1",
        ["met" if med[(p, 'verify q=13')] <= 1.3 * med[(p, 'verify q=1')] else "not met" for p in paths])
    print(f"load average at end: {_load()}")


if __name__ == "__main__":
    main()
