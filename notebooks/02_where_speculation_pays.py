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
# # Where speculation pays
#
# A draft at exit layer `L` is accepted when the early exit predicts the token the full model predicts. This
# notebook reads that agreement along real generations of the embedded SmolLM2-135M from recorded traces
# (`lede trace`): the shipped ones, drafted through the default exit heads (eagle+vocab), and a few it records
# itself with plain early exits (identity heads, `lm_head(norm(h_L))`, what LayerSkip and Hugging Face's
# `assistant_early_exit` draft with). Then: agreement by token kind, and the agreement each exit needs to pay for
# itself under the latency profile.
#
# About a minute on a 2-core CPU (most of it recording the identity-head traces); `LEDE_NOTEBOOK_QUICK=1`
# records fewer and shorter ones.

# %%
import os
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
from IPython.display import Image, display

import lede_env  # noqa: F401
from lede_env.analysis import required_agreement
from lede_env.defaults import shipped_traces
from lede_env.models import load_tokenizer
from lede_env.plotting import new_figure, to_png
from lede_env.render import token_pieces
from lede_env.traces import TraceSet

QUICK = os.environ.get("LEDE_NOTEBOOK_QUICK") == "1"
ARTEFACTS = Path(os.environ.get("LEDE_NOTEBOOK_ARTEFACTS", "../results/notebooks"))
ARTEFACTS.mkdir(parents=True, exist_ok=True)

tok = load_tokenizer()
eagle = {name: TraceSet.load(shipped_traces(name)) for name in ("mixed:test", "humaneval:test")}
layers = eagle["mixed:test"].traces[0].exit_layers
print("exit layers:", layers)

# %% [markdown]
# ## Plain early exits, recorded here
#
# `record_traces_for` is `lede trace` from Python: it refuses to overwrite, and a stopped recording resumes. The
# greedy continuation is the model's own, so these traces hold the same tokens as the shipped ones, position by
# position, and only the drafts differ.

# %%
from lede_env.record import record_traces_for

n_identity, n_tokens = (1, 32) if QUICK else (4, 96)
path = ARTEFACTS / f"identity_mixed-test_{n_identity}x{n_tokens}.npz"
if path.exists():
    identity = TraceSet.load(path)
else:
    identity, _ = record_traces_for("smollm2-135m", "mixed:test", path, limit=n_identity, max_new_tokens=n_tokens,
                                    heads="identity", progress=False)
print(f"{len(identity)} identity-head traces in {path}")

# %% [markdown]
# ## Agreement along one generation
#
# Each column is a position of the generation (the token below it is the one the full model predicts there); a
# filled cell means the first draft at that exit layer predicts it too. Drafts are accepted in runs: a step that
# drafts `k` tokens keeps them up to the first disagreement.

# %%
def heatmap(ax, agree, pieces, title):
    ax.imshow(agree.T, aspect="auto", cmap="Greens", vmin=0, vmax=1, interpolation="nearest", origin="lower")
    ax.set_yticks(range(len(layers)), [str(L) for L in layers], fontsize=6)
    ax.set_xticks(range(len(pieces)), [repr(p)[1:-1] for p in pieces], rotation=90, fontsize=6)
    ax.set_ylabel("exit layer")
    ax.set_title(title, fontsize=9)


shown = min(identity.traces[0].length - 1, 64)
t_eagle, t_identity = eagle["mixed:test"].traces[0], identity.traces[0]
assert list(t_eagle.tokens[:shown + 1]) == list(t_identity.tokens[:shown + 1])   # the same greedy generation
pieces = token_pieces(tok, list(t_eagle.tokens[: shown + 1]))[1:]
fig = new_figure(min(18, 2 + 0.2 * shown), 6.5)
ax1, ax2 = fig.subplots(2, 1)
heatmap(ax1, t_eagle.first_agree[:shown], pieces, "exit heads (eagle+vocab, the default): first draft agrees")
heatmap(ax2, t_identity.first_agree[:shown], pieces, "plain early exit (identity heads): first draft agrees")
display(Image(to_png(fig)))

# %%
def agreement(traces, positions=None):
    """Mean first-draft agreement per exit over the traces (their first ``positions`` rows only, if given)."""
    return np.concatenate([t.first_agree[:positions] for t in traces if t.length > 1]).mean(axis=0)


rows = {"eagle heads, mixed:test": agreement(eagle["mixed:test"].traces),
        "eagle heads, humaneval:test": agreement(eagle["humaneval:test"].traces),
        "eagle heads, same prompts and positions as identity": np.concatenate(
            [eagle["mixed:test"].traces[i].first_agree[: t.length - 1] for i, t in enumerate(identity.traces)]
        ).mean(axis=0),
        "identity heads, mixed:test (recorded here)": agreement(identity.traces)}
fig = new_figure(7, 3.6)
ax = fig.add_subplot()
for name, a in rows.items():
    ax.plot(layers, a, marker="o", label=name)
ax.set_xlabel("exit layer")
ax.set_ylabel("first-draft agreement")
ax.legend(fontsize=7)
display(Image(to_png(fig)))
for name, a in rows.items():
    print(f"{name:52s} L1 {a[0]:.2f}  L4 {a[layers.index(4)]:.2f}  L16 {a[layers.index(16)]:.2f}  "
          f"L28 {a[-1]:.2f}")

# %% [markdown]
# The exit heads lift the shallow exits most: a plain early exit at layers 1-16 rarely agrees with the full model,
# which is why Hugging Face's own self-speculation on this model drafts mostly tokens that are thrown away.
#
# ## Agreement by token kind
#
# The token the full model predicts, classified by its text: whitespace (spaces, newlines, indentation), digits,
# punctuation and symbols, and words. Code (humaneval) and chat (mixed) separately.

# %%
def kind(piece: str) -> str:
    if piece.strip() == "":
        return "whitespace"
    if re.search(r"\d", piece):
        return "digits"
    if not re.search(r"[A-Za-z]", piece):
        return "punctuation"
    return "word"


KINDS = ("whitespace", "digits", "punctuation", "word")
fig = new_figure(10, 3.6)
for g, (name, ts) in enumerate(eagle.items()):
    hits = {k: [] for k in KINDS}
    for t in ts.traces:
        if t.length < 2:
            continue
        ps = token_pieces(tok, list(t.tokens))
        for row, piece in enumerate(ps[1:]):
            hits[kind(piece)].append(t.first_agree[row])
    ax = fig.add_subplot(1, 2, g + 1)
    for k in KINDS:
        if hits[k]:
            ax.plot(layers, np.mean(hits[k], axis=0), marker=".", label=f"{k} ({len(hits[k])})")
    ax.set_title(f"{name} (eagle heads)", fontsize=9)
    ax.set_xlabel("exit layer")
    ax.set_ylabel("first-draft agreement")
    ax.legend(fontsize=7)
display(Image(to_png(fig)))

# %% [markdown]
# ## The agreement each exit needs
#
# A static `(L, k)` whose drafts were each accepted independently with probability `a` makes
# `(1 - a^(k+1)) / (1 - a)` tokens per step at the profiled cost `k * draft(L) + verify(L, k)`. Below: for each exit,
# the smallest `a` with which some `k` in 1..12 breaks even with plain decoding, and reaches a 1.2x speedup
# (`lede_env.analysis.required_agreement`, the latency profile the replay environment uses), against the
# agreement the exit heads give.

# %%
env = gym.make("LEDE-v0", backend="replay", traces=str(shipped_traces("mixed:test")))
profile = env.unwrapped.profile
print("latency profile:", profile.key, f"(plain step {1e3 * profile.c_ar:.2f} ms)")
even = required_agreement(profile, layers, target=1.0)
fast = required_agreement(profile, layers, target=1.2)
fig = new_figure(7, 3.6)
ax = fig.add_subplot()
ax.plot(layers, [even[L] for L in layers], "k--", label="needed to break even")
ax.plot(layers, [fast[L] for L in layers], "k:", label="needed for 1.2x")
ax.plot(layers, rows["eagle heads, mixed:test"], marker="o", label="eagle heads, mixed:test")
ax.plot(layers, rows["eagle heads, humaneval:test"], marker="o", label="eagle heads, humaneval:test")
ax.set_ylim(0, 1.05)
ax.set_xlabel("exit layer")
ax.set_ylabel("per-token acceptance")
ax.legend(fontsize=7)
display(Image(to_png(fig)))
for L in (1, 4, 16, 28):
    print(f"L{L:<2d} draft {1e3 * profile.draft_cost[L]:5.2f} ms/token; break-even a = {even[L]:.2f}, "
          f"1.2x needs a = {fast[L]:.2f}")
env.close()

# %% [markdown]
# Where the measured line runs above the dashed one, drafting at that exit pays on average; the gap to the dotted
# line is what a policy has to win by choosing *when* to draft. Deep exits agree more but cost nearly a full pass,
# so only the shallow exits pay on this model and CPU.
