"""LEDE-v0 on the tiny model: Gymnasium API, exactness, reward parts, live == replay, errors, rendering."""

import json

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import lede_env  # noqa: F401  (registers the ids)
from lede_env.wrappers import FlattenAction, flatten_action, unflatten_action

EXITS = (1, 2, 3, 4, 5)
SPEC = tuple(range(7))


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, tiny):
    """A prompt file, a latency profile and replay traces for the tiny model."""
    from lede_env.engine.decoder import SelfSpeculativeDecoder
    from lede_env.engine.profile import measure_profile
    from lede_env.record import record_traces_for

    d = tmp_path_factory.mktemp("tiny")
    prompts = d / "prompts.jsonl"
    texts = ["hello world", "the quick brown fox", "speculative decoding", "abc def ghi", "lede gym", "tiny model"]
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    model, _ = tiny
    dec = SelfSpeculativeDecoder(model, eos_token_id=[])
    prof = measure_profile(dec, "tiny-random", EXITS, max_verify=max(SPEC) + 1, repeats=3, context=16,
                           progress=False)
    profile = prof.save(d / "profile.json")
    ts, traces = record_traces_for("tiny-random", str(prompts), str(d / "traces.npz"), max_new_tokens=40,
                                   heads="identity", exit_layers=EXITS, probe_layers=(2, 4), chat_template=False,
                                   progress=False)
    return {"prompts": str(prompts), "profile": str(profile), "traces": str(traces), "n": len(texts)}


def make(setup, **kw):
    base = dict(model="tiny-random", prompts=setup["prompts"], profile=setup["profile"], max_new_tokens=40,
                exit_layers=EXITS, spec_lengths=SPEC, probe_layers=(2, 4), chat_template=False, exit_heads="identity")
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
