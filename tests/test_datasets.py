"""Minari datasets of LEDE-v0 (lede_env.datasets, and agents.behaviour for recipes with their behaviour agents):
recipes, collection (round trip, reproducibility, overwrite, interruption), loading for training (flat arrays,
mismatch errors) and layering (lede_env imports no agent). Replay backend on the tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest

import lede_env  # noqa: F401  (registers the ids)
from agents.behaviour import check_recipe, collect_from_recipe, collect_recipe
from lede_env import datasets as lds
from lede_env.datasets import DatasetMismatchError, Recipe, collect, load_offline_arrays, recompute_rewards
from lede_env.wrappers import FlattenAction

from tests.conftest import TINY_EXITS as EXITS, TINY_SPEC as SPEC

REPO = Path(__file__).resolve().parent.parent
MIXTURE = {"kind": "mixture", "components": [{"kind": "random", "weight": 0.4},
                                             {"kind": "static", "exit_layer": 3, "k": 2, "weight": 0.2},
                                             {"kind": "ar", "weight": 0.1},
                                             {"kind": "oracle", "epsilon": 0.2, "weight": 0.3}]}


@pytest.fixture
def store(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def env_kwargs(setup, **kw):
    return dict(dict(backend="replay", traces=setup["traces"], profile=setup["profile"], spec_lengths=list(SPEC)),
                **kw)


def recipe(setup, behaviour=MIXTURE, episodes=12, seed=3, **kw):
    env = kw.pop("env", None) or env_kwargs(setup)
    return Recipe(env=env, behaviour=behaviour, episodes=episodes, seed=seed, author="tests",
                  description="test dataset", **kw)


def leftovers(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(".lede-")] if root.is_dir() else []


# ------------------------------------------------------------------------------------------ round trip
def test_round_trip(tiny_setup, store):
    ds = collect_recipe(recipe(tiny_setup), progress=False)
    dataset_id = "lede/tiny-random-prompts/mixture-v0"
    assert ds.id == dataset_id and (store / dataset_id / "data").is_dir()
    assert dataset_id in minari.list_local_datasets() and not leftovers(store)
    assert ds.total_episodes == 12

    meta = ds.storage.metadata
    for key in ("author", "description", "algorithm_name", "code_permalink", "requirements", "eval_env_spec",
                "env_spec", "model", "dtype", "exit_heads", "prompt_set", "prompt_split", "exit_layers",
                "spec_lengths", "cost_model", "cost_table", "lam", "reward", "behaviour", "observation_layout",
                "recipe", "traces_sha256"):
        assert meta.get(key) not in (None, "", []), key
    assert meta["author"] == {"tests"} and meta["algorithm_name"].startswith("mixture")
    assert meta["model"] == "tiny-random" and meta["exit_layers"] == list(EXITS) and meta["spec_lengths"] == list(SPEC)
    assert meta["behaviour"]["components"][3] == {"kind": "oracle", "epsilon": 0.2, "weight": 0.3}

    env = gym.make("LEDE-v0", **env_kwargs(tiny_setup))
    data = load_offline_arrays(dataset_id, env)
    J, K = len(EXITS), len(SPEC)
    N, D = ds.total_steps, env.observation_space.shape[0]
    assert len(data) == N and data.nvec == (J, K) and data.n_actions == J * K
    assert data.observations.shape == data.next_observations.shape == (N, D)
    assert data.observations.dtype == data.next_observations.dtype == np.float32
    assert data.actions.shape == (N,) and data.actions.dtype == np.int64
    assert data.multi_actions.shape == (N, 2) and data.multi_actions.dtype == np.int64
    assert data.rewards.shape == (N,) and data.rewards.dtype == np.float64
    assert data.terminals.dtype == data.timeouts.dtype == bool
    assert 0 <= data.actions.min() and data.actions.max() < J * K
    assert (data.multi_actions[:, 0] < J).all() and (data.multi_actions[:, 1] < K).all()
    flat = FlattenAction(env)
    assert all(data.actions[i] == flat.flatten(data.multi_actions[i]) for i in range(N))
    assert int(data.dones.sum()) == 12 and np.unique(data.episode_ids).size == 12
    space = env.observation_space
    assert all(space.contains(o) for o in data.observations) and all(space.contains(o) for o in data.next_observations)
    # Rewards from the stored parts, for the dataset's lam and another one.
    np.testing.assert_allclose(data.rewards_for(1.0), data.rewards, rtol=1e-12, atol=1e-12)
    half = load_offline_arrays(ds, env, lam=0.5)
    np.testing.assert_allclose(half.rewards, data.tokens - 0.5 * data.cost / data.c_ar, rtol=1e-12)
    assert half.lam == 0.5 and not np.allclose(half.rewards, data.rewards)

    # Every episode: rewards from infos == stored rewards; replaying the recorded actions from the recorded
    # reset seed reproduces the observations, rewards and ends exactly.
    seeds = [m["seed"] for m in ds.storage.get_episode_metadata(range(12))]
    components = {m["behaviour_component"] for m in ds.storage.get_episode_metadata(range(12))}
    assert components <= {0, 1, 2, 3} and len(components) > 1
    for ep, seed in zip(ds.iterate_episodes(), seeds):
        assert len(ep.observations) == len(ep) + 1 and len(ep.infos["tokens"]) == len(ep) + 1
        np.testing.assert_allclose(recompute_rewards(ep.infos, 1.0), ep.rewards, rtol=1e-12, atol=1e-12)
        obs, info = env.reset(seed=seed)
        np.testing.assert_array_equal(obs, ep.observations[0])
        assert info["prompt_index"] == ep.infos["prompt_index"][0]
        for t, action in enumerate(ep.actions):
            obs, r, term, trunc, info = env.step(action)
            np.testing.assert_array_equal(obs, ep.observations[t + 1])
            assert r == ep.rewards[t] and term == ep.terminations[t] and trunc == ep.truncations[t]
            assert info["tokens"] == ep.infos["tokens"][t + 1] and info["cost"] == ep.infos["cost"][t + 1]
        assert term or trunc


def test_collection_is_reproducible(tiny_setup, store):
    a = collect_recipe(recipe(tiny_setup, episodes=6, version=1), progress=False)
    b = collect_recipe(recipe(tiny_setup, episodes=6, version=2), progress=False)
    c = collect_recipe(recipe(tiny_setup, episodes=6, version=3, seed=4), progress=False)
    assert {a.id, b.id, c.id} == {f"lede/tiny-random-prompts/mixture-v{v}" for v in (1, 2, 3)}
    env = gym.make("LEDE-v0", **env_kwargs(tiny_setup))
    da, db, dc = (load_offline_arrays(x, env) for x in (a, b, c))
    for name in ("observations", "actions", "rewards", "terminals", "timeouts"):
        np.testing.assert_array_equal(getattr(da, name), getattr(db, name))
    assert len(da) != len(dc) or not np.array_equal(da.actions, dc.actions)


def test_progress_output_and_minari_cli(tiny_setup, store, capsys):
    from typer.testing import CliRunner
    from minari.cli import app

    ds = collect_recipe(recipe(tiny_setup, behaviour={"kind": "random"}, episodes=3), progress=True)
    out = capsys.readouterr()
    assert ds.id == "lede/tiny-random-prompts/random-v0"
    assert f"Stored {ds.id}" in out.out and str(store / ds.id) in out.out
    runner = CliRunner()
    listed = runner.invoke(app, ["list", "local"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0 and ds.id in listed.output
    shown = runner.invoke(app, ["show", ds.id], env={"COLUMNS": "250"})
    assert shown.exit_code == 0 and "Total Episodes" in shown.output


# ------------------------------------------------------------------------------------------ loading checks
def test_mismatch_errors_name_the_difference(tiny_setup, store):
    ds = collect_recipe(recipe(tiny_setup, behaviour={"kind": "static", "exit_layer": 2, "k": 3}, episodes=2),
                 progress=False)
    assert ds.id == "lede/tiny-random-prompts/static-L2-k3-v0"
    with pytest.raises(DatasetMismatchError, match=r"spec_lengths: dataset \[0, 1, 2, 3, 4, 5, 6\], environment"):
        load_offline_arrays(ds, gym.make("LEDE-v0", **env_kwargs(tiny_setup, spec_lengths=[0, 1, 2, 3])))
    with pytest.raises(DatasetMismatchError) as err:
        load_offline_arrays(ds.id, gym.make("LEDE-v0", **env_kwargs(tiny_setup, exit_layers=[2, 4])))
    assert "exit_layers: dataset [1, 2, 3, 4, 5], environment [2, 4]" in str(err.value)
    assert "observation layout" in str(err.value)
    meta = dict(ds.storage.metadata, env_id="LEDE-v1", env_version=1)
    with pytest.raises(DatasetMismatchError, match="environment version"):
        lds.check_compatible(meta, gym.make("LEDE-v0", **env_kwargs(tiny_setup)), ds.id)
    with pytest.raises(DatasetMismatchError, match="not a LEDE gym dataset"):
        lds.check_compatible({"dataset_id": "x"}, gym.make("LEDE-v0", **env_kwargs(tiny_setup)))
    # A wrapped environment with the same lists is fine.
    data = load_offline_arrays(ds, FlattenAction(gym.make("LEDE-v0", **env_kwargs(tiny_setup))))
    assert (data.multi_actions == [1, 3]).all()


# ------------------------------------------------------------------------------------------ overwrite, interruption
def test_existing_dataset_is_not_overwritten(tiny_setup, store):
    r = recipe(tiny_setup, behaviour={"kind": "random"}, episodes=3)
    first = collect_recipe(r, progress=False)
    steps = first.total_steps
    with pytest.raises(FileExistsError, match="overwrite"):
        collect_recipe(r, progress=False)
    assert minari.load_dataset(first.id).total_steps == steps
    again = collect_recipe(Recipe(**dict(r.to_dict(), episodes=5)), overwrite=True, progress=False)
    assert again.id == first.id and again.total_episodes == 5
    assert list(minari.list_local_datasets()) == [first.id] and not leftovers(store)


class FailingAgent:
    """Acts randomly, raises after ``n`` predictions (a crash in the middle of a collection)."""

    name = "failing"

    def __init__(self, n):
        self.n, self.rng = n, np.random.default_rng(0)

    def predict(self, obs, state=None, episode_start=None, deterministic=True):
        self.n -= 1
        if self.n < 0:
            raise RuntimeError("policy crashed")
        return np.array([self.rng.integers(len(EXITS)), self.rng.integers(len(SPEC))]), None


def test_exception_midway_leaves_nothing(tiny_setup, store, monkeypatch, capsys):
    monkeypatch.setattr(lds, "_CHUNK_EPISODES", 2)     # some episodes already written when it fails
    r = recipe(tiny_setup, behaviour={"kind": "random"}, episodes=50)
    with pytest.raises(RuntimeError, match="policy crashed"):
        collect(r, progress=False, agent=FailingAgent(150))
    err = capsys.readouterr().err
    assert "lede/tiny-random-prompts/random-v0 failed (RuntimeError: policy crashed)" in err
    assert "nothing was stored" in err
    assert not (store / "lede/tiny-random-prompts/random-v0").exists()
    assert minari.list_local_datasets() == {} and not leftovers(store)
    # An existing dataset survives a failed overwrite.
    ok = collect_recipe(recipe(tiny_setup, behaviour={"kind": "random"}, episodes=2), progress=False)
    with pytest.raises(RuntimeError):
        collect(r, overwrite=True, progress=False, agent=FailingAgent(60))
    assert minari.load_dataset(ok.id).total_episodes == 2 and not leftovers(store)


_CHILD = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from lede_env import datasets as lds
    from lede_env.datasets import Recipe, collect

    class Slow:
        name = "slow"
        def __init__(self):
            self.calls, self.rng = 0, np.random.default_rng(0)
        def predict(self, obs, state=None, episode_start=None, deterministic=True):
            self.calls += 1
            if self.calls == 40:
                print("MIDWAY", flush=True)
            if self.calls > 40:
                time.sleep(0.01)
            return np.array([self.rng.integers(5), self.rng.integers(7)]), None

    lds._CHUNK_EPISODES = 2
    recipe = Recipe(**json.loads(sys.argv[1]))
    collect(recipe, progress=False, agent=Slow())
    print("FINISHED", flush=True)
""")


def _start_child(setup, store):
    r = dict(env=env_kwargs(setup), behaviour={"kind": "random"}, episodes=10_000, seed=0)
    env = dict(os.environ, MINARI_DATASETS_PATH=str(store), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(r)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    line = proc.stdout.readline()
    assert line.strip() == "MIDWAY", (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_signal_midway_leaves_nothing(tiny_setup, store, sig):
    dataset_id = "lede/tiny-random-prompts/random-v0"
    proc = _start_child(tiny_setup, store)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "FINISHED" not in out
    assert not (store / dataset_id).exists()
    assert minari.list_local_datasets() == {}
    if sig == signal.SIGINT:
        assert f"Collection of {dataset_id} interrupted" in err and "KeyboardInterrupt" in err
        assert not leftovers(store)
    else:   # a killed process cannot clean up: its hidden folder is removed by the next collection
        assert leftovers(store)
        collect_recipe(recipe(tiny_setup, behaviour={"kind": "random"}, episodes=1), progress=False)
        assert not leftovers(store) and list(minari.list_local_datasets()) == [dataset_id]


# ------------------------------------------------------------------------------------------ recipes
def test_recipe_validation(tiny_setup, tmp_path):
    base = dict(env=env_kwargs(tiny_setup), behaviour={"kind": "random"}, episodes=3)
    Recipe(**base)
    for bad, match in [(dict(episodes=0), "episodes"), (dict(env={"nope": 1}), "unknown arguments"),
                       (dict(env={"backend": "replay"}), "traces"), (dict(behaviour="random"), "behaviour"),
                       (dict(dataset_id="no version"), "Malformed"), (dict(env_id="CartPole-v9"), "env_id"),
                       (dict(name="a/b"), "name"), (dict(seed=1.5), "seed")]:
        with pytest.raises(ValueError, match=match):
            Recipe(**dict(base, **bad))
    # The behaviour table is the agents' business: lede_env stores it, agents.behaviour checks it.
    for bad, match in [(dict(behaviour={"kind": "magic"}), "kind"),
                       (dict(behaviour={"kind": "static", "exit_layer": 2}), "exit_layer and k")]:
        with pytest.raises(ValueError, match=match):
            check_recipe(Recipe(**dict(base, **bad)))
    assert check_recipe(Recipe(**dict(base, behaviour={"kind": "ar"}))).behaviour == {"kind": "autoregressive"}
    path = tmp_path / "r.toml"
    path.write_text('episodes = 2\nseed = 1\nsurprise = 3\n[env]\nbackend = "replay"\ntraces = "t.npz"\n'
                    '[behaviour]\nkind = "random"\n')
    with pytest.raises(ValueError, match=r"Unknown recipe keys \['surprise'\]"):
        Recipe.from_toml(path)


def test_recipe_from_toml_collects(tiny_setup, store, tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(textwrap.dedent(f"""
        episodes = 4
        seed = 7
        version = 2
        author = "tests"
        description = "tiny"
        [env]
        backend = "replay"
        traces = {json.dumps(tiny_setup["traces"])}
        profile = {json.dumps(tiny_setup["profile"])}
        spec_lengths = [0, 1, 2, 3, 4, 5, 6]
        lam = 0.5
        [behaviour]
        kind = "mixture"
        [[behaviour.components]]
        kind = "oracle"
        epsilon = 0.1
        weight = 3
        [[behaviour.components]]
        kind = "ar"
        weight = 1
    """))
    ds = collect_from_recipe(path, progress=False)
    assert ds.id == "lede/tiny-random-prompts/mixture-v2" and ds.total_episodes == 4
    meta = ds.storage.metadata
    assert meta["lam"] == 0.5 and meta["recipe"]["source"] == str(path) and meta["seed"] == 7
    assert [c["weight"] for c in meta["behaviour"]["components"]] == [0.75, 0.25]
    for ep in ds.iterate_episodes():
        np.testing.assert_allclose(recompute_rewards(ep.infos, 0.5), ep.rewards, rtol=1e-12)


def test_dataset_id_naming():
    from types import SimpleNamespace as NS

    def fake(backend, model, prompts):
        cfg = NS(backend=backend, model=model, prompts=prompts)
        meta = {"model": model, "prompts": prompts}
        return NS(unwrapped=NS(config=cfg, trace_meta=meta))

    assert lds.dataset_id_for(fake("replay", "smollm2-135m", "mixed:train"), "random") == \
        "lede/smollm2-135m-mixed-train/random-v0"
    assert lds.dataset_id_for(fake("live", "/models/My.Llama", "humaneval:test"), "oracle-eps20", 3) == \
        "lede/My-Llama-humaneval-test/oracle-eps20-v3"
    assert lds.dataset_id_for(fake("live", "tiny-random", "data/my prompts.jsonl"), "ar") == \
        "lede/tiny-random-my-prompts/ar-v0"


def test_repository_recipes_are_valid():
    recipes = sorted((REPO / "datasets").glob("*.toml"))
    assert len(recipes) >= 3
    readme = (REPO / "datasets" / "README.md").read_text()
    backends = set()
    for path in recipes:
        r = Recipe.from_toml(path)
        backends.add(r.env.get("backend", "live"))
        assert path.name in readme and r.source == str(path)
        with open(path, "rb") as f:
            assert "seed" in tomllib.load(f)
    assert backends == {"replay", "live"}
    assert not (REPO / "datasets" / "__init__.py").exists()


# ------------------------------------------------------------------------------------------ layering
def test_lede_env_does_not_import_agents():
    code = ("import sys, lede_env, lede_env.datasets, lede_env.env, lede_env.backends.replay\n"
            "print(sorted(m for m in sys.modules if m == 'agents' or m.startswith('agents.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_collect_takes_a_built_policy(tiny_setup, store):
    """lede_env.datasets.collect with a policy built outside it: the recipe's behaviour seed reproduces the
    dataset that agents.behaviour.collect_recipe records."""
    from agents.behaviour import make_recipe_behaviour

    r = recipe(tiny_setup, behaviour={"kind": "random"}, episodes=4)
    env = r.make_env()
    ds = collect(r, make_recipe_behaviour(r, env), env=env, progress=False)
    assert ds.id == "lede/tiny-random-prompts/random-v0"
    again = collect_recipe(Recipe(**dict(r.to_dict(), version=1)), progress=False)
    da, db = (load_offline_arrays(x, env) for x in (ds, again))
    np.testing.assert_array_equal(da.actions, db.actions)
    np.testing.assert_array_equal(da.observations, db.observations)
    with pytest.raises(TypeError, match="predict"):
        collect(r, object(), progress=False)
