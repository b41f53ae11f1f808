"""Baseline and behaviour agents (agents.baselines) on a replay environment built from synthetic traces."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import lede_env  # noqa: F401  (registers the ids)
from agents import (load, AutoregressiveAgent, OracleAgent, MixtureAgent, RandomAgent, StaticAgent,
                    behaviour_name, check_behaviour_spec, make_behaviour)
from lede_env.oracle import rollout_static, solve
from lede_env.rollout import rollout
from lede_env.traces import Trace
from tests.agents.synthetic import EXITS, SPEC, make_env, synthetic_trace, write_replay_files

@pytest.fixture(scope="module")
def replay_files(tmp_path_factory):
    """Synthetic traces (deeper exits agree more often) and a latency profile: a replay env without a model."""
    rng = np.random.default_rng(0)
    return write_replay_files(tmp_path_factory.mktemp("synthetic"),
                              [synthetic_trace(i, 30, (0.3, 0.6, 0.85), rng) for i in range(5)])


def play(env, agent, prompt_index, deterministic=True):
    """One episode through the project's one loop (`rollout`, with the hooks); returns (return, actions)."""
    ep = rollout(env, agent, options={"prompt_index": prompt_index}, deterministic=deterministic,
                 info_keys=("tokens",))
    assert ep.actions.shape == (ep.steps, 2) and ep.actions.dtype == np.int64
    assert all(env.action_space.contains(a) for a in ep.actions)
    return ep.episode_return, [tuple(int(x) for x in a) for a in ep.actions]


def test_random_agent_is_seeded_uniform_and_batched(replay_files):
    env = make_env(replay_files)
    a, b = RandomAgent(env, seed=1), RandomAgent(env, seed=1)
    obs = np.zeros(env.observation_space.shape, np.float32)
    xs = np.array([a.predict(obs)[0] for _ in range(3000)])
    assert (xs == np.array([b.predict(obs)[0] for _ in range(3000)])).all()
    assert set(map(tuple, xs)) == {(j, k) for j in range(len(EXITS)) for k in range(len(SPEC))}
    batch, _ = a.predict(np.zeros((7, obs.size), np.float32))
    assert batch.shape == (7, 2) and batch.dtype == np.int64


def test_static_and_autoregressive_map_values_to_indices(replay_files):
    env = make_env(replay_files)
    obs = np.zeros(env.observation_space.shape, np.float32)
    static = StaticAgent(env, exit_layer=4, k=3)
    assert static.predict(obs)[0].tolist() == [1, 3]
    assert static.predict(np.zeros((3, obs.size)))[0].tolist() == [[1, 3]] * 3
    assert AutoregressiveAgent(env).predict(obs)[0].tolist() == [0, 0]
    with pytest.raises(ValueError, match=r"Exit layer 5 is not one of the environment's exit layers \[2, 4, 6\]"):
        StaticAgent(env, 5, 1)
    with pytest.raises(ValueError, match="Speculation length 9"):
        StaticAgent(env, 4, 9)
    with pytest.raises(ValueError, match="Speculation length 0"):
        AutoregressiveAgent(make_env(replay_files, spec_lengths=(1, 2)))
    # Static return equals the oracle module's static rollout on the same trace.
    base = env.unwrapped
    table = base.profile.cost_table(EXITS, max(SPEC))
    for i, tr in enumerate(replay_files["set"].traces):
        ret, _ = play(env, StaticAgent(env, 6, 2), i)
        assert ret == pytest.approx(rollout_static(tr, table, 2, 2).episode_return, rel=1e-9)


def test_epsilon_oracle(replay_files):
    env = make_env(replay_files)
    table = env.unwrapped.profile.cost_table(EXITS, max(SPEC))
    agent = OracleAgent(env, epsilon=0.5, seed=0)
    for i, tr in enumerate(replay_files["set"].traces):
        best = solve(tr, table, SPEC)
        ret, actions = play(env, agent, i, deterministic=True)       # deterministic: no noise
        assert ret == pytest.approx(best.episode_return, rel=1e-9) and tuple(actions) == best.actions
        for L in EXITS:
            for k in SPEC:
                assert ret >= play(env, StaticAgent(env, L, k), i)[0] - 1e-9
    noisy = [play(env, OracleAgent(env, epsilon=1.0, seed=s), 0, deterministic=False)[0] for s in range(3)]
    assert max(noisy) < solve(replay_files["set"].traces[0], table, SPEC).episode_return
    # Noise then recovery: the oracle acts optimally from wherever the episode is (never worse than the noise).
    mid = [play(env, OracleAgent(env, epsilon=0.3, seed=s), 1, deterministic=False)[0] for s in range(5)]
    assert all(r <= solve(replay_files["set"].traces[1], table, SPEC).episode_return + 1e-9 for r in mid)


def test_epsilon_oracle_on_a_subset_of_exit_layers(replay_files):
    env = make_env(replay_files, exit_layers=(4, 6))
    agent = OracleAgent(env, 0.0)
    table = env.unwrapped.profile.cost_table((4, 6), max(SPEC))
    for i, tr in enumerate(replay_files["set"].traces):
        sub = Trace(**{**{f: getattr(tr, f) for f in ("prompt_index", "prompt_ids", "tokens", "probe_layers",
                                                      "full_maxprob", "full_entropy", "probe_cos", "eos",
                                                      "max_new_tokens", "max_context")},
                       "exit_layers": (4, 6), "draft_tokens": tr.draft_tokens[:, 1:],
                       "draft_maxprob": tr.draft_maxprob[:, 1:]})
        assert play(env, agent, i)[0] == pytest.approx(solve(sub, table, SPEC).episode_return, rel=1e-9)


def test_epsilon_oracle_needs_replay_and_hooks(replay_files):
    env = make_env(replay_files)
    agent = OracleAgent(env, 0.1)
    obs, _ = env.reset(seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        agent.predict(obs)
    with pytest.raises(ValueError, match="single environment"):
        agent.predict(np.zeros((2, obs.size)))
    live = SimpleNamespace(unwrapped=SimpleNamespace(config=SimpleNamespace(backend="live")))
    with pytest.raises(ValueError, match="replay"):
        OracleAgent(live, 0.1)
    with pytest.raises(ValueError, match="epsilon"):
        OracleAgent(env, 1.5)


def test_mixture_picks_one_component_per_episode(replay_files):
    env = make_env(replay_files)
    spec = {"kind": "mixture", "components": [{"kind": "static", "exit_layer": 2, "k": 1, "weight": 3},
                                               {"kind": "ar", "weight": 1}]}
    mix = make_behaviour(spec, env, seed=5)
    assert isinstance(mix, MixtureAgent) and mix.weights.tolist() == [0.75, 0.25]
    picks = []
    for ep in range(400):
        _, actions = play(env, mix, ep % 5)
        assert len(set(actions)) == 1                                 # one component for the whole episode
        picks.append(mix.component)
        assert actions[0] == ((0, 1) if mix.component == 0 else (0, 0))
    assert abs(np.mean(np.array(picks) == 0) - 0.75) < 0.08
    again = make_behaviour(spec, env, seed=5)
    assert [(again.reset({}), again.component)[1] for _ in range(50)] == picks[:50]
    # Without the hooks, a true episode_start draws a new component.
    plain = make_behaviour(spec, env, seed=1)
    obs = np.zeros(env.observation_space.shape, np.float32)
    comps = set()
    for _ in range(50):
        plain.predict(obs, episode_start=np.array([True]))
        comps.add(plain.component)
        plain.predict(obs, episode_start=np.array([False]))
    assert comps == {0, 1}


def test_make_behaviour_builds_and_seeds(replay_files):
    env = make_env(replay_files)
    assert isinstance(make_behaviour({"kind": "random"}, env), RandomAgent)
    assert isinstance(make_behaviour({"kind": "ar"}, env), AutoregressiveAgent)
    assert isinstance(make_behaviour({"kind": "static", "exit_layer": 6, "k": 4}, env), StaticAgent)
    assert isinstance(make_behaviour({"kind": "oracle", "epsilon": 0.2}, env), OracleAgent)
    spec = {"kind": "mixture", "components": [{"kind": "random"}, {"kind": "oracle", "epsilon": 0.5}]}
    a, b, c = (make_behaviour(spec, env, seed=s) for s in (1, 1, 2))
    runs = [[play(env, x, i, deterministic=False)[1] for i in range(5)] for x in (a, b, c)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


STATEFUL = [{"kind": "random"}, {"kind": "oracle", "epsilon": 0.5}, {"kind": "zoo", "name": "hf-heuristic"},
            {"kind": "zoo", "name": "swift"}, {"kind": "zoo", "name": "ucb"}, {"kind": "zoo", "name": "del"}]


@pytest.mark.parametrize("spec", STATEFUL + [{"kind": "mixture", "components": STATEFUL}],
                         ids=lambda s: s.get("name", s["kind"]))
def test_restart_acts_as_a_fresh_build(tmp_path, spec):
    """``restart(seed)`` (what an episode-seeded recipe calls before every episode) forgets the generators' state and
    what carries across episodes: the agent then plays as `make_behaviour` builds it with that seed."""
    rng = np.random.default_rng(1)        # traces that agree little: Hugging Face's counter falls from 20 to 1
    files = write_replay_files(tmp_path, [synthetic_trace(i, 30, (0.1, 0.2, 0.4), rng) for i in range(5)])
    env = make_env(files, spec_lengths=tuple(range(8)))    # the longest the profile covers
    used = make_behaviour(spec, env, seed=0)
    for i in range(5):
        play(env, used, i, deterministic=False)
    for s in (7, 8):
        used.restart(s)
        fresh = make_behaviour(spec, env, seed=s)
        assert [play(env, used, i, False)[1] for i in range(4)] == [play(env, fresh, i, False)[1] for i in range(4)]


def test_specs_names_save_load(replay_files, tmp_path):
    env = make_env(replay_files)
    for bad, match in [({"kind": "magic"}, "Unknown behaviour kind"), ({}, "kind"),
                       ({"kind": "random", "epsilon": 0.1}, "does not take"),
                       ({"kind": "oracle", "epsilon": 2}, "epsilon"),
                       ({"kind": "mixture", "components": []}, "non-empty"),
                       ({"kind": "mixture", "components": [{"kind": "mixture", "components": []}]}, "nested"),
                       ({"kind": "mixture", "components": [{"kind": "ar", "weight": -1}]}, "weight"),
                       ({"kind": "mixture", "components": [{"kind": "ar", "weight": 0}]}, "positive sum")]:
        with pytest.raises(ValueError, match=match):
            check_behaviour_spec(bad)
    assert check_behaviour_spec({"kind": "ar"}) == {"kind": "autoregressive"}
    names = [behaviour_name(s) for s in ({"kind": "random"}, {"kind": "ar"}, {"kind": "static", "exit_layer": 24,
             "k": 3}, {"kind": "oracle"}, {"kind": "oracle", "epsilon": 0.2}, {"kind": "oracle", "epsilon": 0.125},
             {"kind": "mixture", "components": [{"kind": "ar"}]})]
    assert names == ["random", "ar", "static-L24-k3", "oracle", "oracle-eps20", "oracle-eps12_5", "mixture"]
    spec = {"kind": "mixture", "components": [{"kind": "static", "exit_layer": 4, "k": 2, "weight": 1.0},
                                               {"kind": "oracle", "epsilon": 0.1, "weight": 3.0}]}
    agent = make_behaviour(spec, env, seed=0)
    loaded = load(agent.save(tmp_path / "mix"), env)
    assert loaded.config() == agent.config() == check_behaviour_spec(
        {"kind": "mixture", "components": [dict(spec["components"][0], weight=0.25),
                                           dict(spec["components"][1], weight=0.75)]})
    assert repr(StaticAgent(env, 4, 2)) == "StaticAgent(exit_layer=4, k=2)"
