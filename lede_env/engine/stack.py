"""Execution paths of the decoder-layer stack. The decoder calls only this small interface, so a faster
path (static cache, fused weights, compiled layers) plugs in without touching the decoding step:

    reset()                            start a new sequence (empty cache)
    run(h, start, stop, probes)        layers start..stop-1 on h [1, q, hidden], appended after their cache;
                                       returns the output and {l: output of layer l-1} for l in probes
    crop(length)                       drop cache entries beyond ``length`` in every layer
    lengths()                          cache length per layer
"""

from __future__ import annotations

from typing import Collection

import torch
from transformers import DynamicCache


class HFLayerStack:
    """The reference path ("eager"): transformers' own Llama decoder layers over a `DynamicCache`."""

    name = "eager"

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


STACKS = {"eager": HFLayerStack}


def make_stack(model, path: str = "eager"):
    """The layer stack for execution path ``path``."""
    if path not in STACKS:
        raise ValueError(f"Unknown execution path {path!r}; available: {sorted(STACKS)}.")
    return STACKS[path](model)
