"""Fitting exit heads by self-distillation (DESIGN.md, "Exit heads"): a ridge map ``h_L -> h_N``
(`fit_ridge`), then optionally KL distillation through the frozen final norm and LM head, initialised from
ridge (`fit_kl`); `fit_heads` runs both on a model's self-generated text. ``eagle`` heads fit ``kl`` heads, then
the first-draft map of ``[h_L, h_N(prev)]`` the same two ways (`fit_kl` with ``context=True``)."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from lede_env.engine.heads import ExitHeads, identity_heads, make_head
from lede_env.heads_fitting.data import (
    HiddenData,
    _model_name,
    _spec_list,
    build_training_data,
    split_by_sequence,
)
from lede_env.heads_fitting.evaluate import _agreement_one, _frozen_readout, active_vocab

FITTED_KINDS = ("ridge", "kl", "kl-mlp", "eagle")


def _ridge(X: torch.Tensor, Y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge regression ``Y ~ X W + b`` in float64 normal equations; returns ``(W.T, b)`` in float32.
    ``alpha`` is relative: the penalty is ``alpha * trace(Xc^T Xc) / in_features`` on the centred inputs."""
    X, Y = X.double(), Y.double()
    x_mean, y_mean = X.mean(0), Y.mean(0)
    Xc = X - x_mean
    G = Xc.T @ Xc
    lam = alpha * torch.trace(G) / X.shape[1]
    W = torch.linalg.solve(G + lam * torch.eye(X.shape[1], dtype=G.dtype), Xc.T @ (Y - y_mean))  # [in, out]
    return W.T.float(), (y_mean - x_mean @ W).float()


def fit_ridge(data: HiddenData, layers: Iterable[int] | None = None, alpha: float = 1e-3,
              meta: dict | None = None, progress: bool = True) -> ExitHeads:
    """Per-layer affine map ``h_L -> h_N`` (with bias) by ridge regression (`_ridge`)."""
    layers = sorted(data.h) if layers is None else sorted(int(L) for L in layers)
    heads = {}
    hidden = data.h_final.shape[1]
    for L in tqdm(layers, desc="ridge", unit="layer", disable=not progress):
        W, b = _ridge(data.h[L], data.h_final, alpha)
        head = make_head("affine", hidden)
        with torch.no_grad():
            head.affine.weight.copy_(W)
            head.affine.bias.copy_(b)
        heads[L] = head
    m = dict(meta or {})
    m.setdefault("fit", {})["ridge_alpha"] = alpha
    return ExitHeads("ridge", heads, hidden_size=hidden, arch="affine", meta=m)

def fit_kl(model, data: HiddenData, init: ExitHeads, layers: Iterable[int] | None = None,
           arch: str = "affine", mlp_width: int = 256, epochs: int = 4, batch_size: int = 256,
           lr: float = 1e-3, weight_decay: float = 0.0, temperature: float = 1.0,
           val: HiddenData | None = None,
           vocab: str = "active", vocab_top_k: int = 8, seed: int = 0, progress: bool = True,
           meta: dict | None = None, context: bool = False, ridge_alpha: float = 1e-3) -> ExitHeads:
    """KL distillation of each exit head: minimise ``KL(p_full || p_head)`` with ``p_head =
    softmax(lm_head(norm(head(h_L))))``, through the frozen norm and LM head.

    ``vocab="full"`` uses the whole vocabulary; ``"active"`` (default, several times faster on CPU) restricts
    both softmaxes to the tokens in the top-``vocab_top_k`` of the full model or of the init heads at some
    training position (`active_vocab`); agreement is always measured over the full vocabulary.
    Heads start from ``init`` (ridge); ``arch="affine_mlp"`` adds a residual MLP of width ``mlp_width``
    (starts at zero). One teacher softmax per minibatch serves every layer. With ``val`` given, the epoch with
    the best validation agreement is kept per layer (epoch 0 = the init).

    ``context=True`` fits ``eagle`` heads: ``init`` is ``kl`` heads, kept as the later drafts' map; the first-draft
    map of ``[h_L, h_N(prev)]`` (``data.h_prev``) starts from ridge and is what is distilled and validated."""
    layers = sorted(data.h) if layers is None else sorted(int(L) for L in layers)
    if context and (data.h_prev is None or (val is not None and val.h_prev is None)):
        raise ValueError("Fitting eagle heads needs h_prev in the data (collect_hidden_states records it).")
    if context:
        arch = "affine_ctx"
    hidden = data.h_final.shape[1]
    full_readout = readout = _frozen_readout(model)
    n_vocab = None
    if vocab == "active":
        ids = active_vocab(model, data, init if init.kind != "identity" else None, layers, vocab_top_k,
    seed=seed)
        n_vocab = len(ids)
        w = model.lm_head.weight[ids].detach()
        bias = model.lm_head.bias[ids].detach() if getattr(model.lm_head, "bias", None) is not None else None
        norm = model.model.norm
        readout = lambda h: nn.functional.linear(norm(h), w, bias)  # noqa: E731
    elif vocab != "full":
        raise ValueError(f"vocab must be 'full' or 'active', got {vocab!r}.")
    g = torch.Generator().manual_seed(seed)
    heads: dict[int, nn.Module] = {}
    for L in layers:
        head = make_head(arch, hidden, mlp_width if arch == "affine_mlp" else 0)
        src = init.modules[str(L)] if init.kind != "identity" else None
        with torch.no_grad():
            if src is not None:
                head.affine.load_state_dict(src.affine.state_dict())
            if context:
                W, b = _ridge(torch.cat([data.h[L], data.h_prev], 1), data.h_final, ridge_alpha)
                head.fused.weight.copy_(W)
                head.fused.bias.copy_(b)
                head.affine.requires_grad_(False)
            if arch == "affine_mlp":
                nn.init.normal_(head.up.weight, std=1.0 / math.sqrt(hidden))
                head.up.bias.zero_()
        head.train()
        heads[L] = head
    params = [p for h in heads.values() for p in (h.fused.parameters() if context else h.parameters())]
    for p in params:
        p.requires_grad_(True)
    prev = data.h_prev if context else None
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    n = len(data)
    steps = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
    opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    history: dict[int, list[float]] = {L: [] for L in layers}
    best = {L: (-1.0, copy.deepcopy(heads[L].state_dict()), 0) for L in layers}

    def evaluate(epoch: int) -> None:
        if val is None:
            return
        for L in layers:
            heads[L].eval()
            acc = _agreement_one(full_readout, heads[L], val.h[L], val.target,
                                 context=val.h_prev if context else None)
            heads[L].train()
            history[L].append(acc)
            if acc > best[L][0]:
                best[L] = (acc, copy.deepcopy(heads[L].state_dict()), epoch)

    evaluate(0)
    bar = tqdm(total=steps, desc=f"kl ({arch})", unit="batch", disable=not progress)
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n, generator=g)
        running = 0.0
        for bi in range(0, n, batch_size):
            idx = perm[bi:bi + batch_size]
            with torch.no_grad():
                logp_t = torch.log_softmax(readout(data.h_final[idx]) / temperature, -1)
                p_t = logp_t.exp()
            total = 0.0
            opt.zero_grad(set_to_none=True)
            for L in layers:
                x = heads[L](data.h[L][idx]) if prev is None else heads[L](data.h[L][idx], prev[idx])
                logp_s = torch.log_softmax(readout(x) / temperature, -1)
                loss = (p_t * (logp_t - logp_s)).sum(-1).mean() * temperature ** 2
                loss.backward()
                total += float(loss.detach())
            opt.step()
            sched.step()
            running = total / len(layers)
            bar.update(1)
            bar.set_postfix(kl=f"{running:.3f}", epoch=epoch)
        evaluate(epoch)
    bar.close()
    for p in params:
        p.requires_grad_(False)
    if val is not None:
        for L in layers:
            heads[L].load_state_dict(best[L][1])
    kind = "eagle" if context else "kl" if arch == "affine" else "kl-mlp"
    m = dict(meta or {})
    stats = dict(
        kl_epochs=epochs, kl_lr=lr, kl_batch_size=batch_size, kl_temperature=temperature,
        kl_weight_decay=weight_decay, kl_vocab=vocab, kl_vocab_size=n_vocab,
        kl_seconds=round(time.perf_counter() - t0, 1),
        kl_val_agreement_by_epoch={str(L): [round(a, 4) for a in history[L]] for L in layers},
        kl_best_epoch={str(L): best[L][2] for L in layers} if val is not None else None)
    if context:   # the later drafts' (kl) figures stay; the first-draft map's go beside them
        m["fit"] = dict(m.get("fit", {}), first_draft=dict(stats, ridge_alpha=ridge_alpha))
    else:
        m.setdefault("fit", {}).update(stats)
    return ExitHeads(kind, heads, hidden_size=hidden, arch=arch,
                     mlp_width=mlp_width if arch == "affine_mlp" else 0, meta=m)


def fit_heads(model, tok, kind: str, layers: Iterable[int], prompts=None, n_positions: int | None = None,
              max_new_tokens: int = 128, chat_template: bool = True,
              data: HiddenData | None = None, ridge_alpha: float = 1e-3, kl_epochs: int = 4,
              kl_lr: float = 1e-3, kl_batch_size: int = 256, mlp_width: int = 256, val_fraction: float = 0.1,
              seed: int = 0, progress: bool = True, cache: str | Path | None = None,
              model_name: str | None = None, init: ExitHeads | None = None) -> ExitHeads:
    """Fit exit heads of ``kind`` (``"ridge"``, ``"kl"``, ``"kl-mlp"`` or ``"eagle"``) for ``layers`` on the model's own
    greedy continuations of ``prompts`` (``n_positions`` generated tokens, ``None``: every prompt; pass ``data``
    to reuse collected hidden states). KL kinds start from
    ridge on 90% of the sequences and keep, per layer, the epoch with the best agreement on the other 10%; ``eagle``
    fits ``kl`` heads (or reuses ``init``, ``kl`` heads fitted on the same data), then their first-draft map."""
    layers = sorted(int(L) for L in layers)
    if kind == "identity":
        return identity_heads()
    if kind not in FITTED_KINDS:
        raise ValueError(f"Unknown exit-head kind {kind!r}; choose 'identity' or one of {list(FITTED_KINDS)}.")
    t0 = time.perf_counter()
    if data is None:
        if prompts is None:
            raise ValueError("fit_heads needs the training prompts (prompts=...) or collected hidden states (data=...).")
        _, data = build_training_data(model, tok, prompts, layers, n_positions, max_new_tokens, chat_template,
    seed=seed, progress=progress, cache=cache)
    missing = [L for L in layers if L not in data.h]
    if missing:
        raise ValueError(f"The data holds no hidden states for layers {missing} (it has {sorted(data.h)}).")
    meta = {"model": model_name or _model_name(model), "model_path": _model_name(model),
            "num_layers": int(model.config.num_hidden_layers),
            "training_data": {"prompts": _spec_list(prompts), "split": "train",
                              "text": "the model's own greedy continuations (teacher-forced), generated "
                                      "positions only",
                              "chat_template": chat_template, "max_new_tokens": max_new_tokens,
                              "positions": len(data)}}
    train, val = split_by_sequence(data, val_fraction, seed) if kind != "ridge" else (data, None)
    if kind == "eagle" and init is not None:
        if init.kind != "kl" or not set(layers) <= set(init.layers):
            raise ValueError(f"eagle heads reuse kl heads as their later-draft map: init must be kl heads covering "
                             f"layers {layers}, got {init.kind} heads of layers {list(init.layers)}. Fit kl heads on the "
                             "same data first, or leave init out.")
        heads = init
    else:
        heads = fit_ridge(train, layers, alpha=ridge_alpha, meta=meta, progress=progress)
        if kind != "ridge":
            heads = fit_kl(model, train, heads, layers, arch="affine_mlp" if kind == "kl-mlp" else "affine",
                           mlp_width=mlp_width, epochs=kl_epochs, batch_size=kl_batch_size, lr=kl_lr, val=val,
                           seed=seed, progress=progress, meta=heads.meta)
    if kind == "eagle":
        heads = fit_kl(model, train, heads, layers, epochs=kl_epochs, batch_size=kl_batch_size, lr=kl_lr, val=val,
                       seed=seed, progress=progress, meta=dict(heads.meta, **meta), context=True, ridge_alpha=ridge_alpha)
    heads.meta["fit"]["seconds"] = round(time.perf_counter() - t0, 1)
    return heads
