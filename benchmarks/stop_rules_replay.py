"""How far the replay of stop rules is from live decoding (prints a table and JSON; not a test).

With ``stop_rules`` the draft length is decided while drafting. Replay knows the draft's confidence exactly up to
the first rejected draft; past it, it reads the confidences recorded along the greedy path at the same positions
(`lede_env.traces.Trace.drafted_under`). This script runs the same prompts with the same actions live (the real
model, SmolLM2 by default) and in replay (the shipped traces of the same prompts), and reports per episode the
error of the replayed drafted tokens and of the replayed cost (profiled costs on both sides), and checks that the
accepted counts and tokens are identical.

Action sequences per prompt (each drives the live env; its actions are then replayed as they were), with the
published stop rules of the zoo (`agents.stopping`, `agents.hf`, `agents.layer_choice`) at fixed settings:
  random      uniform over exit, length >= 1 and stop rule
  kangaroo    exit 4 (the shallowest), cap 6, p<0.6
  specdec++   the default static exit, cap 12, prod<0.7
  svip        the default static exit, cap 12, H>0.6
  hf-conf     the default static exit, cap 12, p<0.4 (Hugging Face's initial confidence threshold)
  swift-conf  exit 16, cap 12, p<0.8 (SWIFT's threshold; Draft & Verify's initial one)

    .venv/bin/python benchmarks/stop_rules_replay.py [--prompts mixed:test] [--limit 8]
"""

from __future__ import annotations

import argparse
import json
import statistics

import gymnasium as gym
import numpy as np
from tqdm import tqdm

import lede_env  # noqa: F401
from lede_env.defaults import model_defaults, shipped_traces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", default="mixed:test")
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    traces = shipped_traces(args.prompts)
    live = gym.make("LEDE-v0", prompts=args.prompts, stop_rules="default", text_in_info=False)
    rep = gym.make("LEDE-v0", backend="replay", traces=str(traces), stop_rules="default")
    base = live.unwrapped
    rules = list(base.stop_rules)
    exits = list(base.exit_layers)
    L_static = model_defaults("smollm2-135m").get("best_static", {}).get(model_defaults("smollm2-135m").get("heads_label"), [exits[0], 1])[0]
    K = list(base.config.spec_lengths)
    rng = np.random.default_rng(args.seed)

    def fixed(L, k, rule):
        a = np.array([exits.index(L), K.index(k), rules.index(rule)])
        return lambda obs: a

    policies = {"random": lambda obs: np.array([rng.integers(len(exits)), rng.integers(1, len(K)),
                                                rng.integers(len(rules))]),
                "kangaroo": fixed(exits[0], 6, "p<0.6"), "specdec++": fixed(L_static, 12, "prod<0.7"),
                "svip": fixed(L_static, 12, "H>0.6"), "hf-conf": fixed(L_static, 12, "p<0.4"),
                "swift-conf": fixed(16, 12, "p<0.8")}
    rows = []
    bar = tqdm(total=args.limit * len(policies), desc="live vs replay")
    for i in range(args.limit):
        for name, policy in policies.items():
            obs, info = live.reset(options={"prompt_index": i})
            actions, live_info = [], []
            done = False
            while not done:
                a = policy(obs)
                obs, _, term, trunc, info = live.step(a)
                actions.append(a)
                live_info.append(info)
                done = term or trunc
            rep.reset(options={"prompt_index": i})
            rep_info = []
            for a in actions:
                *_, info = rep.step(a)
                rep_info.append(info)
            same = [(x["accepted"], x["tokens"]) for x in live_info] == [(y["accepted"], y["tokens"]) for y in rep_info]
            d_live = sum(x["drafted"] for x in live_info)
            d_rep = sum(y["drafted"] for y in rep_info)
            c_live = sum(x["cost"] for x in live_info)
            c_rep = sum(y["cost"] for y in rep_info)
            past = sum(x["drafted"] > x["accepted"] + 1 for x in live_info)
            rows.append({"prompt": i, "policy": name, "steps": len(actions), "accepted_and_tokens_identical": same,
                         "drafted_live": d_live, "drafted_replay": d_rep, "drafted_error": d_rep - d_live,
                         "cost_live_s": c_live, "cost_replay_s": c_rep, "cost_error_rel": (c_rep - c_live) / c_live,
                         "steps_stopping_past_first_rejection": past,
                         "steps_with_drafted_error": sum(x["drafted"] != y["drafted"]
                                                         for x, y in zip(live_info, rep_info))})
            bar.update(1)
    bar.close()
    print(f"{'policy':<10} {'episodes':>8} {'identical':>9} {'drafted/ep':>10} {'mean |err|':>10} {'worst err':>9} "
          f"{'mean |cost err|':>15} {'worst cost err':>14}")
    summary = {}
    for name in policies:
        r = [x for x in rows if x["policy"] == name]
        de = [x["drafted_error"] for x in r]
        ce = [x["cost_error_rel"] for x in r]
        worst = max(de, key=abs)
        worst_c = max(ce, key=abs)
        summary[name] = {"episodes": len(r), "all_identical": all(x["accepted_and_tokens_identical"] for x in r),
                         "mean_drafted_per_episode": statistics.mean(x["drafted_live"] for x in r),
                         "mean_abs_drafted_error": statistics.mean(abs(e) for e in de), "worst_drafted_error": worst,
                         "mean_abs_cost_error_rel": statistics.mean(abs(e) for e in ce), "worst_cost_error_rel": worst_c}
        s = summary[name]
        print(f"{name:<10} {s['episodes']:>8} {str(s['all_identical']):>9} {s['mean_drafted_per_episode']:>10.1f} "
              f"{s['mean_abs_drafted_error']:>10.2f} {worst:>9d} {100 * s['mean_abs_cost_error_rel']:>14.2f}% "
              f"{100 * worst_c:>13.2f}%")
    print(json.dumps({"prompts": args.prompts, "limit": args.limit, "summary": summary, "episodes": rows}))


if __name__ == "__main__":
    main()
