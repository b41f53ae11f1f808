"""The shipped LEDE agent live on the real embedded SmolLM2: its output is plain greedy's (slow: real model, still in
CI). `lede bench --limit 0 --no-hf --agents lede` runs the same check on every test prompt."""

import gymnasium as gym
import pytest

import agents
import lede_env  # noqa: F401  (registers the ids)
from lede_env.rollout import rollout

pytestmark = pytest.mark.slow


def test_shipped_lede_agent_live_is_plain_greedy(smollm2, monkeypatch):
    import lede_env.models

    monkeypatch.setattr(lede_env.models, "load_model", lambda name, dtype="float32", device="cpu": smollm2)
    env = gym.make("LEDE-v0", prompts="humaneval:test", max_new_tokens=40)
    agent = agents.load("lede-default", env)
    dec = env.unwrapped.backend.decoder
    spoke = 0
    for i in range(2):
        ep = rollout(env, agent, options={"prompt_index": i}, info_keys=("generated_ids", "k", "accepted"))
        plain = dec.generate(env.unwrapped.backend.prompts[i], 40, exit_layer=1, k=0)[0]
        assert ep.infos[-1]["generated_ids"] == list(plain)
        spoke += sum(info["k"] > 0 for info in ep.infos[1:])
    assert spoke > 0          # it speculated: the check covers drafts, not only autoregressive steps
