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


def test_default_heads_with_draft_vocab_equal_plain_greedy(smollm2, smollm2_prompts):
    """The shipped exit heads (eagle, draft vocabulary) change only the drafts: output equals model.generate, and
    the drafts are accepted more often than plain early exits at the same settings; a step's first draft, which reads
    the verified feature, is accepted more often than the same heads' map without it (at L1, k = 1)."""
    from lede_env.defaults import resolve_exit_heads
    from lede_env.engine.heads import identity_heads

    model, tok = smollm2
    heads = resolve_exit_heads("default", "smollm2-135m", model)
    assert heads.label == "eagle+vocab" and heads.uses_context
    dec = SelfSpeculativeDecoder(model, exit_heads=heads, eos_token_id=tok.eos_token_id)
    plain_exits = SelfSpeculativeDecoder(model, exit_heads=identity_heads(), eos_token_id=tok.eos_token_id)
    rng = random.Random(1)
    accepted = {"kl": 0, "identity": 0}
    for prompt in smollm2_prompts[:2]:
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)[0, len(prompt):].tolist()
        actions = [(rng.choice(heads.layers), rng.randint(0, 6)) for _ in range(64)]
        spec, results = dec.generate(prompt, 40, actions=actions)
        assert spec == ref
        for name, d in (("kl", dec), ("identity", plain_exits)):
            out, res = d.generate(prompt, 40, exit_layer=16, k=3)
            assert out == ref
            accepted[name] += sum(r.accepted for r in res)
    assert accepted["kl"] > accepted["identity"], accepted
    blind = SelfSpeculativeDecoder(model, exit_heads=heads, eos_token_id=tok.eos_token_id)
    blind.uses_context = False           # the later drafts' (kl) map for the first draft too
    first = {"eagle": 0, "kl": 0}
    for prompt in smollm2_prompts:
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=48, do_sample=False)[0, len(prompt):].tolist()
        for name, d in (("eagle", dec), ("kl", blind)):
            out, res = d.generate(prompt, 48, exit_layer=1, k=1)
            assert out == ref
            first[name] += sum(r.accepted for r in res)
    assert first["eagle"] > 1.2 * first["kl"], first
