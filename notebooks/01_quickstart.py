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
# # Quickstart: LEDE-v0, agents, and your own agent
#
# Self-speculative decoding drafts `k` tokens with the model's first `L` layers and verifies them with one full
# pass. `LEDE-v0` makes choosing `(L, k)` at every step a Gymnasium environment. This notebook:
#
# 1. runs one episode by hand on the **live** backend (the embedded SmolLM2-135M) and shows the text, each token
#    marked by how it came to be;
# 2. plays a random agent, a static agent and the shipped LEDE agent on the **replay** backend (recorded traces,
#    no model);
# 3. trains an agent of your own on replay in a few lines and scores it with `lede evaluate`'s Python API.
#
# Runs top to bottom in under a minute on a 2-core CPU. `LEDE_NOTEBOOK_QUICK=1` (what CI sets) shrinks
# every setting; `LEDE_NOTEBOOK_ARTEFACTS` says where files go (default `results/notebooks`).

# %%
import os
from pathlib import Path

import gymnasium as gym
import numpy as np

import lede_env  # noqa: F401  (registers LEDE-v0)
from lede_env.defaults import shipped_traces

QUICK = os.environ.get("LEDE_NOTEBOOK_QUICK") == "1"
ARTEFACTS = Path(os.environ.get("LEDE_NOTEBOOK_ARTEFACTS", "../results/notebooks"))
ARTEFACTS.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## 1. One episode by hand, live
#
# The action is `MultiDiscrete([len(exit_layers), len(spec_lengths)])`: an index into the exit layers and one into
# the draft lengths. Here every step drafts `k = 2` tokens at exit layer 1. Whatever the actions, the output is the
# model's plain greedy output: speculation only changes how fast it comes.

# %%
env = gym.make("LEDE-v0", prompts="mixed:test", max_new_tokens=24 if QUICK else 48, render_mode="ansi")
base = env.unwrapped
print("exit layers:", base.exit_layers)
print("draft lengths:", base.config.spec_lengths)
print(base.layout.table())

# %%
action = np.array([base.exit_layers.index(1), list(base.config.spec_lengths).index(2)])
obs, info = env.reset(seed=0, options={"prompt_index": 0})
steps, ret = 0, 0.0
done = False
while not done:
    obs, reward, terminated, truncated, info = env.step(action)
    steps, ret, done = steps + 1, ret + reward, terminated or truncated
tokens = len(info["generated_ids"]) - 1          # the steps' tokens (the prefill's first token has no reward)
print(env.render())
print(f"{tokens} tokens in {steps} steps; return {ret:.2f} = tokens saved against plain decoding; "
      f"modelled speedup {tokens / (tokens - ret):.3f}x")
env.close()

# %% [markdown]
# ## 2. Agents on the replay backend
#
# The replay backend plays any action sequence on a recorded trace (the shipped test traces of 65 chat prompts),
# exactly as the live model would under the same latency profile, at tens of thousands of steps per second and
# without loading the model. `lede_env.rollout.rollout` is the one episode loop: any object with
# stable-baselines3's `predict` is an agent.

# %%
import agents
from agents.baselines import RandomAgent, StaticAgent
from lede_env.rollout import rollout

test = gym.make("LEDE-v0", backend="replay", traces=str(shipped_traces("mixed:test")))
players = {"random": RandomAgent(test, seed=0), "static L1 k1": StaticAgent(test, exit_layer=1, k=1),
           "lede (shipped)": agents.load("lede", test)}
n_prompts = 8 if QUICK else 65


def speedups(env, agent, n):
    """Each episode's modelled speedup N / (N - return) over the first n test prompts."""
    out = []
    for i in range(n):
        ep = rollout(env, agent, options={"prompt_index": i}, info_keys=("tokens",))
        produced = int(ep.info_array("tokens").sum())
        out.append(produced / (produced - ep.episode_return))
    return np.array(out)


from IPython.display import Image, display

from lede_env.plotting import new_figure, to_png

per_prompt = {name: speedups(test, agent, n_prompts) for name, agent in players.items()}
for name, s in per_prompt.items():
    print(f"{name:16s} median speedup {np.median(s):.3f}x over {len(s)} prompts (min {s.min():.3f}, max {s.max():.3f})")
fig = new_figure(6, 3.2)
ax = fig.add_subplot()
ax.boxplot(list(per_prompt.values()), tick_labels=list(per_prompt))
ax.axhline(1.0, color="black", linewidth=0.8)
ax.set_ylabel("speedup per prompt (modelled)")
display(Image(to_png(fig)))

# %% [markdown]
# The shipped LEDE agent learned a nearly static policy, exit 1 and `k = 1` on most steps (notebook 3 counts them),
# so its speedups are close to the static L1 k1 agent's. Random actions
# (uniform exits and lengths up to 12) are far slower than plain decoding: long drafts at deep exits cost more
# than they save.
#
# ## 3. Your own agent, trained on replay, scored beside the zoo
#
# Any stable-baselines3 algorithm trains on the replay environment (flatten the action for the value-based ones).
# Wrapped in `agents.sb3.SB3Agent`, it is saved with the environment it was trained for, and `lede evaluate`
# (here its Python API, `agents.evaluation.evaluate`) scores it beside the zoo on the held-out test prompts.

# %%
import torch
from stable_baselines3 import DQN

from agents.evaluation import evaluate
from agents.sb3 import SB3Agent
from lede_env.wrappers import FlattenAction

torch.set_num_threads(1)                      # small networks train many times faster on one thread
train = gym.make("LEDE-v0", backend="replay", traces=str(shipped_traces("mixed:train")))
model = DQN("MlpPolicy", FlattenAction(train), seed=0, learning_starts=500, verbose=0)
model.learn(3_000 if QUICK else 30_000)
folder = SB3Agent(train, "dqn", model=model).save(ARTEFACTS / "my-dqn")
print("saved to", folder)

# %%
result = evaluate([str(folder), "lede", "best-static", "oracle"], ["mixed:test"],
                  limit=8 if QUICK else None, progress=False)
print(f"{'agent':12s} {'speedup':>8s} {'share':>6s} {'L':>5s} {'k':>5s}")
for r in result.rows:
    print(f"{r.agent:12s} {r.speedup:7.3f}x {r.share:6.3f} {r.mean_exit_layer:5.1f} {r.mean_k:5.2f}")
ref = result.references["mixed:test"]
print(f"oracle {ref.oracle_speedup:.3f}x; best static in hindsight {ref.hindsight_static} "
      f"{ref.hindsight_static_speedup:.3f}x")

# %% [markdown]
# `share` is the agent's share of the oracle's saved tokens. The shipped LEDE agent and a quickly trained DQN land
# near best static: the observation carries little about the next draft's acceptance (README, "Learned agents").
# `result.save(folder)` writes the tables, JSON and plots that `lede evaluate --out` writes:

# %%
files = result.save(ARTEFACTS / "evaluate")
print(sorted(p.name for p in files.values()))
display(Image(filename=str(files["speedup"])))
