"""Execution paths of the decoder-layer stack. The decoder calls only this small interface, so a faster
path (static cache, fused weights, compiled layers) plugs in without touching the decoding step:

    reset()                            start a new sequence (empty cache)
    run(h, start, stop, probes)        layers start..stop-1 on h [1, q, hidden], appended after their cache;
                                       returns the output and {l: output of layer l-1} for l in probes
    crop(length)                       drop cache entries beyond ``length`` in every layer
    lengths()                          cache length per layer
    logits(h)                          final norm + LM head on h [..., hidden], in the model's dtype
    set_draft_vocab(ids)               prepare a small LM head over the token ids ``ids`` (drafts only)
    draft_logits(h)                    final norm + that small head: logits over ``ids`` [..., len(ids)]
    build                              which kernels run: "eager", "native-avx512", "native-portable",
                                       "torch-<kernel>" (latency profiles record it)
    batch_invariant                    True when ``run`` over q positions gives each position the bits of q
                                       one-position runs (by construction); the decoder verifies one position
                                       at a time on a stack where it is False, so decoding is exact on every path

Paths (`STACKS`, `make_stack(model, path)`):
    "eager"      transformers' own decoder layers over a `DynamicCache` (the reference)
    "fast"       `FastLayerStack` in the model's dtype: static KV cache, fused weights, the glue between the
                 matrix products and the products themselves in C++ (`lede_env.engine.fast_stack`, `fast_ops`;
                 AVX-512 kernels where the CPU has them, portable loops elsewhere): batch-invariant by
                 construction on any CPU, equal to "eager" up to fp32 rounding (on SmolLM2 its plain greedy output
                 equals `model.generate`'s). Where the C++ operations cannot be built (no compiler): torch
                 operations and MKL, one position bit for bit as "eager" computes it, not batch-invariant
    "fast-bf16"  weights of the layers and the LM head in bfloat16 (half the memory traffic): exact against plain
                 greedy decoding on the same path, not against fp32. On the native products the weights are
                 widened exactly and everything else stays fp32 (products, sums, hidden states): fp32 arithmetic
                 on bf16-rounded weights. Without the C++ operations oneDNN computes in bf16. Hidden states are
                 handed back in the model's dtype (fp32 for a bf16 model on the native products, so that no
                 rounding falls between a draft's layers and the rest). The fastest path
    "auto"       the fastest path validated for the model's device and dtype (`auto_path`)
"""

from __future__ import annotations

from typing import Collection

import torch
from transformers import DynamicCache

from lede_env.engine.path_names import PATHS, resolve_path


class HFLayerStack:
    """The reference path ("eager"): transformers' own Llama decoder layers over a `DynamicCache`."""

    name = "eager"
    build = "eager"
    batch_invariant = False   # transformers' kernels for one row and for several sum in other orders

    def __init__(self, model):
        self.model = model
        self.layers = model.model.layers
        self.device = next(model.parameters()).device
        self.reset()

    def reset(self) -> None:
        self.cache = DynamicCache(config=self.model.config)

    def lengths(self) -> list[int]:
        n = len(self.cache.layers)
        return [self.cache.layers[i].get_seq_length() if i < n else 0 for i in range(len(self.layers))]

    def run(self, h: torch.Tensor, start: int, stop: int, probes: Collection[int] = ()
            ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        q = h.shape[1]
        past = self.cache.layers[start].get_seq_length() if start < len(self.cache.layers) else 0
        positions = torch.arange(past, past + q, device=self.device)[None]
        pos_emb = self.model.model.rotary_emb(h, positions)
        mask = None
        if q > 1 and past > 0:   # SDPA's is_causal aligns top-left: give the mask explicitly
            mask = torch.ones(q, past + q, dtype=torch.bool, device=self.device).tril(past)[None, None]
        out: dict[int, torch.Tensor] = {}
        for i in range(start, stop):
            h = self.layers[i](h, attention_mask=mask, position_ids=positions, cache=self.cache,
                               use_cache=True, position_embeddings=pos_emb)
            if i + 1 in probes:
                out[i + 1] = h
        return h, out

    def crop(self, length: int) -> None:
        for layer in self.cache.layers:
            extra = layer.get_seq_length() - length
            if extra > 0:
                layer.crop(-extra)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(self.model.model.norm(h))

    def set_draft_vocab(self, ids: torch.Tensor) -> None:
        self._draft_weight = self.model.lm_head.weight[ids].detach().contiguous()

    def draft_logits(self, h: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(self.model.model.norm(h), self._draft_weight)


def _fast(name: str, **options):
    """A factory of `FastLayerStack` with ``options``, named ``name`` (imported on first use)."""
    def make(model):
        from lede_env.engine.fast_stack import FastLayerStack

        return FastLayerStack(model, name=name, **options)
    return make


STACKS = {"eager": HFLayerStack, "fast": _fast("fast"), "fast-bf16": _fast("fast-bf16", dtype=torch.bfloat16)}
assert tuple(STACKS) == PATHS


def auto_path(model) -> str:
    """The path "auto" resolves to for ``model`` (`resolve_path`)."""
    p = next(model.parameters())
    return resolve_path("auto", p.device, p.dtype)


def make_stack(model, path: str = "auto"):
    """The layer stack for execution path ``path`` ("auto": `auto_path`)."""
    p = next(model.parameters())
    return STACKS[resolve_path(path, p.device, p.dtype)](model)
