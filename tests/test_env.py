"""LEDE-v0 on the tiny model: Gymnasium API, exactness, reward parts, live == replay, errors, rendering."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import lede_env  # noqa: F401  (registers the ids)
from lede_env.wrappers import FlattenAction, flatten_action, unflatten_action

from tests.conftest import TINY_EXITS as EXITS, TINY_MAX_NEW_TOKENS, TINY_PROBES, TINY_SPEC as SPEC


def make(setup, **kw):
    base = dict(model="tiny-random", prompts=setup["prompts"], profile=setup["profile"],
                max_new_tokens=TINY_MAX_NEW_TOKENS, exit_layers=EXITS, spec_lengths=SPEC, probe_layers=TINY_PROBES,
                chat_template=False, exit_heads="identity")
    base.update(kw)
    return gym.make("LEDE-v0", **base)


def replay(setup, **kw):
    return gym.make("LEDE-v0", backend="replay", traces=setup["traces"], profile=setup["profile"],
                    spec_lengths=SPEC, **kw)


def run_episode(env, actions, prompt_index):
    obs, info = env.reset(seed=0, options={"prompt_index": prompt_index})
    observations, infos, rewards = [obs], [info], []
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        observations.append(obs)
        infos.append(info)
        rewards.append(r)
        if term or trunc:
            return observations, infos, rewards, term, trunc
    raise AssertionError("episode did not end")


def test_check_env_live_and_replay(tiny_setup):
    check_env(make(tiny_setup).unwrapped, skip_render_check=True)
    check_env(replay(tiny_setup).unwrapped, skip_render_check=True)


def test_live_is_exact_and_rewards_add_up(tiny_setup, tiny):
    model, tok = tiny
    env = make(tiny_setup)
    rng = np.random.default_rng(0)
    for i in range(3):
        actions = [env.action_space.sample() for _ in range(60)]
        obs, infos, rewards, term, trunc = run_episode(env, actions, i)
        prompt = infos[0]["prompt_ids"]
        import torch
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)[0, len(prompt):].tolist()
        assert infos[-1]["generated_ids"] == ref
        assert sum(x["tokens"] for x in infos[1:]) == len(ref) - 1
        for info, r in zip(infos[1:], rewards):
            assert r == pytest.approx(info["tokens"] - info["cost"] / info["c_ar"])
        assert term and not trunc
    assert rng is not None


def test_info_keys_are_the_same_at_reset_and_step(tiny_setup):
    env = make(tiny_setup)
    _, info0 = env.reset(seed=1)
    _, _, _, _, info1 = env.step(np.array([2, 3]))
    assert set(info0) == set(info1)
    assert info1["text"] and info1["exit_layer"] == EXITS[2] and info1["k"] == 3


def test_live_and_replay_agree(tiny_setup):
    live, rep = make(tiny_setup), replay(tiny_setup)
    rng = np.random.default_rng(1)
    for i in range(tiny_setup["n"]):
        actions = [live.action_space.sample() for _ in range(60)]
        o1, i1, r1, *end1 = run_episode(live, actions, i)
        o2, i2, r2, *end2 = run_episode(rep, actions, i)
        assert [x["accepted"] for x in i1] == [x["accepted"] for x in i2]
        assert [x["drafted"] for x in i1] == [x["drafted"] for x in i2]
        assert i1[-1]["generated_ids"] == i2[-1]["generated_ids"]
        np.testing.assert_allclose(np.array(o1), np.array(o2), atol=1e-4)
        np.testing.assert_allclose(r1, r2, rtol=1e-9)
        assert end1 == end2
    assert rng is not None


def test_bad_actions_and_arguments(tiny_setup):
    env = make(tiny_setup)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside MultiDiscrete"):
        env.step(np.array([len(EXITS), 0]))
    with pytest.raises(ValueError, match="outside MultiDiscrete"):
        env.step(np.array([0, -1]))
    with pytest.raises(ValueError, match="out of range"):
        make(tiny_setup, exit_layers=(1, 6))
    with pytest.raises(ValueError, match="cost_model"):
        make(tiny_setup, cost_model="guess")
    with pytest.raises(ValueError, match="replay"):
        gym.make("LEDE-v0", backend="replay")
    with pytest.raises(ValueError, match="not recorded"):
        replay(tiny_setup, exit_layers=(1, 6))
    with pytest.raises(ValueError, match="prompt_index"):
        env.reset(options={"prompt_index": 99})


def test_render_marks_drafts(tiny_setup):
    env = make(tiny_setup, render_mode="ansi")
    env.reset(seed=0, options={"prompt_index": 0})
    for _ in range(5):
        env.step(np.array([4, 3]))
    text = env.render()
    assert isinstance(text, str) and "accepted draft" in text


def test_flatten_wrapper_round_trip(tiny_setup):
    env = FlattenAction(replay(tiny_setup))
    J, K = len(EXITS), len(SPEC)
    assert env.action_space.n == J * K
    for a in range(J * K):
        assert flatten_action(unflatten_action(a, (J, K)), (J, K)) == a
    env.reset(seed=0)
    _, _, _, _, info = env.step(2 * K + 5)
    assert info["exit_layer"] == EXITS[2] and info["k"] == 5


def test_registration_without_import(tiny_setup):
    env = gym.make("lede_env:LEDE-v0", backend="replay", traces=tiny_setup["traces"], profile=tiny_setup["profile"],
                   spec_lengths=SPEC)
    assert env.unwrapped.observation_space.shape == (8 + 2 + len(EXITS),)
    assert gym.spec("LEDE-WallClock-v0").nondeterministic
