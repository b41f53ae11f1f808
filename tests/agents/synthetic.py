"""Synthetic traces and a replay environment over them (no model): what the agent tests build on.

    files = write_replay_files(tmp_path, [synthetic_trace(0, 30, (0.3, 0.6, 0.85), rng), ...])
    env = make_env(files, stop_rules="default")

Exit layers `EXITS`, speculation lengths `SPEC`, an 8-layer model; the latency profile's draft cost grows with the
exit layer (0.001 s per layer per draft token) and a verification of q positions costs 0.01 + 0.001 q s.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np

import lede_env  # noqa: F401  (registers the ids)
from lede_env.engine.profile import LatencyProfile, cpu_signature
from lede_env.traces import Trace, TraceSet

EXITS = (2, 4, 6)
SPEC = (0, 1, 2, 3, 4)
NUM_LAYERS = 8


def synthetic_trace(index: int, T: int, agree_p, rng, maxprob=None, entropy=None, agree=None) -> Trace:
    """A trace of ``T`` tokens: exit column ``j`` agrees with the full model with probability ``agree_p[j]`` (or as
    the boolean array ``agree`` [T-1, J] says); ``maxprob`` / ``entropy`` [T-1, J] set the draft confidences
    (default: uniform random)."""
    J = len(EXITS)
    tokens = rng.integers(3, 50, size=T).astype(np.int64)
    nxt = tokens[1:]
    if agree is None:
        agree = rng.random((T - 1, J)) < np.asarray(agree_p)[None, :]
    draft = np.where(agree, nxt[:, None], (nxt[:, None] + 1) % 50).astype(np.int64)
    maxprob = rng.random((T - 1, J)) if maxprob is None else np.asarray(maxprob)
    entropy = rng.random((T - 1, J)) * 3 if entropy is None else np.asarray(entropy)
    return Trace(prompt_index=index, prompt_ids=np.arange(4, dtype=np.int64), tokens=tokens, exit_layers=EXITS,
                 probe_layers=(3,), draft_tokens=draft, draft_maxprob=maxprob.astype(np.float32),
                 draft_entropy=entropy.astype(np.float32),
                 full_maxprob=rng.random(T - 1).astype(np.float32), full_entropy=rng.random(T - 1).astype(np.float32),
                 probe_cos=rng.random((T - 1, 1)).astype(np.float32), eos=False, max_new_tokens=T, max_context=10_000)


def synthetic_profile() -> LatencyProfile:
    return LatencyProfile(model="synthetic", dtype="float32", device="cpu", threads=1, path="eager",
                          cpu=cpu_signature(), exit_heads="identity", num_layers=NUM_LAYERS,
                          draft_cost={L: 0.001 * L for L in EXITS},
                          verify_cost=tuple(0.01 + 0.001 * q for q in range(8)),
                          layer_cost=tuple(0.001 + 0.0001 * q for q in range(8)),
                          head_cost=tuple(0.001 for _ in range(8)))


def write_replay_files(folder: Path, traces) -> dict:
    """Save ``traces`` and the synthetic profile in ``folder``: ``{"traces", "profile", "set"}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    T = max(t.length for t in traces)
    meta = {"model": "synthetic", "dtype": "float32", "exit_heads": "identity", "exit_layers": list(EXITS),
            "probe_layers": [3], "max_new_tokens": T, "vocab_size": 50, "num_layers": NUM_LAYERS,
            "prompts": "synthetic:train"}
    path = TraceSet(traces=tuple(traces), meta=meta).save(folder / "traces.npz")
    return {"traces": str(path), "profile": str(synthetic_profile().save(folder / "profile.json")),
            "set": TraceSet.load(path)}


def make_env(files, **kw) -> gym.Env:
    """A replay ``LEDE-v0`` over ``files`` (`write_replay_files`) with lengths `SPEC`; ``kw`` overrides."""
    return gym.make("LEDE-v0", **{"backend": "replay", "traces": files["traces"], "profile": files["profile"],
                                  "spec_lengths": SPEC, **kw})
