# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Results: the bench, the theory, the profile against the clock
#
# Reads a `lede bench` results folder: `LEDE_BENCH_RESULTS` if set, else the newest `results/bench*` (`lede bench`
# writes `results/bench-<time>` by default), `results/demo` (what `make demo` writes) or the one this notebook made
# before. If there is none it runs a small bench itself and writes it there (`LEDE_BENCH_RESULTS`, or
# `results/notebooks/bench`): about 2.5 minutes on a 2-core CPU, 40 s with `LEDE_NOTEBOOK_QUICK=1`. Then each of
# our methods' measured speedup against the textbook one for its measured acceptance, and the latency profile's
# modelled speedup against the clock.

# %%
import json
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
from IPython.display import Image, Markdown, display

import lede_env  # noqa: F401
from lede_env.defaults import shipped_traces
from lede_env.plotting import new_figure, to_png

QUICK = os.environ.get("LEDE_NOTEBOOK_QUICK") == "1"
ARTEFACTS = Path(os.environ.get("LEDE_NOTEBOOK_ARTEFACTS", "../results/notebooks"))
chosen = os.environ.get("LEDE_BENCH_RESULTS")
newest = sorted(Path("../results").glob("bench*"), key=lambda p: p.stat().st_mtime, reverse=True)
candidates = [Path(chosen)] if chosen else [*newest, Path("../results/demo"), ARTEFACTS / "bench"]
folder = next((p for p in candidates if (p / "results.json").is_file()), None)
if folder is None:
    from lede_env.bench import BenchConfig, run_bench

    folder = Path(chosen) if chosen else ARTEFACTS / "bench"
    small = dict(prompts=("mixed:test",), limit=1, max_new_tokens=32) if QUICK else dict(limit=2, max_new_tokens=64)
    config = BenchConfig(agents=("best-static", "sb3", "lede"), repeats=1, hf_exit=4, hf_length=1, **small)
    run_bench(config, progress=False).save(folder)
doc = json.loads((folder / "results.json").read_text())
meta = doc["meta"]
print(f"{folder}: {meta['created']}, {meta['cpu']}, {meta['seconds']} s, profile {meta['profile']}")

# %% [markdown]
# ## The table and the plots `lede bench` wrote

# %%
display(Markdown((folder / "results.md").read_text()))
for name in ("speedup.png", "tokens_per_step.png", "clock_vs_profile.png"):
    display(Image(filename=str(folder / name)))

# %% [markdown]
# ## Measured against the theory
#
# With a draft accepted independently with probability `a`, a step that drafts `k` tokens makes
# `(1 - a^(k+1)) / (1 - a)` tokens; if a draft token costs `c` and the verification `v` (both as fractions of a
# plain step), the speedup is
#
# $$S(a, k, c, v) = \frac{1 - a^{k+1}}{(1 - a)(k c + v)}.$$
#
# For each of our methods, `a` is its measured acceptance (accepted drafts over drafted tokens), `k` its mean
# draft length and `c`, `v` come from the latency profile at its mean exit layer. Hugging Face's rows are left out:
# their drafts run through transformers' own layers, which our profile does not price.

# %%
env = gym.make("LEDE-v0", backend="replay", traces=str(shipped_traces("mixed:test")),
               engine_path=meta["engine_path"] or "auto")
profile = env.unwrapped.profile
env.close()
if profile.key != meta["profile"]:
    print(f"note: the bench used profile {meta['profile']}, this machine's is {profile.key}")


def theory(a: float, k: float, L: int) -> float:
    c = profile.draft_cost[L] / profile.c_ar
    v = (profile.step_cost(L, max(1, round(k))) - max(1, round(k)) * profile.draft_cost[L]) / profile.c_ar
    tokens = k + 1 if a >= 1 else (1 - a ** (k + 1)) / (1 - a)
    return tokens / (k * c + v)


points, no_acceptance = [], []
print(f"{'prompt set':15s} {'method':14s} {'a':>5s} {'k':>5s} {'L':>4s} {'theory':>7s} {'profile':>8s} {'clock':>7s}")
for s in doc["sets"]:
    for r in s["rows"]:
        if r["family"] != "agent" or not r["mean_k"]:
            continue
        if r.get("acceptance") is None:          # results written before lede bench reported it
            no_acceptance.append(r["method"])
            continue
        L = min(profile.draft_cost, key=lambda e: abs(e - r["mean_exit"]))
        t = theory(r["acceptance"], r["mean_k"], L)
        points.append((s["prompt_set"], r["method"], t, r["modelled"], r["speedup"]))
        print(f"{s['prompt_set']:15s} {r['method']:14s} {r['acceptance']:5.2f} {r['mean_k']:5.2f} {L:4d} "
              f"{t:6.3f}x {r['modelled']:7.3f}x {r['speedup']:6.3f}x")

if no_acceptance:
    print(f"no measured acceptance in these results for {sorted(set(no_acceptance))}: rerun lede bench")
fig = new_figure(6, 4.2)
ax = fig.add_subplot()
for ps, method, t, modelled, clock in points:
    ax.scatter(t, clock, color="tab:blue")
    ax.scatter(t, modelled, color="tab:orange", marker="x")
    ax.annotate(f"{method} ({ps.split(':')[0]})", (t, clock), fontsize=7)
lo = min([1.0] + [min(p[2:]) for p in points]) - 0.02
hi = max([1.0] + [max(p[2:]) for p in points]) + 0.02
ax.plot([lo, hi], [lo, hi], "k--", linewidth=0.8)
ax.set_xlabel("theory S(a, k, c, v)")
ax.set_ylabel("measured (dots: clock; crosses: profile)")
display(Image(to_png(fig)))

# %% [markdown]
# The textbook formula assumes every draft is accepted independently with the same probability. Real acceptance
# comes in runs (an agreeing token is often followed by another), so the formula and the measurement part where
# methods draft more than one token; for `k = 1` it is exact up to the end of the generation.
#
# ## The profile against the clock, prompt by prompt

# %%
fig = new_figure(6, 4.2)
ax = fig.add_subplot()
ratios = []
for s in doc["sets"]:
    for r in s["rows"]:
        if r["family"] == "agent" and r.get("per_prompt_modelled"):
            ax.scatter(r["per_prompt_modelled"], r["per_prompt"], s=12, label=f"{r['method']} ({s['prompt_set']})")
            ratios += [c / m for c, m in zip(r["per_prompt"], r["per_prompt_modelled"])]
ax.plot([0.9, 1.5], [0.9, 1.5], "k--", linewidth=0.8)
ax.set_xlabel("modelled speedup (latency profile)")
ax.set_ylabel("measured speedup (clock)")
ax.legend(fontsize=6)
display(Image(to_png(fig)))
if ratios:
    print(f"clock / profile over {len(ratios)} agent-prompt pairs: median {np.median(ratios):.3f}, "
          f"range {min(ratios):.3f}-{max(ratios):.3f}")
else:
    print("no agent rows with a modelled speedup in these results")

# %% [markdown]
# A ratio near 1 means the profile, measured once by `lede profile`, predicts what the clock shows when the agents
# run live; the replay environment's rewards and `lede evaluate`'s figures rest on it.
