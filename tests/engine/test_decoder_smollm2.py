"""Exactness of self-speculative decoding on the real embedded SmolLM2 (slow: real model, still in CI)."""

import random

import pytest
import torch

from lede_env.engine.decoder import SelfSpeculativeDecoder

pytestmark = pytest.mark.slow


def test_random_actions_equal_plain_greedy_on_real_prompts(smollm2, smollm2_prompts):
    model, tok = smollm2
    dec = SelfSpeculativeDecoder(model, eos_token_id=tok.eos_token_id, probe_layers=(8, 16, 24))
    rng = random.Random(0)
    for prompt in smollm2_prompts[:3]:
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=48, do_sample=False)[0, len(prompt):].tolist()
        plain, _ = dec.generate(prompt, 48)
        assert plain == ref
        actions = [(rng.randint(1, 29), rng.randint(0, 8)) for _ in range(64)]
        spec, results = dec.generate(prompt, 48, actions=actions)
        assert spec == ref
        assert sum(r.accepted for r in results) > 0
        static, _ = dec.generate(prompt, 48, exit_layer=24, k=4)
        assert static == ref
