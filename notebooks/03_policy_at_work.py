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
# # The policy at work
#
# What the shipped LEDE agent (offline CQL, factored head: exit layer first, then the length at that layer)
# chooses along a generation, against the hindsight oracle's choices; how the agents' returns and speedups are
# distributed over the test prompts; and what its Q-network responds to. Everything runs on the replay backend
# (shipped test traces, latency profile), without the model: about ten seconds. `LEDE_NOTEBOOK_QUICK=1` uses fewer
# prompts.

# %%
import html
import os

import gymnasium as gym
import numpy as np
from IPython.display import HTML, Image, display
from matplotlib import colormaps

import agents
import lede_env  # noqa: F401
from agents.zoo import ZooContext, build, needs_stop_rules
from lede_env.defaults import shipped_traces
from lede_env.models import load_tokenizer
from lede_env.plotting import new_figure, to_png
from lede_env.render import token_pieces
from lede_env.rollout import rollout

QUICK = os.environ.get("LEDE_NOTEBOOK_QUICK") == "1"
PROMPTS = "humaneval:test"
env = gym.make("LEDE-v0", backend="replay", traces=str(shipped_traces(PROMPTS)))
base = env.unwrapped
ctx = ZooContext.from_traces(base, shipped_traces("humaneval:train"))   # fits best static on training traces
lede = agents.load("lede", env)
oracle = build("oracle", env, ctx)
tok = load_tokenizer()
KEYS = ("exit_layer", "k", "tokens", "accepted", "generated_ids")

# %% [markdown]
# ## One generation: LEDE's choices against the oracle's
#
# Each step is drawn at the position where it starts: its exit layer (height) and its draft length (marker size;
# crosses are plain steps, `k = 0`). The oracle knows the future and drafts long where the exit will agree.

# %%
prompt = 3
episodes = {name: rollout(env, agent, options={"prompt_index": prompt}, info_keys=KEYS)
            for name, agent in (("lede", lede), ("oracle", oracle))}


def steps_of(ep):
    """(position, exit layer, k, tokens) of every step."""
    rows, pos = [], 0
    for info in ep.infos[1:]:
        rows.append((pos, info["exit_layer"], info["k"], info["tokens"]))
        pos += info["tokens"]
    return np.array(rows)


fig = new_figure(12, 3.4)
ax = fig.add_subplot()
for name, marker, color in (("oracle", "o", "tab:orange"), ("lede", "s", "tab:blue")):
    st = steps_of(episodes[name])
    draft = st[:, 2] > 0
    ax.scatter(st[draft, 0], st[draft, 1], s=12 * st[draft, 2], marker=marker, color=color, alpha=0.6,
               label=f"{name}: {len(st)} steps, {draft.mean():.0%} drafting")
    ax.scatter(st[~draft, 0], np.zeros((~draft).sum()), marker="x", color=color)
ax.set_xlabel("position in the generation (tokens)")
ax.set_ylabel("exit layer (0: plain step)")
ax.legend(fontsize=8)
display(Image(to_png(fig)))
for name, ep in episodes.items():
    n = sum(i["tokens"] for i in ep.infos[1:])
    print(f"{name:7s} return {ep.episode_return:6.2f}, speedup {n / (n - ep.episode_return):.3f}x")

# %% [markdown]
# The same generation as text. Each token is coloured by the exit layer of the step that produced it (grey: a
# plain step), and underlined when it was an accepted draft.

# %%
cmap = colormaps["viridis"]


def coloured(ep) -> str:
    ids = list(ep.infos[-1]["generated_ids"])
    pieces = token_pieces(tok, ids)
    spans, pos = [html.escape(pieces[0])], 1
    for info in ep.infos[1:]:
        L, k, n = info["exit_layer"], info["k"], info["tokens"]
        r, g, b, _ = cmap(L / base.num_layers) if k > 0 else (0.85, 0.85, 0.85, 1)
        for i in range(n):
            accepted = i < info["accepted"]
            style = f"background: rgba({int(255 * r)},{int(255 * g)},{int(255 * b)},0.45);"
            style += "text-decoration: underline;" if accepted else ""
            spans.append(f'<span style="{style}">{html.escape(pieces[pos + i])}</span>')
        pos += n
    return "".join(spans).replace("\n", "<br>")


for name, ep in episodes.items():
    display(HTML(f"<h4>{name}</h4><div style='font-family: monospace; font-size: 12px'>{coloured(ep)}</div>"))

# %% [markdown]
# ## Returns and speedups over the test prompts, per agent
#
# Each agent plays every test prompt (episode return: tokens saved against plain decoding; speedup
# `N / (N - return)`). Agents that choose a stop rule get an environment that offers them.

# %%
names = ["autoregressive", "best-static", "specdec++", "kangaroo", "sb3", "lede", "oracle"]
stop_env = gym.make("LEDE-v0", backend="replay", traces=str(shipped_traces(PROMPTS)), stop_rules="default")
stop_ctx = ZooContext.from_traces(stop_env.unwrapped, shipped_traces("humaneval:train"))
count = 8 if QUICK else len(agents.oracle.replay_traces(env))
returns, speed = {}, {}
for name in names:
    e, c = (stop_env, stop_ctx) if needs_stop_rules(name) else (env, ctx)
    agent = agents.load(name, e) if name in ("lede", "sb3") else build(name, e, c)
    rs, ss = [], []
    for i in range(count):
        ep = rollout(e, agent, options={"prompt_index": i}, info_keys=("tokens",))
        n = int(ep.info_array("tokens").sum())
        rs.append(ep.episode_return)
        ss.append(n / (n - ep.episode_return))
    returns[name], speed[name] = np.array(rs), np.array(ss)

fig = new_figure(11, 3.6)
ax1, ax2 = fig.subplots(1, 2)
ax1.boxplot(list(returns.values()), tick_labels=names)
ax1.set_ylabel("episode return (tokens saved)")
ax2.boxplot(list(speed.values()), tick_labels=names)
ax2.axhline(1.0, color="black", linewidth=0.8)
ax2.set_ylabel("episode speedup (modelled)")
for ax in (ax1, ax2):
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
display(Image(to_png(fig)))
for name in names:
    print(f"{name:15s} speedup median {np.median(speed[name]):.3f}x  (25-75%: {np.percentile(speed[name], 25):.3f}"
          f"-{np.percentile(speed[name], 75):.3f}); return median {np.median(returns[name]):.1f}")

# %% [markdown]
# ## What the Q-network responds to
#
# A sensitivity analysis on the observations LEDE meets on the test prompts: each feature in turn is set to its 5th
# and then its 95th percentile over those states, the others left as they were, and we count how often the chosen
# action changes and how far the best action's value moves.

# %%
obs = np.concatenate([rollout(env, lede, options={"prompt_index": i}, info_keys=()).observations[:-1]
                      for i in range(count)]).astype(np.float32)
names_f = base.layout.names
q0 = lede.q_values(obs)
a0 = lede.predict(obs)[0]
changed, moved = [], []
for f in range(obs.shape[1]):
    ch, mv = 0.0, 0.0
    for value in np.percentile(obs[:, f], [5, 95]):
        x = obs.copy()
        x[:, f] = value
        ch += np.mean(np.any(lede.predict(x)[0] != a0, axis=1)) / 2
        mv += np.mean(np.abs(lede.q_values(x).max(axis=1) - q0.max(axis=1))) / 2
    changed.append(ch)
    moved.append(mv)
order = np.argsort(moved)[::-1]
fig = new_figure(11, 3.6)
ax1, ax2 = fig.subplots(1, 2)
ax1.bar(range(len(order)), np.array(moved)[order])
ax1.set_xticks(range(len(order)), [names_f[i] for i in order], rotation=90, fontsize=6)
ax1.set_ylabel("mean |change of max Q|")
ax2.bar(range(len(order)), np.array(changed)[order], color="tab:orange")
ax2.set_xticks(range(len(order)), [names_f[i] for i in order], rotation=90, fontsize=6)
ax2.set_ylabel("share of states whose action changes")
display(Image(to_png(fig)))
print(f"{len(obs)} states; actions chosen: " + ", ".join(
    f"L{base.exit_layers[j]} k{base.config.spec_lengths[k]}: {n}"
    for (j, k), n in zip(*np.unique(a0, axis=0, return_counts=True))))

# %% [markdown]
# The running acceptance at exit 1 moves the values most, and the last step's draft length is the feature that most
# often changes the chosen action (between k = 1 and k = 2 at exit 1, what LEDE plays besides k = 1). The running
# acceptances of the other exits never move: LEDE never drafts there, so they keep their initial value on every
# state, and the sensitivity to them is zero.
#
# And the value of each draft length at exit 1 as the running acceptance at exit 1 (`accept_ema_L1`) sweeps its
# range, every other feature at its median over the states above.

# %%
K = len(base.config.spec_lengths)
f = names_f.index("accept_ema_L1")
grid = np.linspace(0, 1, 21)
x = np.repeat(np.median(obs, axis=0, keepdims=True), len(grid), axis=0)
x[:, f] = grid
q = lede.q_values(x)[:, :K]                  # exit index 0 (layer 1), every k
fig = new_figure(7, 3.6)
ax = fig.add_subplot()
for kidx in (0, 1, 2, 3, 6):
    ax.plot(grid, q[:, kidx], label=f"k = {base.config.spec_lengths[kidx]}")
ax.set_xlabel("accept_ema_L1")
ax.set_ylabel("Q (exit 1)")
ax.legend(fontsize=7)
display(Image(to_png(fig)))
env.close()
stop_env.close()

# %% [markdown]
# The network ranks `k = 1` at exit 1 first over most of the range: the policy it learned is close to the best
# static setting, which is what the modelled and live speedups show (README, "Learned agents" and `lede bench`).
