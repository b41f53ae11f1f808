"""Agents live on SmolLM2: exactness against plain greedy decoding on every prompt, and the wall-clock ratio (prints a
table; not a test).

    .venv/bin/python benchmarks/live_agent.py --prompts mixed:test,humaneval:test --agents lede,static-L2-k1

For each prompt set a live ``LEDE-v0`` (real model, default heads, fast path, 2 threads) is made once; for each
prompt, plain greedy decoding (the environment's own decoder, ``k = 0``) and every agent's episode run one after the
other, the order reversed on every other prompt. An agent's episode runs through `lede_env.rollout.rollout`, so its
``predict`` time is in its wall clock. Exact means the episode's generated ids equal plain greedy's. Reported per
agent and prompt set: exact prompts, the median over prompts of (plain time / agent time) and the aggregate ratio.
Agents: ``lede`` (the shipped default), ``static-L<L>-k<k>``, or a saved agent's folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from tqdm import tqdm


def make_agent(name: str, env):
    import agents
    from agents.evaluation import STATIC

    m = STATIC.match(name)
    if m:
        return agents.StaticAgent(env, int(m.group(1)), int(m.group(2)))
    return agents.load("lede-default" if name == "lede" else name, env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", default="mixed:test")
    ap.add_argument("--agents", default="lede")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import gymnasium as gym

    import lede_env  # noqa: F401
    from lede_env.prompts import load_prompts
    from lede_env.rollout import rollout

    print(f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for prompt_set in args.prompts.split(","):
        n = len(load_prompts(prompt_set))
        sel = f"{prompt_set}:{args.limit}" if args.limit and prompt_set.count(":") == 1 else prompt_set
        env = gym.make("LEDE-v0", backend="live", prompts=prompt_set, max_new_tokens=args.max_new_tokens,
                       threads=args.threads, text_in_info=False)
        dec = env.unwrapped.backend.decoder
        names = args.agents.split(",")
        policies = {name: make_agent(name, env) for name in names}
        count = min(n, args.limit or n)
        methods = ["plain"] + names
        times = {m: [] for m in methods}
        exact = {m: 0 for m in names}
        dec.generate(env.unwrapped.backend.prompts[0], 8)   # warm-up
        for i in tqdm(range(count), desc=sel):
            ids = env.unwrapped.backend.prompts[i]
            order = methods if i % 2 == 0 else methods[::-1]
            outs = {}
            for m in order:
                t0 = time.perf_counter()
                if m == "plain":
                    outs[m] = list(dec.generate(ids, args.max_new_tokens, exit_layer=1, k=0)[0])
                else:
                    ep = rollout(env, policies[m], options={"prompt_index": i}, info_keys=("generated_ids",))
                    outs[m] = list(ep.infos[-1]["generated_ids"])
                times[m].append(time.perf_counter() - t0)
            for m in names:
                exact[m] += outs[m] == outs["plain"]
        print(f"\n{prompt_set}: {count} prompts x {args.max_new_tokens} new tokens, plain greedy median "
              f"{statistics.median(times['plain']):.2f} s per prompt")
        print("| agent | exact | median ratio over prompts | aggregate |\n|---|---|---|---|")
        for m in names:
            ratios = [p / a for p, a in zip(times["plain"], times[m])]
            print(f"| {m} | {exact[m]} of {count} | {statistics.median(ratios):.3f}x | "
                  f"{sum(times['plain']) / sum(times[m]):.3f}x |")
        env.close()


if __name__ == "__main__":
    main()
