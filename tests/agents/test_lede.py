"""The LEDE agent (agents.lede, agents.q_network, agents.train_lede): the factored head's two-stage choice, offline
training end to end from a Minari dataset, the saved agent's round trip, and the shipped default agent."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import agents
from agents.base import AgentFileError
from agents.lede import LEDEAgent
from agents.shipped import shipped_folder
from agents.q_network import QNetwork
from agents.train_lede import Args, heldout_prompts, td_target, train
from agents.training import evaluate_agent
from lede_env.datasets import Recipe, collect
from lede_env.oracle import best_static
from tests.agents.synthetic import EXITS, SPEC, make_env, synthetic_trace, write_replay_files

J, K = len(EXITS), len(SPEC)


@pytest.mark.parametrize("head", ["factored", "flat"])
def test_two_stage_choice_is_the_flat_argmax(head):
    torch.manual_seed(0)
    net = QNetwork(7, J, K, hidden=(16,), head=head)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 3)     # spread the values: no ties
        obs = torch.randn(500, 7)
        q = net(obs)
        j, k = net.two_stage(obs)
        # Q(s, L) is the best length's value at L, so argmax_L then argmax_k is the argmax over J x K
        assert torch.allclose(net.layer_values(obs), q.view(-1, J, K).max(dim=-1).values, atol=1e-5)
        assert torch.equal(j * K + k, q.argmax(dim=1))
        assert len(set((j * K + k).tolist())) > 3     # the check is not passing on one constant action
        # the agent's numpy path (what predict runs) makes the same choices
        jn, kn = net.numpy_two_stage()(obs.numpy())
        assert np.array_equal(jn, j.numpy()) and np.array_equal(kn, k.numpy())


def test_predict_follows_the_weights_as_they_train():

    torch.manual_seed(0)
    net = QNetwork(4, J, K, hidden=(8,))
    agent = LEDEAgent.__new__(LEDEAgent)
    agent.network, agent.nvec = net, (J, K)
    obs = np.random.default_rng(0).random((30, 4)).astype(np.float32)
    before = agent.predict(obs)[0]
    with torch.no_grad():
        net.layer_head.bias.add_(torch.arange(J, dtype=torch.float32) * 100)   # in place, as an optimiser steps
    after = agent.predict(obs)[0]
    assert not np.array_equal(before, after) and (after[:, 0] == J - 1).all()


def test_td_target_values_the_online_choice_with_the_target_network():
    torch.manual_seed(1)
    online, target = QNetwork(5, J, K, (8,)), QNetwork(5, J, K, (8,))
    s2, r, nd = torch.randn(64, 5), torch.randn(64), (torch.rand(64) > 0.3).float()
    with torch.no_grad():
        y = td_target(online, target, r, s2, nd, 0.9)
        a = online(s2).argmax(dim=1)
        expected = r + 0.9 * nd * target(s2)[torch.arange(64), a]
        assert torch.allclose(y, expected)
        # not the target's own max (plain DQN), which differs on these random networks
        assert not torch.allclose(y, r + 0.9 * nd * target(s2).max(dim=1).values)


def test_the_best_held_out_checkpoint_is_the_saved_agent(world, tmp_path, monkeypatch):
    import agents.training

    scores = iter([1.0, 1.5, 1.2])
    monkeypatch.setattr(agents.training, "evaluate_agent",
                        lambda agent, env, prompts: {"speedup": next(scores), "mean_return": 0.0, "episodes": 2})
    folder = train(Args(dataset=world["dataset"], out=str(tmp_path / "best"), hidden=(8,), updates=30, eval_every=10,
                        batch_size=16, progress=False))
    env = make_env(world["files"])
    chosen = agents.load(folder, env)
    assert chosen.trained["updates"] == 20 and chosen.trained["heldout_speedup"] == 1.5
    at20 = agents.load(tmp_path / "best.checkpoints" / "update-20", env)
    at30 = agents.load(tmp_path / "best.checkpoints" / "update-30", env)
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a.network.state_dict().values(),  # noqa: E731
                                                              b.network.state_dict().values()))
    assert same(chosen, at20) and not same(chosen, at30)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Traces where only the deepest exit agrees (so drafting long there pays and drafting elsewhere does not),
    a random-behaviour dataset over prompts 0-5, prompts 6-7 held out."""
    root = tmp_path_factory.mktemp("lede")
    mp = pytest.MonkeyPatch()
    mp.setenv("MINARI_DATASETS_PATH", str(root / "minari"))
    rng = np.random.default_rng(3)
    files = write_replay_files(root / "traces", [synthetic_trace(i, 40, (0.0, 0.0, 0.97), rng) for i in range(8)])
    env_kw = {"backend": "replay", "traces": files["traces"], "profile": files["profile"], "spec_lengths": list(SPEC),
              "prompt_indices": list(range(6))}
    recipe = Recipe(env=env_kw, behaviour={"kind": "random"}, episodes=40, seed=0, author="tests",
                    description="random actions", name="random")
    dataset = collect(recipe, lambda env: agents.RandomAgent(env, seed=1), name="random", progress=False)
    yield {"files": files, "dataset": dataset.id, "root": root}
    mp.undo()


@pytest.mark.parametrize("algo,head", [("cql", "factored"), ("dqn", "flat")])
def test_training_end_to_end(world, algo, head, tmp_path):
    out = tmp_path / f"lede-{algo}"
    folder = train(Args(dataset=world["dataset"], out=str(out), algo=algo, head=head, hidden=(32, 32), updates=300,
                        eval_every=100, batch_size=64, lr=3e-3, progress=False))
    log = json.loads((folder / "training.json").read_text())
    assert [e["updates"] for e in log["evaluations"]] == [100, 200, 300]
    assert sorted(p.name for p in (tmp_path / f"lede-{algo}.checkpoints").iterdir()) == \
        ["update-100", "update-200", "update-300"]
    env = make_env(world["files"])
    agent = agents.load(folder, env)
    assert isinstance(agent, LEDEAgent) and agent.head == head and agent.trained["heldout_prompts"] == [6, 7]
    assert log["chosen"]["speedup"] == max(e["speedup"] for e in log["evaluations"])
    # it learned the one exit that pays: drafting at the deepest exit, near the best static setting in hindsight
    result = evaluate_agent(agent, env, [6, 7])
    assert result["speedup"] == pytest.approx(agent.trained["heldout_speedup"], abs=1e-4)
    held = [world["files"]["set"].traces[i] for i in (6, 7)]
    _, _, static = best_static(held, env.unwrapped.cost_table, SPEC)
    assert static > 1.2 and result["speedup"] > 0.95 * static
    ep_actions = np.concatenate([agents.load(folder, env).predict(
        np.asarray(env.reset(options={"prompt_index": i})[0]))[0][None] for i in range(8)])
    assert (ep_actions[:, 0] == J - 1).all() and (ep_actions[:, 1] > 0).all()


def test_saved_agent_round_trip_and_refusals(world, tmp_path):
    env = make_env(world["files"])
    agent = LEDEAgent(env, hidden=(8,), head="factored")
    obs = np.random.default_rng(0).random((50, env.observation_space.shape[0])).astype(np.float32)
    folder = agent.save(tmp_path / "a")
    loaded = agents.load(folder, env)
    assert np.array_equal(loaded.predict(obs)[0], agent.predict(obs)[0])
    assert np.array_equal(loaded.predict(obs[0])[0], agent.predict(obs)[0][0])
    from stable_baselines3.common.evaluation import evaluate_policy

    mean, _ = evaluate_policy(loaded, env, n_eval_episodes=2, warn=False)
    assert np.isfinite(mean)
    with pytest.raises(AgentFileError, match="exit_layers"):
        agents.load(folder, make_env(world["files"], exit_layers=(4, 6)))
    stops = make_env(world["files"], stop_rules="default")
    act = LEDEAgent(stops, hidden=(8,)).predict(obs)[0]
    assert act.shape == (50, 3) and all(stops.action_space.contains(a) for a in act)
    (folder / "q_network.pt").unlink()
    with pytest.raises(FileNotFoundError, match="q_network.pt"):
        agents.load(folder, env)


def test_training_refuses_bad_arguments(world, tmp_path):
    with pytest.raises(ValueError, match="algo"):
        Args(dataset="x", algo="ppo")
    with pytest.raises(ValueError, match="head"):
        Args(dataset="x", head="tree")
    with pytest.raises(FileNotFoundError, match="lede collect"):
        train(Args(dataset="lede/none-v0", out=str(tmp_path / "n"), progress=False))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("x")
    with pytest.raises(FileExistsError, match="exists"):
        train(Args(dataset=world["dataset"], out=str(tmp_path / "taken"), progress=False))


def test_heldout_prompts_are_the_ones_resets_never_draw(world):
    env = make_env(world["files"], prompt_indices=[0, 2, 5])
    assert heldout_prompts(env) == [1, 3, 4, 6, 7]
    drawn = {env.reset(seed=s)[1]["prompt_index"] for s in range(60)}
    assert drawn == {0, 2, 5}
    with pytest.raises(ValueError, match="out of range"):
        make_env(world["files"], prompt_indices=[0, 8])


def test_shipped_default_agent_loads_and_plays():
    import gymnasium as gym

    from lede_env.defaults import shipped_traces

    env = gym.make("LEDE-v0", backend="replay", traces=str(shipped_traces("mixed:test")))
    agent = agents.load("lede-default", env)
    assert isinstance(agent, LEDEAgent) and agent.trained["dataset"].startswith("lede/smollm2-135m-mixed-train/")
    assert (shipped_folder("lede-default") / "config.json").is_file()
    result = evaluate_agent(agent, env, [0, 1])
    assert result["speedup"] > 1.0


def test_stop_rule_dataset_trains_an_agent_that_stops_drafts(world, tmp_path):
    """A dataset recorded with stop rules stores (exit, k, rule) triples, loads them flat as FlattenAction encodes
    them, refuses an environment without the rules, and trains a LEDE agent that acts in the three-part space."""
    from lede_env.datasets import DatasetMismatchError, load_offline_arrays
    from lede_env.wrappers import FlattenAction

    env_kw = {"backend": "replay", "traces": world["files"]["traces"], "profile": world["files"]["profile"],
              "spec_lengths": list(SPEC), "prompt_indices": list(range(6)), "stop_rules": "default"}
    recipe = Recipe(env=env_kw, behaviour={"kind": "mixture", "components": [
        {"kind": "random", "weight": 1.0}, {"kind": "zoo", "name": "specdec++", "weight": 1.0}]},
        episodes=20, seed=0, author="tests", description="with stop rules", name="stops")
    from agents.behaviour import collect_recipe

    dataset = collect_recipe(recipe, progress=False)
    env = make_env(world["files"], stop_rules="default")
    data = load_offline_arrays(dataset.id, env)
    assert data.multi_actions.shape[1] == 3 and data.nvec == tuple(env.action_space.nvec)
    flat = FlattenAction(env)
    assert all(flat.flatten(m) == a for m, a in zip(data.multi_actions[:200], data.actions[:200]))
    assert len(set(data.multi_actions[:, 2].tolist())) > 1      # the rules vary: specdec++ and random both act
    with pytest.raises(DatasetMismatchError, match="stop_rules"):
        load_offline_arrays(dataset.id, make_env(world["files"]))
    folder = train(Args(dataset=dataset.id, out=str(tmp_path / "stops"), hidden=(16,), updates=50, eval_every=0,
                        batch_size=32, progress=False))
    agent = agents.load(folder, env)
    result = evaluate_agent(agent, env, [6, 7])
    assert np.isfinite(result["speedup"])
    obs = env.reset(options={"prompt_index": 6})[0]
    assert env.action_space.contains(agent.predict(obs)[0])


def test_zoo_behaviour_is_fitted_on_the_training_prompts_only(world):
    from agents.baselines import check_behaviour_spec, make_behaviour

    with pytest.raises(ValueError, match="heuristic of the zoo"):
        check_behaviour_spec({"kind": "zoo", "name": "oracle"})
    with pytest.raises(ValueError, match="does not take"):
        check_behaviour_spec({"kind": "zoo", "name": "del", "exit_layer": 2})
    env = make_env(world["files"], prompt_indices=[0, 1, 2])
    agent = make_behaviour({"kind": "zoo", "name": "best-static"}, env, seed=0)
    _, _, expected = best_static(world["files"]["set"].traces[:3], env.unwrapped.cost_table, SPEC)
    assert agent.train_speedup == pytest.approx(expected)


def test_cql_keeps_to_the_actions_the_data_took(world, tmp_path):
    """On data of one static action, discrete CQL's penalty (logsumexp Q - Q(s, a)) makes that action the argmax
    everywhere; plain double DQN leaves the values of the untried actions where initialisation put them."""
    env_kw = {"backend": "replay", "traces": world["files"]["traces"], "profile": world["files"]["profile"],
              "spec_lengths": list(SPEC), "prompt_indices": list(range(6))}
    recipe = Recipe(env=env_kw, behaviour={"kind": "static", "exit_layer": 4, "k": 1}, episodes=12, seed=0,
                    author="tests", description="one static action", name="static-L4-k1")
    dataset = collect(recipe, lambda env: agents.StaticAgent(env, 4, 1), name="static-L4-k1", progress=False)
    env = make_env(world["files"])
    obs = np.stack([env.reset(options={"prompt_index": i})[0] for i in range(8)] +
                   [env.step(np.array([1, 1]))[0] for _ in range(8)])
    picked = {}
    for algo in ("cql", "dqn"):
        folder = train(Args(dataset=dataset.id, out=str(tmp_path / algo), algo=algo, hidden=(32,), updates=300,
                            eval_every=0, batch_size=64, lr=3e-3, cql_alpha=2.0, progress=False))
        picked[algo] = agents.load(folder, env).predict(obs)[0]
    assert (picked["cql"] == [1, 1]).all()
    assert not (picked["dqn"] == [1, 1]).all()


def test_stop_rule_actions_decode_as_flatten_action_encodes_them(world):
    """The second stage's index ``kidx * S + s`` comes back as ``[j, kidx, s]``: the flat index FlattenAction gives
    the triple is the one the network ranks first."""
    from lede_env.wrappers import FlattenAction

    env = make_env(world["files"], stop_rules="default")
    Jn, Kn, S = (int(n) for n in env.action_space.nvec)
    agent = LEDEAgent(env, hidden=(4,))
    j, kidx, s = 1, 3, S - 2
    with torch.no_grad():
        for p in agent.network.parameters():
            p.zero_()
        agent.network.layer_head.bias[j] = 1.0
        agent.network.length_head.bias[j * Kn * S + kidx * S + s] = 1.0
    obs = env.reset(options={"prompt_index": 0})[0]
    action = agent.predict(obs)[0]
    assert action.tolist() == [j, kidx, s]
    assert FlattenAction(env).flatten(action) == (j * Kn + kidx) * S + s
    # the double-DQN target reads the same flat index of the target network
    target = LEDEAgent(env, hidden=(4,)).network
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
        target.layer_head.bias[j] = 5.0
        target.length_head.bias[j * Kn * S + kidx * S + s] = 5.0
        y = td_target(agent.network, target, torch.zeros(1), torch.as_tensor(obs[None]), torch.ones(1), 0.5)
    assert float(y) == pytest.approx(0.5 * 5.0)


def test_an_earlier_runs_checkpoints_are_not_mixed_in(world, tmp_path):
    (tmp_path / "a.checkpoints" / "update-999").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="checkpoints of an earlier run"):
        train(Args(dataset=world["dataset"], out=str(tmp_path / "a"), hidden=(8,), updates=20, eval_every=10,
                   batch_size=16, progress=False))
    train(Args(dataset=world["dataset"], out=str(tmp_path / "a"), hidden=(8,), updates=20, eval_every=10,
               batch_size=16, progress=False, overwrite=True))
    assert sorted(p.name for p in (tmp_path / "a.checkpoints").iterdir()) == ["update-10", "update-20"]


def test_shipped_names_in_load_and_evaluate(tmp_path):
    import gymnasium as gym

    from agents.evaluation import resolve_agents
    from lede_env.defaults import shipped_traces

    env = gym.make("LEDE-v0", backend="replay", traces=str(shipped_traces("mixed:test")))
    assert agents.load("lede", env).arguments() == agents.load("lede-default", env).arguments()
    own = agents.load("lede", env).save(tmp_path / "lede")
    specs = resolve_agents(f"lede,{own}")
    assert [s.label for s in specs] == ["lede", str(own)] and specs[0].folder == str(shipped_folder("lede"))


def test_dataset_env_finds_the_recipes_traces_and_checks_them(world, monkeypatch):
    import minari

    from agents.train_lede import make_dataset_env

    meta = dict(minari.load_dataset(world["dataset"]).storage.metadata)
    assert make_dataset_env(meta).unwrapped.config.traces == world["files"]["traces"]
    with pytest.raises(ValueError, match="sha256 differs"):
        make_dataset_env(dict(meta, traces_sha256="0" * 64))
    with pytest.raises(FileNotFoundError, match="not here"):
        make_dataset_env(dict(meta, env_kwargs=dict(meta["env_kwargs"], traces="nowhere/t.npz")))
    shipped = dict(meta, traces_sha256=None, env_kwargs={"backend": "replay", "traces":
                   "lede_env/data/traces/smollm2-135m_eagle+vocab_mixed-train.npz"})
    monkeypatch.chdir(world["root"])     # elsewhere than the repository: the recipe's relative path still resolves
    assert make_dataset_env(shipped).unwrapped.backend.num_prompts == 30
