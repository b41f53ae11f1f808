"""Minari datasets of LEDE-v0 (lede_env.datasets, and agents.behaviour for recipes with their behaviour agents):
recipes, collection (round trip, reproducibility, overwrite, interruption), loading for training (flat arrays,
mismatch errors) and layering (lede_env imports no agent). Replay backend on the tiny model."""

from __future__ import annotations

import json
import os
import shutil
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
from agents.behaviour import check_recipe, collect_from_recipe, collect_recipe, make_recipe_behaviour
from lede_env import datasets as lds
from lede_env.datasets import collection
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

def replay_recipe(path, tiny_setup, head: str, behaviour: str):
    """Write a recipe TOML over the tiny replay traces: ``head`` (top-level keys), the ``[env]`` table of the
    tiny setup, then ``behaviour`` (the ``[behaviour]`` table and its components). Returns ``path``."""
    path.write_text(textwrap.dedent(head) + textwrap.dedent(f"""
        [env]
        backend = "replay"
        traces = {json.dumps(tiny_setup["traces"])}
        profile = {json.dumps(tiny_setup["profile"])}
        spec_lengths = {list(SPEC)}
    """) + textwrap.dedent(behaviour))
    return path



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


def dataset_arrays(ds) -> dict[str, np.ndarray]:
    """Every array a dataset holds, by episode (observations, actions, rewards, terminations, truncations, infos,
    the behaviour component): what two collections compare."""
    out = {}
    comps = ds.storage.get_episode_metadata(range(ds.total_episodes))
    for ep, meta in zip(ds.iterate_episodes(), comps):
        for name in ("observations", "actions", "rewards", "terminations", "truncations"):
            out[f"{ep.id}/{name}"] = getattr(ep, name)
        out.update({f"{ep.id}/infos/{k}": v for k, v in ep.infos.items()})
        out[f"{ep.id}/component"] = np.array(meta["behaviour_component"])
    return out


def assert_same_data(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_episode_seeding_makes_every_episode_independent_of_the_others(tiny_setup, store):
    """With behaviour_seeding = 'episode' an episode depends only on its own seeds: run alone, in another order, by
    another copy of the behaviour, it is the same (what lets Ray workers collect episodes apart). The mixture holds
    a heuristic whose counter runs across episodes (Hugging Face's) and one whose statistics do (UCB)."""
    behaviour = {"kind": "mixture", "components": MIXTURE["components"] + [
        {"kind": "zoo", "name": "hf-heuristic", "weight": 0.3}, {"kind": "zoo", "name": "ucb", "weight": 0.3}]}
    r = check_recipe(recipe(tiny_setup, behaviour=behaviour, episodes=10, behaviour_seeding="episode"))
    stored = dataset_arrays(collect_recipe(r, progress=False))
    assert len({int(stored[f"{i}/component"]) for i in range(10)}) > 2
    runner = collection._Episodes.build(r, lambda env: make_recipe_behaviour(r, env))
    for i in [7, 3, 9, 0, 1, 2, 4, 5, 6, 8]:
        buf, component, steps = runner.episode(i)
        assert component == stored[f"{i}/component"] and steps == len(stored[f"{i}/actions"])
        np.testing.assert_array_equal(buf.actions, stored[f"{i}/actions"])
        np.testing.assert_array_equal(buf.observations, stored[f"{i}/observations"])
        np.testing.assert_array_equal(buf.infos["accepted"], stored[f"{i}/infos/accepted"])
    stream = dataset_arrays(collect_recipe(check_recipe(recipe(tiny_setup, behaviour=behaviour, episodes=10,
                                                               version=1)), progress=False))
    assert any(not np.array_equal(stream[f"{i}/actions"], stored[f"{i}/actions"]) for i in range(10))


def test_ray_needs_episode_seeding_and_a_restart(tiny_setup, store):
    with pytest.raises(ValueError, match="behaviour_seeding = \"episode\""):
        collect_recipe(recipe(tiny_setup, episodes=2), progress=False, ray="local")

    class Policy:       # no restart(seed)
        def predict(self, obs, state=None, episode_start=None, deterministic=True):
            return np.array([0, 0]), state

    with pytest.raises(TypeError, match="restart"):
        collect(recipe(tiny_setup, episodes=2, behaviour_seeding="episode"), Policy(), progress=False)
    assert leftovers(store) == []
    with pytest.raises(ValueError, match="behaviour_seeding must be one of"):
        recipe(tiny_setup, behaviour_seeding="per-episode")


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
    monkeypatch.setattr(collection, "_CHUNK_EPISODES", 2)     # some episodes already written when it fails
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
    from lede_env.datasets import Recipe, collect, collection

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

    collection._CHUNK_EPISODES = 2
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


# ------------------------------------------------------------------------------------------ Ctrl-C (issue 12)
_CLI_CHILD = textwrap.dedent("""
    import sys
    from lede_env.datasets import collection
    collection._CHUNK_EPISODES = 8          # many writes: interrupts land in them too
    from lede_env.cli import app
    app(["collect", "--recipe", sys.argv[1]])
""")


def test_one_ctrl_c_always_stops_collect(tiny_setup, tmp_path):
    """SIGINT during `lede collect`, sent right after the child says where it is (``LEDE_COLLECT_MARKERS``): during an
    episode, during a write, just before publishing, and once at a random moment. Every time the process exits
    promptly with 130 (or had finished, for the random one), with the complete dataset or nothing under the id,
    no hidden leftovers and no 'Exception ignored' (an interrupt swallowed by a finalizer)."""
    import random
    import time

    from lede_env.datasets.publish import datasets_path

    episodes = 300
    recipe_path = replay_recipe(tmp_path / "r.toml", tiny_setup, f"""
        episodes = {episodes}
        seed = 0
    """, """
        [behaviour]
        kind = "random"
    """)
    dataset_id = "lede/tiny-random-prompts/random-v0"

    def start(store):
        env = dict(os.environ, MINARI_DATASETS_PATH=str(store), OMP_NUM_THREADS="1", LEDE_COLLECT_MARKERS="1")
        return subprocess.Popen([sys.executable, "-c", _CLI_CHILD, str(recipe_path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)

    def wait_for(proc, marker: str, nth: int) -> str:
        seen, lines = 0, []
        for line in proc.stderr:               # text mode: tqdm's carriage returns end lines too
            lines.append(line)
            if line.rstrip().endswith(marker):
                seen += 1
                if seen == nth:
                    return "".join(lines)
        raise AssertionError(f"the child ended before {marker!r} #{nth}: {''.join(lines)[-2000:]}")

    def complete_or_none(store):
        if not (store / dataset_id).exists():
            return "none"
        with datasets_path(store):
            assert minari.load_dataset(dataset_id).total_episodes == episodes
        return "complete"

    t_start = time.perf_counter()
    tries = [("EPISODE 5", 1, "none"), ("WRITE", 2, "none"), ("PUBLISH", 1, "complete"), (None, 0, None)]
    for i, (marker, nth, expected) in enumerate(tries):
        store = tmp_path / f"try{i}"
        proc = start(store)
        try:
            before = wait_for(proc, marker or "EPISODE 0", nth or 1)
            if marker is None:              # the collection has started: a random moment of it
                time.sleep(random.uniform(0.0, 1.5))
            finished = proc.poll() is not None
            if not finished:
                proc.send_signal(signal.SIGINT)
            sent = time.perf_counter()
            out, err = proc.communicate(timeout=30)
            waited = time.perf_counter() - sent
        finally:
            proc.kill()
        err = before + err
        what = (marker, proc.returncode, err[-2000:])
        if finished or (marker is None and proc.returncode == 0):
            assert marker is None and proc.returncode == 0, what
        else:
            assert proc.returncode == 130 and "Interrupted." in err and waited < 30, what
        assert "Exception ignored" not in err, what
        state = complete_or_none(store)
        assert expected in (None, state), (what, state)
        assert not leftovers(store), (what, leftovers(store))
    assert time.perf_counter() - t_start < 60


def test_interrupts_are_deferred_to_the_collection_loop():
    """The SIGINT handler of a collection only sets a flag (raising from it could land in a finalizer); the loop
    raises, and the previous handler comes back after."""
    from lede_env.datasets.collection import _Interrupts

    before = signal.getsignal(signal.SIGINT)
    with _Interrupts() as stop:
        assert signal.getsignal(signal.SIGINT) is not before
        os.kill(os.getpid(), signal.SIGINT)        # delivered here: must not raise
        for _ in range(1000):
            if stop.pending:
                break
        assert stop.pending
        with pytest.raises(KeyboardInterrupt):
            stop.check()
    assert signal.getsignal(signal.SIGINT) is before


def test_datasets_package_imports_no_torch_and_no_agents():
    code = ("import sys, lede_env.datasets, lede_env.datasets.collection, lede_env.datasets.load\n"
            "print(sorted(m for m in ('torch', 'transformers', 'agents') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_recipe_env_arguments_are_checked(tiny_setup):
    base = dict(env=env_kwargs(tiny_setup), behaviour={"kind": "random"}, episodes=2)
    for bad, match in [(dict(lam=float("nan")), "lam must be finite"), (dict(lam="1"), "lam must be a number"),
                       (dict(threads=0), "threads must be >= 1"), (dict(exit_layers=[0, 2]), "layer numbers >= 1"),
                       (dict(max_new_tokens="64"), "max_new_tokens must be an integer"),
                       (dict(spec_lengths=[0, 1.5]), "spec_lengths"), (dict(chat_template="yes"), "true or false"),
                       (dict(backend="live", prompts="mixed:nope"), "unknown prompt set")]:
        with pytest.raises(ValueError, match=match):
            Recipe(**dict(base, env=dict(base["env"], **bad)))


def test_replay_collection_loads_no_torch(tiny_setup, store):
    code = textwrap.dedent("""
        import json, sys
        import numpy as np
        from lede_env.datasets import Recipe, collect

        class Ar:
            name = "ar"
            def predict(self, obs, state=None, episode_start=None, deterministic=True):
                return np.array([0, 0]), None

        collect(Recipe(**json.loads(sys.argv[1])), Ar(), progress=False)
        print(sorted(m for m in ("torch", "transformers", "agents") if m in sys.modules))
    """)
    r = dict(env=env_kwargs(tiny_setup), behaviour={"kind": "autoregressive"}, episodes=3)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(r)], capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ, MINARI_DATASETS_PATH=str(store)))
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


# ------------------------------------------------------------------------------------------ publishing races
def _finished(root: Path, dataset_id: str, text: str) -> Path:
    from lede_env.datasets import publish as pub

    src = root / pub.temp_name(pub.PARTIAL_PREFIX) / dataset_id
    src.mkdir(parents=True)
    (src / "data.txt").write_text(text)
    return src


@pytest.mark.parametrize("renameat2", [True, False])
def test_publish_never_replaces_what_appeared(tmp_path, monkeypatch, renameat2):
    from lede_env.datasets import publish as pub

    if not renameat2:
        monkeypatch.setattr(pub, "_libc", lambda: None)
    root, did = tmp_path / "root", "lede/x-y/random-v0"
    dst = root / did
    for theirs in ("non-empty", "empty"):
        dst.mkdir(parents=True)
        if theirs == "non-empty":
            (dst / "theirs.txt").write_text("theirs")
        with pytest.raises(FileExistsError) as err:
            pub.publish(_finished(root, did, "ours"), root, did, False, "d")
        msg = str(err.value)
        assert did in msg and str(dst) in msg and pub.PARTIAL_PREFIX not in msg, msg
        assert [p.name for p in dst.iterdir()] == (["theirs.txt"] if theirs == "non-empty" else [])
        shutil.rmtree(dst)
    # Without renameat2, a folder appearing between the check and the rename: refused when it holds anything.
    monkeypatch.setattr(pub, "_libc", lambda: None)
    real_rename = os.rename

    def racing(src, target):
        if Path(target) == dst:
            dst.mkdir(parents=True)
            (dst / "theirs.txt").write_text("theirs")
        return real_rename(src, target)

    monkeypatch.setattr(pub.os, "rename", racing)
    with pytest.raises(FileExistsError) as err:
        pub.publish(_finished(root, did, "ours"), root, did, False, "d")
    assert did in str(err.value) and pub.PARTIAL_PREFIX not in str(err.value) and (dst / "theirs.txt").is_file()


def test_publish_keeps_the_old_dataset_when_the_rollback_fails(tmp_path, monkeypatch):
    from lede_env.datasets import publish as pub

    root, did = tmp_path / "root", "lede/x-y/random-v0"
    dst = root / did
    dst.mkdir(parents=True)
    (dst / "data.txt").write_text("old")
    # names of a dead process (so that clean_stale would remove what it cleans)
    monkeypatch.setattr(pub, "temp_name", lambda prefix: f"{prefix}{pub.socket.gethostname()}-999999999-abcd1234")
    monkeypatch.setattr(pub, "_pid_alive", lambda pid: False)
    src = root / "incoming" / did
    src.mkdir(parents=True)
    (src / "data.txt").write_text("new")
    real = pub._rename_noreplace

    def racing(a, b):
        if Path(a) == src:            # someone creates the dataset between moving the old one aside and this
            dst.mkdir(parents=True)
            (dst / "data.txt").write_text("theirs")
        return real(a, b)

    monkeypatch.setattr(pub, "_rename_noreplace", racing)
    with pytest.raises(FileExistsError) as err:
        pub.publish(src, root, did, True, "d")
    old = err.value.old_data
    assert str(old) in str(err.value) and did in str(err.value) and (old / "data.txt").read_text() == "old"
    assert not old.name.startswith((pub.PARTIAL_PREFIX, pub.TRASH_PREFIX))
    pub.clean_stale(root)
    assert (old / "data.txt").read_text() == "old" and (dst / "data.txt").read_text() == "theirs"


def test_write_errors_name_the_dataset_folder_not_the_hidden_one(tiny_setup, store, monkeypatch, capsys):
    def disk_full(dataset_id, buffer, **kw):
        where = Path(os.environ["MINARI_DATASETS_PATH"]) / dataset_id / "data" / "main_data.hdf5"
        raise OSError(f"Unable to synchronously create file (unable to open file: name = '{where}', errno = 28, "
                      "error message = 'No space left on device')")

    monkeypatch.setattr(minari, "create_dataset_from_buffers", disk_full)
    did = "lede/tiny-random-prompts/random-v0"
    with pytest.raises(OSError) as err:
        collect_recipe(recipe(tiny_setup, behaviour={"kind": "random"}, episodes=2), progress=False)
    msg, printed = str(err.value), capsys.readouterr().err
    assert f"name = '{store.resolve() / did / 'data' / 'main_data.hdf5'}'" in msg and did in msg
    assert ".lede-" not in msg and ".lede-" not in printed and not leftovers(store)


def test_collect_checks_the_id_once_and_builds_the_env_config_once(tiny_setup, store, tmp_path, monkeypatch):
    from lede_env.env import EnvConfig

    counts = {"check_writable": 0, "EnvConfig": 0}
    real_check, real_post = collection.check_writable, EnvConfig.__post_init__

    def check(*a, **k):
        counts["check_writable"] += 1
        return real_check(*a, **k)

    def post(self):
        counts["EnvConfig"] += 1
        return real_post(self)

    monkeypatch.setattr(collection, "check_writable", check)
    monkeypatch.setattr(EnvConfig, "__post_init__", post)
    path = replay_recipe(tmp_path / "r.toml", tiny_setup, """
        episodes = 2
    """, """
        [behaviour]
        kind = "mixture"
        [[behaviour.components]]
        kind = "ar"
        weight = 1
    """)
    ds = collect_from_recipe(path, progress=False)
    assert ds.total_episodes == 2
    assert counts == {"check_writable": 1, "EnvConfig": 2}    # the recipe's, and the environment's own


def test_an_existing_dataset_is_refused_before_the_env_and_the_agent(tiny_setup, store, monkeypatch):
    import lede_env.models

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the dataset id was checked")

    monkeypatch.setattr(lede_env.models, "load_model", refuse)
    live = Recipe(env=dict(model="tiny-random", prompts=tiny_setup["prompts"], chat_template=False,
                           exit_heads="identity"), behaviour={"kind": "random"}, episodes=1, version=7)
    (store / live.dataset_id_before_env("random")).mkdir(parents=True)
    with pytest.raises(FileExistsError, match="already exists"):
        collect_recipe(live, progress=False)
    r = recipe(tiny_setup, behaviour={"kind": "random"}, episodes=1)
    collect_recipe(r, progress=False)

    def factory(env):
        raise AssertionError("the agent was built before the dataset id was checked")

    with pytest.raises(FileExistsError, match="already exists"):
        collect(r, factory, progress=False)
