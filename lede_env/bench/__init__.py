"""`lede bench`: live wall-clock speedups of every method on the real model, beside Hugging Face's own
self-speculation, the methods interleaved prompt by prompt (Spec-Bench's protocol: batch size 1, warm-up, repeats,
medians with the spread, exactness against plain greedy).

    lede bench --prompts mixed:test,humaneval:test --limit 8 --repeats 3 --out results/bench

    from lede_env.bench import BenchConfig, run_bench
    result = run_bench(BenchConfig(prompts=("mixed:test",), limit=4, repeats=3))
    result.save("results/bench")     # results.json, results.md, speedup.png, tokens_per_step.png, clock_vs_profile.png

`lede_env.bench.run` holds the protocol, `lede_env.bench.methods` the timed methods, `lede_env.bench.report` the
figures' definitions and files. Model code: it loads the model (torch, transformers) and runs agents of `agents`.
"""

from lede_env.bench.run import DEFAULT_AGENTS, BenchConfig, fit_hf_exit, run_bench

__all__ = ["BenchConfig", "DEFAULT_AGENTS", "run_bench", "fit_hf_exit"]
