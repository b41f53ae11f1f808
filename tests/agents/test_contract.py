"""The agent contract, over every registered agent kind: action shapes, determinism, the save/load round trip,
refusal of an environment with other lists, and stable-baselines3's ``evaluate_policy`` (DESIGN.md section 4)."""

from __future__ import annotations

import numpy as np
import pytest

import agents
from agents.base import KINDS, AgentFileError
from agents.zoo import ZOO, ZooContext, build
from lede_env.rollout import rollout
from tests.agents.synthetic import make_env, synthetic_trace, write_replay_files

NEEDS_HOOKS = {"oracle"}          # its policy is per trace: without reset/observe it cannot know where it is


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    rng = np.random.default_rng(7)
    d = tmp_path_factory.mktemp("contract")
    return {"test": write_replay_files(d / "test", [synthetic_trace(i, 40, (0.3, 0.6, 0.85), rng) for i in range(3)]),
            "train": write_replay_files(d / "train", [synthetic_trace(i, 40, (0.3, 0.6, 0.85), rng)
                                                      for i in range(4)])}


def kinds() -> list[str]:
    """Every registered kind that the zoo can build (the mixture is built from components: its own test; the learned
    agents, lede and sb3, are trained: tests/agents/test_lede.py and test_sb3.py hold them to the same contract)."""
    return [k for k in sorted(KINDS) if k not in ("mixture", "static", "lede", "sb3")] + ["static"]


def make(files, kind, env):
    if kind == "static":
        return agents.StaticAgent(env, 4, 2)
    return build(kind, env, ZooContext.from_traces(env, files["train"]["traces"]))


def play(env, agent, episodes=3):
    return [rollout(env, agent, options={"prompt_index": i % 3}, info_keys=("drafted",)).actions
            for i in range(episodes)]


def test_every_zoo_name_is_registered():
    assert set(ZOO) <= set(KINDS)


@pytest.mark.parametrize("kind", kinds())
def test_contract(files, kind, tmp_path):
    env = make_env(files["test"], stop_rules="default")
    agent = make(files, kind, env)
    assert agent.kind == kind and isinstance(agent, agents.Agent)
    # shapes: actions of the environment's space, int64, in every step of an episode
    runs = play(env, agent)
    for acts in runs:
        assert acts.dtype == np.int64 and acts.shape[1:] == env.action_space.shape
        assert all(env.action_space.contains(a) for a in acts)
    # determinism: a fresh agent plays the same episodes
    if kind != "random":
        again = play(env, make(files, kind, env))
        assert all(np.array_equal(a, b) for a, b in zip(runs, again))
    # save / load round trip: the same episodes again (learned statistics start afresh, as in a fresh agent)
    folder = agent.save(tmp_path / kind)
    assert (folder / "config.json").is_file()
    loaded = agents.load(folder, env)
    assert type(loaded) is type(agent) and loaded.arguments() == agent.arguments()
    if kind != "random":
        assert all(np.array_equal(a, b) for a, b in zip(play(env, loaded), runs))
    # refusal of another environment, naming the difference
    with pytest.raises(AgentFileError, match="stop_rules"):
        agents.load(folder, make_env(files["test"]))
    with pytest.raises(AgentFileError, match="exit_layers"):
        agents.load(folder, make_env(files["test"], stop_rules="default", exit_layers=(4, 6)))
    # stable-baselines3's evaluate_policy, unchanged (predict only, batched observations of a VecEnv)
    from stable_baselines3.common.evaluation import evaluate_policy

    fresh = make(files, kind, env)
    if kind in NEEDS_HOOKS:
        with pytest.raises(RuntimeError, match="reset"):
            evaluate_policy(fresh, env, n_eval_episodes=2, warn=False)
    else:
        mean, _ = evaluate_policy(fresh, env, n_eval_episodes=2, warn=False)
        assert np.isfinite(mean)


def test_load_errors(files, tmp_path):
    env = make_env(files["test"], stop_rules="default")
    with pytest.raises(FileNotFoundError, match="config.json"):
        agents.load(tmp_path / "nothing", env)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"kind": "static"}')
    with pytest.raises(AgentFileError, match="not a saved agent"):
        agents.load(tmp_path / "bad", env)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"kind": "magic", "arguments": {}, "env": {}}')
    with pytest.raises(ValueError, match="Unknown agent kind 'magic'"):
        agents.load(tmp_path / "other", env)
