"""LEDE-v0 on the real embedded SmolLM2: live == replay on real prompts (slow: real model, still in CI)."""

import gymnasium as gym
import numpy as np
import pytest

import lede_env  # noqa: F401  (registers the ids)
from tests.test_env import run_episode

pytestmark = pytest.mark.slow

EXITS = (8, 16, 24, 28)
MAX_NEW_TOKENS = 24
PROMPTS = "mixed:test"
N_PROMPTS = 2
SEQUENCES = 3       # random action sequences per prompt


def episode(env, actions, prompt_index):
    """Observations (as an array), infos and rewards of one episode that takes ``actions`` until it ends."""
    observations, infos, rewards, _, _ = run_episode(env, actions, prompt_index)
    return np.array(observations), infos, rewards


def test_live_and_replay_agree_on_real_prompts(smollm2, tmp_path, monkeypatch):
    """Traces recorded for the first two mixed:test prompts (chat template, the default exit heads) replay the accepted
    counts, tokens and observations of the live backend for the same seeded random actions."""
    import lede_env.models
    from lede_env.record import record_traces_for

    # Both the recording and the live environment use the session's model instead of loading it again.
    monkeypatch.setattr(lede_env.models, "load_model", lambda name, dtype="float32", device="cpu": smollm2)
    ts, traces = record_traces_for("smollm2-135m", PROMPTS, str(tmp_path / "traces.npz"), limit=N_PROMPTS,
                                   max_new_tokens=MAX_NEW_TOKENS, heads="default", exit_layers=EXITS,
                                   chat_template=True, progress=False)
    assert len(ts) == N_PROMPTS
    live = gym.make("LEDE-v0", model="smollm2-135m", prompts=PROMPTS, max_new_tokens=MAX_NEW_TOKENS,
                    chat_template=True, exit_layers=EXITS, exit_heads="default")
    replay = gym.make("LEDE-v0", backend="replay", traces=str(traces))
    assert live.observation_space == replay.observation_space and live.action_space == replay.action_space
    rng = np.random.default_rng(0)
    J, K = live.action_space.nvec
    drafted = 0
    for i in range(N_PROMPTS):
        for _ in range(SEQUENCES):
            actions = [np.array([rng.integers(J), rng.integers(K)]) for _ in range(4 * MAX_NEW_TOKENS)]
            o1, i1, r1 = episode(live, actions, i)
            o2, i2, r2 = episode(replay, actions, i)
            assert i1[0]["prompt_ids"] == i2[0]["prompt_ids"]
            assert [x["accepted"] for x in i1] == [x["accepted"] for x in i2]
            assert [x["drafted"] for x in i1] == [x["drafted"] for x in i2]
            assert i1[-1]["generated_ids"] == i2[-1]["generated_ids"] == ts.traces[i].tokens.tolist()
            np.testing.assert_allclose(o1, o2, atol=1e-4)
            np.testing.assert_allclose(r1, r2, rtol=1e-9)
            drafted += sum(x["drafted"] for x in i1)
    assert drafted > 0
    # Adaptive drafting inside a step (stop rules): live stays exact, replay agrees on accepted counts and tokens, and
    # on drafted counts wherever the rule stopped at or before the first rejected draft.
    live = gym.make("LEDE-v0", model="smollm2-135m", prompts=PROMPTS, max_new_tokens=MAX_NEW_TOKENS,
                    chat_template=True, exit_layers=EXITS, exit_heads="default", stop_rules="default")
    replay = gym.make("LEDE-v0", backend="replay", traces=str(traces), stop_rules="default")
    J, K, S = live.action_space.nvec
    early = 0
    for i in range(N_PROMPTS):
        actions = [np.array([rng.integers(J), rng.integers(1, K), rng.integers(S)]) for _ in range(4 * MAX_NEW_TOKENS)]
        o1, i1, _ = episode(live, actions, i)
        o2, i2, _ = episode(replay, actions, i)
        assert i1[-1]["generated_ids"] == i2[-1]["generated_ids"] == ts.traces[i].tokens.tolist()
        np.testing.assert_allclose(o1, o2, atol=1e-4)
        assert [(x["accepted"], x["tokens"]) for x in i1] == [(x["accepted"], x["tokens"]) for x in i2]
        for x, y in zip(i1[1:], i2[1:]):
            last_step = len(x["generated_ids"]) == len(ts.traces[i].tokens)   # drafts may run past the final token
            if (x["drafted"] <= x["accepted"] + 1 or y["drafted"] <= y["accepted"] + 1) and not last_step:
                assert x["drafted"] == y["drafted"]
            early += x["stop_rule"] != "none" and x["drafted"] < x["k"]
    assert early > 0
