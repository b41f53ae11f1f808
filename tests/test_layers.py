"""The import contract (DESIGN.md section 6): floors from bottom to top, nothing importing upward, and model code
(torch, transformers) kept out of the modules that must run without a model. Every import statement counts,
also those inside functions (read from the source with `ast`, not from what an import happened to load)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# floor of each module, by longest matching prefix; bottom to top
FLOORS = [
    ("base", ["lede_env.paths", "lede_env.engine.limits", "lede_env.engine.path_names", "lede_env.engine.stop_rules",
              "lede_env.traces", "lede_env.reward", "lede_env.plotting", "lede_env.distributed"]),
    ("models and engine", ["lede_env.models", "lede_env.prompts", "lede_env.defaults", "lede_env.engine",
                           "lede_env.wiring", "lede_env.record", "lede_env.bench_engine", "lede_env.heads_fitting"]),
    ("backends", ["lede_env.backends"]),
    ("env", ["lede_env.env", "lede_env.features", "lede_env.render", "lede_env.wrappers", "lede_env.rollout",
             "lede_env"]),
    ("agents and analysis", ["agents", "lede_env.oracle", "lede_env.analysis", "lede_env.datasets", "lede_env.bench"]),
    ("command line", ["lede_env.cli"]),
]
RANK = {name: i for i, (name, _) in enumerate(FLOORS)}
# modules that run without a model: no torch, no transformers, anywhere in them
MODEL_FREE = ["lede_env.traces", "lede_env.reward", "lede_env.oracle", "lede_env.backends.replay", "lede_env.backends.base",
              "lede_env.datasets", "agents", "lede_env.features", "lede_env.rollout", "lede_env.wrappers",
              "lede_env.engine.limits", "lede_env.engine.path_names", "lede_env.engine.stop_rules",
              "lede_env.engine.profile", "lede_env.engine.sampling", "lede_env.plotting"]
MODEL_CODE = ("torch", "transformers", "accelerate", "gguf")
# the learned agents' networks are torch modules (a few MLP layers, no language model): torch, and nothing else of
# MODEL_CODE; `import agents` still loads no torch (their imports are inside functions; a test below runs it)
LEARNED = ["agents.lede", "agents.q_network", "agents.train_lede", "agents.sb3", "agents.train_sb3",
           "agents.training"]


def floor_of(module: str) -> str | None:
    best, floor = -1, None
    for name, prefixes in FLOORS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, floor = len(p), name
    return floor


def modules() -> dict[str, Path]:
    found = {}
    for pkg in ("lede_env", "agents"):
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports_of(module: str, path: Path) -> list[tuple[str, int]]:
    """Every module an import statement in ``path`` names (absolute, or resolved from a relative import)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.append((base, node.lineno))
            out += [(f"{base}.{a.name}", node.lineno) for a in node.names]   # `from pkg import submodule`
    return out


def test_every_module_has_a_floor():
    assert [m for m in modules() if floor_of(m) is None] == []


def test_nothing_imports_upward():
    known = modules()
    bad = []
    for module, path in known.items():
        here = RANK[floor_of(module)]
        for name, line in imports_of(module, path):
            if name not in known:
                continue
            there = RANK[floor_of(name)]
            if there > here:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({floor_of(module)}) imports {name} ({floor_of(name)})")
    assert bad == []


def test_lede_env_imports_no_agent():
    # the command line and `lede bench` (which times agents beside the engine) sit above the agents
    bad = [f"{p.relative_to(ROOT)}:{line} imports {name}" for m, p in modules().items() if m.startswith("lede_env")
           and m != "lede_env.cli" and m != "lede_env.bench" and not m.startswith("lede_env.bench.") for name, line in imports_of(m, p) if name == "agents" or name.startswith("agents.")]
    assert bad == []


def test_model_free_modules_import_no_model_code():
    bad = []
    for module, path in modules().items():
        if not any(module == p or module.startswith(p + ".") for p in MODEL_FREE):
            continue
        learned = any(module == p or module.startswith(p + ".") for p in LEARNED)
        for name, line in imports_of(module, path):
            top = name.split(".")[0]
            if top in MODEL_CODE and not (learned and top == "torch"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert bad == []


def test_the_checks_see_imports_inside_functions(tmp_path):
    """The contract reads function bodies too: an upward import hidden in a function is found."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from lede_env.env import LEDEEnv\n    import torch\n")
    names = [n for n, _ in imports_of("lede_env.engine.m", src)]
    assert "lede_env.env" in names and "torch" in names


@pytest.fixture(scope="module")
def replay_files(tmp_path_factory):
    """A two-prompt synthetic trace file and a latency profile (no model)."""
    import numpy as np

    from lede_env.engine.profile import LatencyProfile, cpu_signature
    from lede_env.traces import Trace, TraceSet

    d = tmp_path_factory.mktemp("replay")
    rng = np.random.default_rng(0)
    traces = []
    for i in range(2):
        T = 12
        tokens = rng.integers(3, 50, T)
        traces.append(Trace(prompt_index=i, prompt_ids=np.arange(4), tokens=tokens, exit_layers=(2, 4),
                            probe_layers=(3,), draft_tokens=rng.integers(3, 50, (T - 1, 2)),
                            draft_maxprob=rng.random((T - 1, 2)).astype(np.float32),
                            full_maxprob=rng.random(T - 1).astype(np.float32),
                            full_entropy=rng.random(T - 1).astype(np.float32),
                            probe_cos=rng.random((T - 1, 1)).astype(np.float32), eos=False, max_new_tokens=12,
                            max_context=64))
    meta = {"model": "synthetic", "dtype": "float32", "exit_heads": "identity", "exit_layers": [2, 4],
            "probe_layers": [3], "max_new_tokens": 12, "vocab_size": 50, "num_layers": 6}
    TraceSet(tuple(traces), meta).save(d / "traces.npz")
    LatencyProfile(model="synthetic", dtype="float32", device="cpu", threads=2, path="fast", exit_heads="identity",
                   num_layers=6, draft_cost={2: 0.002, 4: 0.004}, verify_cost=tuple(0.01 + 0.001 * q for q in range(13)),
                   layer_cost=tuple(0.0015 + 0.0001 * q for q in range(13)), head_cost=tuple(0.001 for _ in range(13)),
                   cpu=cpu_signature()).save(d / "profile.json")
    return d


def test_replay_environment_loads_no_model_code(replay_files):
    """`gym.make` of the replay backend, a few steps and an oracle solve import neither torch nor transformers."""
    code = f"""
import json, sys, time
t0 = time.perf_counter()
import gymnasium as gym
import lede_env
from lede_env.oracle import solve
import agents
env = gym.make("LEDE-v0", backend="replay", traces={str(replay_files / 'traces.npz')!r},
               profile={str(replay_files / 'profile.json')!r})
obs, info = env.reset(seed=0)
env.step(env.action_space.sample())
print(json.dumps({{"loaded": sorted(m for m in {MODEL_CODE!r} if m in sys.modules)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["loaded"] == []
