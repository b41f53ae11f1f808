"""Shared fixtures: the tiny random Llama (fast tests) and the embedded SmolLM2 (slow tests)."""

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
