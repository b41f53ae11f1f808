"""Measuring exit heads: top-1 agreement of ``lm_head(norm(head(h_L)))`` with the full model's argmax
(`agreement_on_data` on collected hidden states, `agreement` on sequences), the draft vocabulary
(`active_vocab`, `draft_vocabulary`, `vocab_coverage`) and a head's cost per token (`head_cost`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence

import torch

from lede_env.engine.heads import ExitHeads
from lede_env.heads_fitting.data import HiddenData, SelfText, collect_hidden_states


def _frozen_readout(model):
    """The model's final norm and LM head as a function of ``h`` (float32, no grad on the model)."""
    norm, lm_head = model.model.norm, model.lm_head
    return lambda h: lm_head(norm(h))

@torch.no_grad()
def active_vocab(model, data: HiddenData, heads: ExitHeads | None = None, layers: Iterable[int] = (),
                 top_k: int = 8, head_positions: int = 2048, chunk: int = 1024, seed: int = 0
                 ) -> torch.Tensor:
    """Sorted token ids in the top-``top_k`` of the full model at some position of ``data``, or of ``heads``
    at ``layers`` on ``head_positions`` sampled positions: the part of the vocabulary that matters for
    distilling on this data (measured on SmolLM2: KL on this subset gives the same held-out agreement as the
    full vocabulary, at a fraction of the cost)."""
    readout = _frozen_readout(model)
    seen = torch.zeros(model.lm_head.weight.shape[0], dtype=torch.bool)
    sample = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:head_positions]
    sources = [(None, data.h_final)] + [(L, data.h[L][sample]) for L in layers]
    for L, X in sources:
        for i in range(0, len(X), chunk):
            x = X[i:i + chunk]
            if L is not None and heads is not None:
                x = heads.apply(L, x)
            seen[readout(x).topk(top_k, -1).indices.reshape(-1)] = True
    return seen.nonzero().squeeze(-1)

@torch.no_grad()
def _agreement_one(readout, head, X: torch.Tensor, target: torch.Tensor, chunk: int = 1024,
                   vocab: torch.Tensor | None = None, context: torch.Tensor | None = None) -> float:
    """``context`` (rows like ``X``): the verified features, passed as ``head(x, context)``."""
    if len(target) == 0:
        return float("nan")
    hits = 0
    for i in range(0, len(target), chunk):
        x = X[i:i + chunk]
        if head is not None:
            x = head(x) if context is None else head(x, context[i:i + chunk])
        logits = readout(x)
        pred = logits.argmax(-1) if vocab is None else vocab[logits[:, vocab].argmax(-1)]
        hits += int((pred == target[i:i + chunk]).sum())
    return hits / len(target)

@torch.no_grad()
def agreement_on_data(model, heads: ExitHeads, data: HiddenData, layers: Iterable[int] | None = None,
                      first: bool = True) -> dict[int, float]:
    """Top-1 agreement of ``lm_head(norm(head(h_L)))`` with the full model's argmax on collected data (the
    argmax over the heads' draft vocabulary when they carry one). For heads that read the verified feature
    (``uses_context``), ``first`` (default) measures a step's first draft, which reads ``data.h_prev``; else the
    drafts after it."""
    readout = _frozen_readout(model)
    layers = sorted(data.h) if layers is None else sorted(int(L) for L in layers)
    vocab = getattr(heads, "draft_vocab", None)
    context = data.h_prev if first and getattr(heads, "uses_context", False) else None
    if context is None and first and getattr(heads, "uses_context", False):
        raise ValueError("These heads read the verified feature: the data needs h_prev (collect_hidden_states).")
    return {L: _agreement_one(readout, lambda h, c=None, L=L: heads.apply(L, h, c), data.h[L], data.target,
                              vocab=vocab, context=context)
            for L in layers}

@torch.no_grad()
def draft_vocabulary(model, data: HiddenData, top_k: int = 4) -> torch.Tensor:
    """A draft vocabulary: the token ids in the full model's top-``top_k`` at some position of ``data`` (the
    training positions; `active_vocab` without heads)."""
    return active_vocab(model, data, None, (), top_k)

def vocab_coverage(vocab: torch.Tensor, data: HiddenData) -> float:
    """Fraction of ``data``'s target tokens (the full model's greedy tokens) inside ``vocab``."""
    return float(torch.isin(data.target, vocab).float().mean()) if len(data) else float("nan")

@torch.no_grad()
def agreement(model, heads: ExitHeads, sequences: Sequence[SelfText], layers: Iterable[int],
              progress: bool = False) -> dict[int, float]:
    """Top-1 agreement of ``lm_head(norm(head(h_L)))`` with the full model's argmax on ``sequences``
    (teacher-forced, at the positions predicting each continuation's tokens)."""
    data = collect_hidden_states(model, sequences, layers, progress=progress)
    return agreement_on_data(model, heads, data, layers)

def head_cost(heads: ExitHeads, layer: int | None = None, repeats: int = 200, threads: int | None = None,
              hidden_size: int | None = None) -> float:
    """Median seconds of ``heads.apply(layer, h)`` for one token (``h`` of shape ``[1, hidden]``; ``hidden`` is
    the heads' own size, or ``hidden_size`` for heads without one, such as identity heads). Heads that read the
    verified feature are timed as a step's first draft runs them (with it), their dearer case."""
    hidden = heads.hidden_size or hidden_size
    if not hidden:
        raise ValueError(f"The {heads.kind} heads have no hidden size: pass hidden_size=.")
    layer = layer if layer is not None else (heads.layers[0] if heads.layers else 1)
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        h = torch.randn(1, hidden)
        c = torch.randn(1, hidden) if getattr(heads, "uses_context", False) else None
        for _ in range(10):
            heads.apply(layer, h, c)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            heads.apply(layer, h, c)
            times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(old)
    return statistics.median(times)
