"""Loading the model: the embedded SmolLM2 (GGUF), any local Hugging Face Llama directory, or a tiny
random Llama built in code for fast tests. Nothing is ever fetched from a hub."""

from __future__ import annotations

import os
from pathlib import Path

# Never reach for a hub: set before transformers is imported anywhere below.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402

from lede_env.paths import (DEFAULT_MODEL, SMOLLM2_GGUF, SMOLLM2_PACKAGE, TINY_MODEL,  # noqa: E402,F401
                            check_model_name, smollm2_gguf_path)


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"Unknown dtype {dtype!r}; choose one of {sorted(table)}.")
    return table[dtype]


def tiny_random_llama(seed: int = 0, num_layers: int = 6, vocab_size: int = 64, hidden_size: int = 64,
                      max_context: int = 256):
    """A tiny randomly initialised `LlamaForCausalLM` plus a stand-in tokenizer, for fast tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    # initializer_range 0.3 and untied embeddings give varied greedy text and early exits whose agreement
    # with the full model grows with depth (0.07 at layer 1 to 0.56 at layer 5), like a real model.
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=max_context, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        tie_word_embeddings=False, initializer_range=0.3,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model, TinyTokenizer(vocab_size)


class TinyTokenizer:
    """Character-level stand-in tokenizer for the tiny random model (ids 0..2 are pad/bos/eos)."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2
        self.eos_token = "</s>"
        self.chat_template = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [3 + (ord(ch) % (self.vocab_size - 3)) for ch in text]
        return ([self.bos_token_id] if add_special_tokens else []) + ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i < 3:
                if not skip_special_tokens:
                    out.append(["<pad>", "<s>", "</s>"][i])
                continue
            out.append(chr(ord("a") + (i - 3) % 26) if (i - 3) < 26 else chr(ord("A") + (i - 3) % 26))
        return "".join(out)

    def __call__(self, text: str, return_tensors: str | None = None):
        ids = self.encode(text)
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids}


def load_tokenizer(name_or_path: str = DEFAULT_MODEL):
    """The tokenizer alone (for decoding replayed episodes without loading the model)."""
    if name_or_path == TINY_MODEL:
        return TinyTokenizer(64)
    from transformers import AutoTokenizer

    if name_or_path == DEFAULT_MODEL:
        gguf = smollm2_gguf_path()
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)


def check_device(device: str) -> str:
    """``device`` if torch can place a model there; else a ``ValueError`` that says why and what to do."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"Unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"Device {device!r} asked for, but this torch ({torch.__version__}) sees no CUDA GPU: "
                             "install a CUDA build of torch on a machine with an NVIDIA GPU, or use device 'cpu'.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"Device {device!r} asked for, but only {torch.cuda.device_count()} CUDA devices exist.")
    elif dev.type != "cpu":
        raise ValueError(f"Device {device!r} is not supported: use 'cpu' or 'cuda[:N]'.")
    return str(device)


def load_model(name_or_path: str = DEFAULT_MODEL, dtype: str | torch.dtype = "float32", device: str = "cpu"):
    """Load a Llama model and its tokenizer, offline.

    `name_or_path`: ``"smollm2-135m"`` (the embedded GGUF, default), ``"tiny-random"`` (built in code), or a
    local Hugging Face directory of a Llama checkpoint (Llama-2/3, LayerSkip). Returns ``(model, tokenizer)``
    with the model in eval mode on ``device``.
    """
    name_or_path = check_model_name(name_or_path)
    torch_dtype = _resolve_dtype(dtype)
    check_device(device)
    if name_or_path == TINY_MODEL:
        model, tok = tiny_random_llama()
    else:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        if name_or_path == DEFAULT_MODEL:
            gguf = smollm2_gguf_path()
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch_dtype)
        else:
            path = Path(name_or_path)
            config = AutoConfig.from_pretrained(path, local_files_only=True)
            if config.model_type != "llama":
                raise ValueError(
                    f"{path} holds a {config.model_type!r} model; LEDE gym drives Llama decoder layers "
                    "(LlamaForCausalLM). Pass a Llama checkpoint (Llama-2/3, SmolLM2, LayerSkip Llama)."
                )
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
    if type(model).__name__ != "LlamaForCausalLM":
        raise ValueError(f"Expected a LlamaForCausalLM, got {type(model).__name__}.")
    model = model.to(device=device, dtype=torch_dtype).eval()
    model.requires_grad_(False)
    return model, tok
