"""How long `gym.make("LEDE-v0", backend="replay", ...)` takes, and whether it imports model code (prints JSON;
not a test). Synthetic traces and profile, no model; each repeat in a fresh interpreter.

    .venv/bin/python benchmarks/replay_make.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import gymnasium as gym
import lede_env
t1 = time.perf_counter()
env = gym.make("LEDE-v0", backend="replay", traces=sys.argv[1], profile=sys.argv[2])
t2 = time.perf_counter()
print(json.dumps({"import_s": round(t1 - t0, 3), "make_s": round(t2 - t1, 3),
                  "model_code_loaded": sorted(m for m in ("torch", "transformers") if m in sys.modules)}))
"""


def write_files(folder: Path) -> tuple[Path, Path]:
    import numpy as np

    from lede_env.engine.profile import LatencyProfile, cpu_signature
    from lede_env.traces import Trace, TraceSet

    rng = np.random.default_rng(0)
    T, J = 64, 13
    traces = [Trace(prompt_index=i, prompt_ids=np.arange(8), tokens=rng.integers(3, 1000, T), exit_layers=tuple(
        range(4, 30, 2)), probe_layers=(7, 15, 22, 28), draft_tokens=rng.integers(3, 1000, (T - 1, J)),
        draft_maxprob=rng.random((T - 1, J)).astype(np.float32), full_maxprob=rng.random(T - 1).astype(np.float32),
        full_entropy=rng.random(T - 1).astype(np.float32), probe_cos=rng.random((T - 1, 4)).astype(np.float32),
        eos=False, max_new_tokens=T, max_context=2048) for i in range(8)]
    meta = {"model": "synthetic", "dtype": "float32", "exit_heads": "identity", "exit_layers": list(range(4, 30, 2)),
            "probe_layers": [7, 15, 22, 28], "max_new_tokens": T, "vocab_size": 1000, "num_layers": 30}
    traces_path = TraceSet(tuple(traces), meta).save(folder / "traces.npz")
    profile = LatencyProfile(model="synthetic", dtype="float32", device="cpu", threads=2, path="fast",
                             exit_heads="identity", num_layers=30, draft_cost={L: 0.0005 * L for L in range(4, 30, 2)},
                             verify_cost=tuple(0.02 + 0.001 * q for q in range(13)),
                             layer_cost=tuple(0.0005 + 0.00003 * q for q in range(13)),
                             head_cost=tuple(0.004 for _ in range(13)), cpu=cpu_signature())
    return traces_path, profile.save(folder / "profile.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        traces, profile = write_files(Path(d))
        for _ in range(args.repeats):
            out = subprocess.run([sys.executable, "-c", CHILD, str(traces), str(profile)], capture_output=True,
                                 text=True, check=True)
            print(json.loads(out.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()
