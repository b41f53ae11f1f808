"""Check the GPU path on whatever CUDA device this machine has (prints figures; not a test, CI stays CPU-only):

1. exactness: speculative decoding at a few (L, k) gives plain greedy's token ids, prompt by prompt;
2. the latency profile measured on the device (every timing synchronises it), saved where the environment finds it;
3. a few live episodes of ``LEDE-v0`` on the device, with the shipped LEDE agent, exact against plain greedy;
4. a small ``lede bench`` (plain greedy, ``model.generate``, Hugging Face's early exit, best static, LEDE).

    .venv/bin/python benchmarks/cuda_check.py [--model smollm2-135m | /path/to/llama] [--device cuda]
        [--dtype bfloat16] [--heads default] [--limit 3] [--max-new-tokens 64]

``--device cpu --dtype float32`` runs the same checks on the CPU (how the script itself is checked without a GPU).
A Llama-2/3 or LayerSkip checkpoint has no exit heads shipped: pass ``--heads identity`` (LayerSkip's early exits
are trained for the plain LM head).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--heads", default="default")
    ap.add_argument("--prompts", default="mixed:test")
    ap.add_argument("--limit", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()

    import torch

    from lede_env.models import check_device

    try:
        check_device(args.device)
    except ValueError as e:
        print(f"nothing to check: {e}")
        return 0
    if args.device.startswith("cuda"):
        print(f"device {torch.cuda.get_device_name(torch.device(args.device))}, torch {torch.__version__}")
    failures = 0

    # 1. exactness of the engine on the device
    from lede_env.wiring import build_decoder

    setup = build_decoder(args.model, heads=args.heads, dtype=args.dtype, device=args.device)
    dec, N = setup.decoder, setup.num_layers
    print(f"{args.model}: {N} layers, heads {setup.heads_label}, path {dec.path}, device {dec.device}")
    ids = setup.encode(args.prompts, limit=args.limit)
    from lede_env.engine.limits import default_exit_layers

    layers = [L for L in default_exit_layers(N) if setup.heads.has(L)]
    settings = [(L, k) for L in sorted({layers[0], layers[len(layers) // 4], layers[len(layers) // 2]}) for k in (1, 3)]
    for i, prompt in enumerate(ids):
        t0 = time.perf_counter()
        plain, _ = dec.generate(prompt, args.max_new_tokens, exit_layer=1, k=0)
        t_plain = time.perf_counter() - t0
        for L, k in settings:
            t0 = time.perf_counter()
            out, steps = dec.generate(prompt, args.max_new_tokens, exit_layer=L, k=k)
            t = time.perf_counter() - t0
            same = list(out) == list(plain)
            failures += not same
            print(f"  prompt {i} L{L} k{k}: {'exact' if same else 'DIFFERS'}, {len(out) / len(steps):.2f} tokens/step,"
                  f" {t_plain / t:.2f}x plain (one run, not a benchmark)")

    # 2. the latency profile on the device
    from lede_env.engine.measure import measure_profile

    prof = measure_profile(dec, args.model, layers, max_verify=13, repeats=5, progress=False)
    # on a GPU the profile goes where the environment looks for it; a CPU dry run keeps the machine's own profile
    path = prof.save() if args.device.startswith("cuda") else prof.save(tempfile.mkdtemp() + "/profile.json")
    print(f"profile {prof.key}: plain step {1e3 * prof.c_ar:.2f} ms, draft ms/token "
          + ", ".join(f"L{L} {1e3 * c:.2f}" for L, c in prof.draft_cost.items()) + f" -> {path}")

    # 3. live episodes with the shipped agent
    import agents
    from lede_env.env import LEDEEnv
    from lede_env.rollout import rollout

    env = LEDEEnv(loaded=(setup.model, setup.tokenizer), model=args.model, prompts=args.prompts,
                  exit_heads=args.heads, dtype=args.dtype, device=args.device, max_new_tokens=args.max_new_tokens,
                  exit_layers=layers, text_in_info=False, profile=str(path))
    try:
        agent = agents.load("lede", env)
    except ValueError as e:           # another model's action lists: a static agent instead
        from agents.baselines import StaticAgent

        print(f"  the shipped LEDE agent does not fit ({str(e).splitlines()[0]}): static L{layers[0]} k1 instead")
        agent = StaticAgent(env, exit_layer=layers[0], k=1)
    for i in range(min(args.limit, len(ids))):
        ep = rollout(env, agent, options={"prompt_index": i}, info_keys=("tokens", "generated_ids"))
        plain, _ = dec.generate(ids[i], args.max_new_tokens, exit_layer=1, k=0)
        same = list(ep.infos[-1]["generated_ids"]) == list(plain)
        failures += not same
        n = int(ep.info_array("tokens").sum())
        print(f"  episode {i}: {ep.steps} steps, return {ep.episode_return:.2f}, modelled speedup "
              f"{n / (n - ep.episode_return):.3f}x, {'exact' if same else 'DIFFERS'}")
    env.close()

    # 4. a small bench
    from lede_env.bench import BenchConfig, run_bench

    agents_ = ("best-static", "lede") if args.model == "smollm2-135m" else ()
    config = BenchConfig(prompts=(args.prompts,), agents=agents_, limit=args.limit,
                         max_new_tokens=args.max_new_tokens, repeats=1, hf_exit=layers[min(1, len(layers) - 1)],
                         hf_length=1, model=args.model, env={"device": args.device, "dtype": args.dtype,
                                                             "exit_heads": args.heads, "profile": str(path)})
    result = run_bench(config, progress=False)
    print(result.to_markdown())
    failures += sum(r.exact is not None and r.exact < r.prompts for s in result.sets for r in s.rows)
    print("all exact" if not failures else f"{failures} checks FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
