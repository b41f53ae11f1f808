"""Shared fixtures: the tiny random Llama (fast tests) and the embedded SmolLM2 (slow tests)."""

import json
import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of the tiny random Llama, fp32."""
    from lede_env.models import load_model

    torch.set_num_threads(1)
    return load_model("tiny-random")


TINY_EXITS = (1, 2, 3, 4, 5)
TINY_SPEC = tuple(range(7))
TINY_PROBES = (2, 4)
TINY_MAX_NEW_TOKENS = 40
TINY_TEXTS = ("hello world", "the quick brown fox", "speculative decoding", "abc def ghi", "lede gym", "tiny model")


@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory, tiny):
    """A prompt file, a measured latency profile and replay traces for the tiny model (built once per session):
    ``{"prompts", "profile", "traces"}`` paths and ``n`` prompts. Exits `TINY_EXITS`, probes `TINY_PROBES`,
    ``max_new_tokens`` `TINY_MAX_NEW_TOKENS`, identity heads, no chat template."""
    from lede_env.engine.decoder import SelfSpeculativeDecoder
    from lede_env.engine.measure import measure_profile
    from lede_env.record import record_traces_for

    d = tmp_path_factory.mktemp("tiny")
    prompts = d / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in TINY_TEXTS))
    model, _ = tiny
    dec = SelfSpeculativeDecoder(model, eos_token_id=[])
    prof = measure_profile(dec, "tiny-random", TINY_EXITS, max_verify=max(TINY_SPEC) + 1, repeats=3, context=16,
                           progress=False)
    profile = prof.save(d / "profile.json")
    _, traces = record_traces_for("tiny-random", str(prompts), str(d / "traces.npz"),
                                  max_new_tokens=TINY_MAX_NEW_TOKENS, heads="identity", exit_layers=TINY_EXITS,
                                  probe_layers=TINY_PROBES, chat_template=False, progress=False)
    return {"prompts": str(prompts), "profile": str(profile), "traces": str(traces), "n": len(TINY_TEXTS)}


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct, fp32."""
    from lede_env.models import load_model

    torch.set_num_threads(2)
    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_prompts(smollm2):
    """A few real chat prompts, tokenised with the chat template."""
    _, tok = smollm2
    texts = ["Explain why the sky is blue in two sentences.",
             "Write a Python function that returns the n-th Fibonacci number.",
             "List three uses of copper.",
             "A shop sells pens at 3 dollars each. How much do 7 pens cost?"]
    out = []
    for text in texts:
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return out


TINY_HEAD_TEXTS = [f"prompt number {i} says {'abcdefgh'[i % 8] * (i % 5 + 1)} then stops" for i in range(24)]
TINY_HEAD_LAYERS = (1, 2, 3, 4, 5)


@pytest.fixture(scope="session")
def tiny_selftext(tiny):
    """The tiny model's own greedy continuations of `TINY_HEAD_TEXTS` and their hidden states at
    `TINY_HEAD_LAYERS`: ``(sequences, HiddenData)`` (exit-head fitting tests)."""
    from lede_env.heads_fitting import collect_hidden_states, generate_self_text

    model, tok = tiny
    seqs = generate_self_text(model, tok, TINY_HEAD_TEXTS, max_new_tokens=24, chat_template=False, batch_size=1,
                              progress=False)
    return seqs, collect_hidden_states(model, seqs, TINY_HEAD_LAYERS, progress=False)


def readout(model, h):
    """The model's own final norm and LM head on ``h``."""
    return model.lm_head(model.model.norm(h))


def tiny_eagle_heads(model, layers=TINY_HEAD_LAYERS, seed: int = 0, scale: float = 3.0):
    """Eagle heads for the tiny model: identity later-draft maps and first-draft maps ``[I, R]`` with a random
    ``R`` large enough that the verified feature changes many first drafts."""
    from lede_env.engine.heads import ContextHead, ExitHeads

    H = model.config.hidden_size
    g = torch.Generator().manual_seed(seed)
    heads = {}
    for L in layers:
        head = ContextHead(H)
        with torch.no_grad():
            head.fused.weight[:, H:] = scale * torch.randn(H, H, generator=g) / H ** 0.5
        heads[L] = head
    return ExitHeads("eagle", heads, hidden_size=H, meta={"model": "tiny-random"})


@pytest.fixture(scope="session")
def tiny_eagle_setup(tmp_path_factory, tiny, tiny_setup):
    """`tiny_setup` with eagle heads (`tiny_eagle_heads`, saved under ``"heads"``) and traces recorded with them."""
    from lede_env.record import record_traces_for

    d = tmp_path_factory.mktemp("tiny_eagle")
    model, _ = tiny
    tiny_eagle_heads(model, TINY_EXITS).save(d / "heads")
    _, traces = record_traces_for("tiny-random", tiny_setup["prompts"], str(d / "traces.npz"),
                                  max_new_tokens=TINY_MAX_NEW_TOKENS, heads=str(d / "heads"), exit_layers=TINY_EXITS,
                                  probe_layers=TINY_PROBES, chat_template=False, progress=False)
    return dict(tiny_setup, heads=str(d / "heads"), traces=str(traces))
