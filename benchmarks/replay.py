"""Replay backend speed: random actions on SmolLM2-shaped traces, steps per second on one core (prints figures;
not a test). Through ``gym.make`` (with Gymnasium's default wrappers) and through ``env.unwrapped``.

Uses ``artifacts/traces/smoke.npz`` (real SmolLM2 traces) when it exists, otherwise synthetic traces with the
same shapes (30 layers, exits 4..28, probes 7, 15, 22, 28, 128 new tokens). Costs: the stored SmolLM2 profile.
The target is >= 20,000 steps/s. ``--profile`` prints a cProfile of the unwrapped loop instead.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

import lede_env  # noqa: F401  (registers the ids)
from lede_env.engine.limits import default_exit_layers, default_probe_layers
from lede_env.traces import Trace, TraceSet

REPO = Path(__file__).resolve().parent.parent
REAL = REPO / "artifacts" / "traces" / "smoke.npz"
NUM_LAYERS, VOCAB, MAX_NEW = 30, 49152, 128


def synthetic_traces(path: Path, n: int = 8, seed: int = 0) -> Path:
    """``n`` SmolLM2-shaped traces (deeper exits agree more often), saved to ``path``."""
    rng = np.random.default_rng(seed)
    exits, probes = default_exit_layers(NUM_LAYERS), default_probe_layers(NUM_LAYERS)
    J, T = len(exits), MAX_NEW
    p = np.linspace(0.2, 0.9, J)
    traces = []
    for i in range(n):
        tokens = rng.integers(3, VOCAB, size=T).astype(np.int64)
        nxt = tokens[1:, None]
        agree = rng.random((T - 1, J)) < p[None, :]
        traces.append(Trace(prompt_index=i, prompt_ids=rng.integers(3, VOCAB, size=40).astype(np.int64),
                            tokens=tokens, exit_layers=exits, probe_layers=probes,
                            draft_tokens=np.where(agree, nxt, (nxt + 1) % VOCAB).astype(np.int64),
                            draft_maxprob=rng.random((T - 1, J)).astype(np.float32),
                            full_maxprob=rng.random(T - 1).astype(np.float32),
                            full_entropy=(5 * rng.random(T - 1)).astype(np.float32),
                            probe_cos=rng.random((T - 1, len(probes))).astype(np.float32), eos=False,
                            max_new_tokens=MAX_NEW, max_context=8192))
    meta = {"model": "smollm2-135m", "dtype": "float32", "exit_heads": "identity", "exit_layers": list(exits),
            "probe_layers": list(probes), "max_new_tokens": MAX_NEW, "vocab_size": VOCAB, "num_layers": NUM_LAYERS,
            "prompts": "synthetic", "chat_template": True, "max_context": 8192}
    return TraceSet(traces=tuple(traces), meta=meta).save(path)


def run(env, actions: list[np.ndarray], seconds: float) -> float:
    """Steps per second of random actions for about ``seconds`` (resets included, as in training)."""
    env.reset(seed=0)
    n, i, t0 = 0, 0, time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(1000):
            _, _, term, trunc, _ = env.step(actions[i])
            i = (i + 1) % len(actions)
            if term or trunc:
                env.reset()
        n += 1000
        t = time.perf_counter()
        if t >= deadline:
            return n / (t - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", default=None, help="Trace file (default: artifacts/traces/smoke.npz or synthetic).")
    ap.add_argument("--synthetic", action="store_true", help="Use synthetic traces even if real ones exist.")
    ap.add_argument("--seconds", type=float, default=5.0, help="Seconds per measurement.")
    ap.add_argument("--runs", type=int, default=3, help="Measurements per variant (the median is reported).")
    ap.add_argument("--profile", action="store_true", help="cProfile the unwrapped loop instead.")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        traces = args.traces or (str(REAL) if REAL.is_file() and not args.synthetic
                                 else str(synthetic_traces(Path(tmp) / "synthetic.npz")))
        env = gym.make("LEDE-v0", backend="replay", traces=traces)
        rng = np.random.default_rng(0)
        J, K = env.action_space.nvec
        actions = [np.array([rng.integers(J), rng.integers(K)], dtype=np.int64) for _ in range(4096)]
        print(f"traces {traces}: {len(env.unwrapped.backend.traces)} prompts, exits {list(env.unwrapped.exit_layers)}"
              f", k in 0..{K - 1}; load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(run, env.unwrapped, actions, args.seconds)
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            return
        print(f"wrappers: {env}")
        for name, e in (("gym.make", env), ("env.unwrapped", env.unwrapped)):
            rates = [run(e, actions, args.seconds) for _ in range(args.runs)]
            print(f"{name:14s} median {np.median(rates):9,.0f} steps/s  (runs: "
                  f"{', '.join(f'{r:,.0f}' for r in rates)}; target 20,000)")
        print(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
