"""Fitting exit heads by self-distillation (DESIGN.md, "Exit heads").

Pipeline: the model's own greedy continuations of the TRAIN prompts (`generate_self_text`) -> per exit layer
``h_L`` and the final pre-norm ``h_N`` at the generated positions (`collect_hidden_states`) -> a ridge map
``h_L -> h_N`` (`fit_ridge`) -> optionally KL distillation through the frozen final norm and LM head,
initialised from ridge (`fit_kl`). `agreement` measures top-1 agreement of ``lm_head(norm(head(h_L)))``
with the full model's argmax on teacher-forced sequences; `fit_heads_report` is what ``lede fit-heads``
runs: fit on train prompts, evaluate on the TEST prompts' continuations (never used for fitting), print a
table, save the heads.

Note (transformers 5.x, verified): ``output_hidden_states[-1]`` is AFTER the final norm, so ``h_N`` and
``h_L`` are taken with forward hooks on the decoder layers (``hidden_states[L]`` is the output of layer
``L-1`` for ``L < N``).
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from lede_env.engine.heads import ExitHeads, identity_heads, make_head

DEFAULT_TRAIN = ("mixed:train", "humaneval:train")
DEFAULT_TEST = ("mixed:test", "humaneval:test")
DEFAULT_LAYERS = tuple(range(4, 29, 2))


# --------------------------------------------------------------------------------------------- data
@dataclass
class SelfText:
    """One prompt and the model's own greedy continuation of it (token ids)."""

    prompt_ids: list[int]
    new_ids: list[int]

    @property
    def ids(self) -> list[int]:
        return list(self.prompt_ids) + list(self.new_ids)


@dataclass
class HiddenData:
    """Hidden states at the positions that predict the generated tokens.

    ``h[L]``: ``[P, hidden]`` after ``L`` decoder layers (pre-norm); ``h_final``: ``[P, hidden]`` after all
    layers, before the final norm; ``target``: ``[P]`` the full model's argmax token; ``seq_index``: ``[P]``
    which sequence each position came from."""

    h: dict[int, torch.Tensor]
    h_final: torch.Tensor
    target: torch.Tensor
    seq_index: torch.Tensor

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def subset(self, mask: torch.Tensor) -> "HiddenData":
        return HiddenData({k: v[mask] for k, v in self.h.items()}, self.h_final[mask], self.target[mask],
                          self.seq_index[mask])


def _is_spec(p: str) -> bool:
    """``"mixed"``, ``"humaneval:test"``, ``"my/prompts.jsonl:train"``: no whitespace, and a set name, a split
    suffix or a ``.jsonl`` path (anything else is a prompt text)."""
    if not p or any(ch.isspace() for ch in p):
        return False
    from lede_env.prompts import PROMPT_SETS

    base = p.rsplit(":", 1)[0] if p.rsplit(":", 1)[-1] in ("train", "test", "all") else p
    return base in PROMPT_SETS or base.endswith(".jsonl")


def _resolve_prompts(prompts) -> list[str]:
    """Prompt texts from a spec (``"mixed:train"``, comma-separated specs, a list of specs), prompt objects
    with ``.text``, or plain strings."""
    if isinstance(prompts, str):
        prompts = [p.strip() for p in prompts.split(",") if p.strip()] if _is_spec(prompts.split(",")[0].strip()) \
            else [prompts]
    out: list[str] = []
    for p in prompts:
        if isinstance(p, str) and _is_spec(p):
            from lede_env.prompts import load_prompts

            out.extend(x.text for x in load_prompts(p))
        elif isinstance(p, str):
            out.append(p)
        else:
            out.append(p.text)
    return out


def _encode(tok, text: str, chat_template: bool) -> list[int]:
    try:
        from lede_env.prompts import encode_prompt
    except ImportError:  # pragma: no cover - prompts module not present
        encode_prompt = None
    if encode_prompt is not None:
        return list(encode_prompt(tok, text, chat_template))
    if chat_template and getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                      tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    return list(tok.encode(text))


def _eos_ids(model, tok) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(tok, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


@torch.no_grad()
def generate_self_text(model, tok, prompts, max_new_tokens: int = 96, chat_template: bool = True,
                       batch_size: int = 8, max_prompt_tokens: int = 512, progress: bool = True,
                       desc: str = "self-text") -> list[SelfText]:
    """The model's own greedy continuations of ``prompts`` (spec string, prompt objects or texts).

    ``batch_size > 1`` generates left-padded batches (3-4x the throughput on CPU; the text is the model's own
    greedy text up to float rounding); ``batch_size == 1`` is exactly ``model.generate([ids])``. Generation
    stops at EOS (kept) or ``max_new_tokens``. Prompts longer than ``max_prompt_tokens`` keep their tail."""
    texts = _resolve_prompts(prompts)
    encoded = [_encode(tok, t, chat_template)[-max_prompt_tokens:] for t in texts]
    eos = _eos_ids(model, tok)
    pad = getattr(tok, "pad_token_id", None)
    pad = int(pad) if pad is not None else (min(eos) if eos else 0)
    device = next(model.parameters()).device
    # Sort by length so batches pad little; restore the order afterwards.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: dict[int, SelfText] = {}
    bar = tqdm(total=len(encoded), desc=desc, unit="prompt", disable=not progress)
    for start in range(0, len(order), max(1, batch_size)):
        idx = order[start:start + max(1, batch_size)]
        batch = [encoded[i] for i in idx]
        width = max(len(b) for b in batch)
        inp = torch.tensor([[pad] * (width - len(b)) + b for b in batch], device=device)
        mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch], device=device)
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        if len(batch) > 1:
            kwargs["attention_mask"] = mask
        gen = model.generate(inp, **kwargs)[:, width:].tolist()
        for i, b, g in zip(idx, batch, gen):
            new: list[int] = []
            for t in g:
                new.append(int(t))
                if int(t) in eos:
                    break
            results[i] = SelfText(list(b), new)
        bar.update(len(idx))
    bar.close()
    return [results[i] for i in range(len(encoded))]


@torch.no_grad()
def collect_hidden_states(model, sequences: Sequence[SelfText], layers: Iterable[int], progress: bool = True,
                          desc: str = "hidden states", include_prompt: bool = False) -> HiddenData:
    """Teacher-forced forward over each sequence; returns ``h_L`` (``L`` in ``layers``), the final pre-norm
    ``h_N`` and the full model's argmax at the positions predicting the generated tokens (plus the prompt's
    positions if ``include_prompt``). Uses forward hooks on the decoder layers."""
    base = model.model
    n_layers = len(base.layers)
    layers = sorted({int(L) for L in layers})
    for L in layers:
        if not 1 <= L <= n_layers:
            raise ValueError(f"Exit layer {L} out of range 1..{n_layers}.")
    captured: dict[int, torch.Tensor] = {}

    def hook(i):
        def f(_mod, _inp, out):
            captured[i] = out[0] if isinstance(out, tuple) else out
        return f

    wanted = set(layers) | {n_layers}
    handles = [base.layers[L - 1].register_forward_hook(hook(L)) for L in wanted]
    device = next(model.parameters()).device
    hs: dict[int, list[torch.Tensor]] = {L: [] for L in layers}
    hN, tgt, sidx = [], [], []
    try:
        for si, seq in enumerate(tqdm(sequences, desc=desc, unit="seq", disable=not progress)):
            ids = seq.ids
            if len(seq.new_ids) == 0 or len(ids) < 2:
                continue
            start = 0 if include_prompt else len(seq.prompt_ids) - 1
            stop = len(ids) - 1  # positions start..stop-1 predict tokens start+1..stop
            captured.clear()
            base(torch.tensor([ids], device=device), use_cache=False)
            sl = slice(start, stop)
            h_last = captured[n_layers][0, sl].float()
            for L in layers:
                hs[L].append(captured[L][0, sl].float().cpu())
            hN.append(h_last.cpu())
            tgt.append(model.lm_head(base.norm(captured[n_layers][0, sl])).argmax(-1).cpu())
            sidx.append(torch.full((stop - start,), si, dtype=torch.long))
    finally:
        for h in handles:
            h.remove()
    hidden = model.config.hidden_size
    if not hN:
        empty = torch.zeros(0, hidden)
        return HiddenData({L: empty for L in layers}, empty, torch.zeros(0, dtype=torch.long),
                          torch.zeros(0, dtype=torch.long))
    return HiddenData({L: torch.cat(v) for L, v in hs.items()}, torch.cat(hN), torch.cat(tgt),
                      torch.cat(sidx))


# ------------------------------------------------------------------------------------------ fitting
def fit_ridge(data: HiddenData, layers: Iterable[int] | None = None, alpha: float = 1e-3,
              meta: dict | None = None, progress: bool = True) -> ExitHeads:
    """Per-layer affine map ``h_L -> h_N`` (with bias) by ridge regression (float64 normal equations).

    ``alpha`` is relative: the penalty is ``alpha * trace(Xc^T Xc) / hidden`` on the centred inputs."""
    layers = sorted(data.h) if layers is None else sorted(int(L) for L in layers)
    Y = data.h_final.double()
    y_mean = Y.mean(0)
    Yc = Y - y_mean
    heads = {}
    hidden = Y.shape[1]
    for L in tqdm(layers, desc="ridge", unit="layer", disable=not progress):
        X = data.h[L].double()
        x_mean = X.mean(0)
        Xc = X - x_mean
        G = Xc.T @ Xc
        lam = alpha * torch.trace(G) / hidden
        W = torch.linalg.solve(G + lam * torch.eye(hidden, dtype=G.dtype), Xc.T @ Yc)  # [in, out]
        b = y_mean - x_mean @ W
        head = make_head("affine", hidden)
        with torch.no_grad():
            head.affine.weight.copy_(W.T.float())
            head.affine.bias.copy_(b.float())
        heads[L] = head
    m = dict(meta or {})
    m.setdefault("fit", {})["ridge_alpha"] = alpha
    return ExitHeads("ridge", heads, hidden_size=hidden, arch="affine", meta=m)


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


def fit_kl(model, data: HiddenData, init: ExitHeads, layers: Iterable[int] | None = None,
           arch: str = "affine", mlp_width: int = 256, epochs: int = 4, batch_size: int = 256,
           lr: float = 1e-3, weight_decay: float = 0.0, temperature: float = 1.0,
           val: HiddenData | None = None,
           vocab: str = "active", vocab_top_k: int = 8, seed: int = 0, progress: bool = True,
           meta: dict | None = None) -> ExitHeads:
    """KL distillation of each exit head: minimise ``KL(p_full || p_head)`` with ``p_head =
    softmax(lm_head(norm(head(h_L))))``, through the frozen norm and LM head.

    ``vocab="full"`` uses the whole vocabulary; ``"active"`` (default, several times faster on CPU) restricts
    both softmaxes to the tokens in the top-``vocab_top_k`` of the full model or of the init heads at some
    training position (`active_vocab`); agreement is always measured over the full vocabulary.
    Heads start from ``init`` (ridge); ``arch="affine_mlp"`` adds a residual MLP of width ``mlp_width``
    (starts at zero). One teacher softmax per minibatch serves every layer. With ``val`` given, the epoch with
    the best validation agreement is kept per layer (epoch 0 = the init)."""
    layers = sorted(data.h) if layers is None else sorted(int(L) for L in layers)
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
            if arch == "affine_mlp":
                nn.init.normal_(head.up.weight, std=1.0 / math.sqrt(hidden))
                head.up.bias.zero_()
        head.train()
        heads[L] = head
    params = [p for h in heads.values() for p in h.parameters()]
    for p in params:
        p.requires_grad_(True)
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
            acc = _agreement_one(full_readout, heads[L], val.h[L], val.target)
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
                logp_s = torch.log_softmax(readout(heads[L](data.h[L][idx])) / temperature, -1)
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
    kind = "kl" if arch == "affine" else "kl-mlp"
    m = dict(meta or {})
    m.setdefault("fit", {}).update(
        kl_epochs=epochs, kl_lr=lr, kl_batch_size=batch_size, kl_temperature=temperature,
        kl_weight_decay=weight_decay, kl_vocab=vocab, kl_vocab_size=n_vocab,
        kl_seconds=round(time.perf_counter() - t0, 1),
        kl_val_agreement_by_epoch={str(L): [round(a, 4) for a in history[L]] for L in layers},
        kl_best_epoch={str(L): best[L][2] for L in layers} if val is not None else None)
    return ExitHeads(kind, heads, hidden_size=hidden, arch=arch,
                     mlp_width=mlp_width if arch == "affine_mlp" else 0, meta=m)


# ---------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def _agreement_one(readout, head, X: torch.Tensor, target: torch.Tensor, chunk: int = 1024,
                   vocab: torch.Tensor | None = None) -> float:
    if len(target) == 0:
        return float("nan")
    hits = 0
    for i in range(0, len(target), chunk):
        x = X[i:i + chunk]
        logits = readout(head(x) if head is not None else x)
        pred = logits.argmax(-1) if vocab is None else vocab[logits[:, vocab].argmax(-1)]
        hits += int((pred == target[i:i + chunk]).sum())
    return hits / len(target)


@torch.no_grad()
def agreement_on_data(model, heads: ExitHeads, data: HiddenData, layers: Iterable[int] | None = None
                      ) -> dict[int, float]:
    """Top-1 agreement of ``lm_head(norm(head(h_L)))`` with the full model's argmax on collected data (the
    argmax over the heads' draft vocabulary when they carry one)."""
    readout = _frozen_readout(model)
    layers = sorted(data.h) if layers is None else sorted(int(L) for L in layers)
    vocab = getattr(heads, "draft_vocab", None)
    return {L: _agreement_one(readout, lambda h, L=L: heads.apply(L, h), data.h[L], data.target, vocab=vocab)
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


def head_cost(heads: ExitHeads, layer: int | None = None, repeats: int = 200, threads: int | None = None
              ) -> float:
    """Median seconds of ``heads.apply(layer, h)`` for one token (``h`` of shape ``[1, hidden]``)."""
    hidden = heads.hidden_size or 576
    layer = layer if layer is not None else (heads.layers[0] if heads.layers else 1)
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        h = torch.randn(1, hidden)
        for _ in range(10):
            heads.apply(layer, h)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            heads.apply(layer, h)
            times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(old)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------ drivers
def _model_name(model) -> str:
    return str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "") or "unknown")


def _spec_list(prompts) -> list[str]:
    if isinstance(prompts, str):
        return [p.strip() for p in prompts.split(",") if p.strip()]
    return [p if isinstance(p, str) and len(p) < 64 else f"<{len(str(getattr(p, 'text', p)))} chars>"
            for p in prompts]


def generate_for_positions(model, tok, prompts=DEFAULT_TRAIN, n_positions: int | None = None,
                           max_new_tokens: int = 128, chat_template: bool = True, batch_size: int = 16,
                           seed: int = 0, progress: bool = True, desc: str = "self-text",
                           cache: str | Path | None = None) -> list[SelfText]:
    """The model's greedy continuations of ``prompts`` (shuffled with ``seed``), generated until about
    ``n_positions`` generated tokens (``None``: every prompt). ``cache``: a JSON file reused when it was made
    for the same model, prompts and settings (generation is the slow part of fitting)."""
    key = {"model": _model_name(model), "prompts": _spec_list(prompts), "n_positions": n_positions,
           "max_new_tokens": max_new_tokens, "chat_template": chat_template, "seed": seed}
    if cache is not None and Path(cache).is_file():
        saved = json.loads(Path(cache).read_text())
        if saved.get("key") == key:
            return [SelfText(a, b) for a, b in saved["sequences"]]
    texts = _resolve_prompts(prompts)
    g = torch.Generator().manual_seed(seed)
    texts = [texts[i] for i in torch.randperm(len(texts), generator=g).tolist()]
    seqs: list[SelfText] = []
    total, i = 0, 0
    target = math.inf if n_positions is None else n_positions
    while total < target and i < len(texts):
        # Each prompt yields <= max_new_tokens positions: generate in chunks sized by what is still missing.
        take = len(texts) - i if n_positions is None else \
            max(batch_size, min(len(texts) - i, math.ceil((target - total) / max(1.0, 0.8 * max_new_tokens))))
        chunk = generate_self_text(model, tok, texts[i:i + take], max_new_tokens, chat_template, batch_size,
                                   progress=progress, desc=desc)
        i += take
        seqs.extend(chunk)
        total += sum(len(s.new_ids) for s in chunk)
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        Path(cache).write_text(json.dumps({"key": key,
                                           "sequences": [[s.prompt_ids, s.new_ids] for s in seqs]}))
    return seqs


def build_training_data(model, tok, prompts=DEFAULT_TRAIN, layers: Iterable[int] = DEFAULT_LAYERS,
                        n_positions: int | None = 30_000, max_new_tokens: int = 128,
                        chat_template: bool = True, batch_size: int = 16, seed: int = 0,
                        progress: bool = True, desc: str = "train",
                        cache: str | Path | None = None) -> tuple[list[SelfText], HiddenData]:
    """`generate_for_positions` then `collect_hidden_states` (cut to ``n_positions``)."""
    seqs = generate_for_positions(model, tok, prompts, n_positions, max_new_tokens, chat_template, batch_size,
                                  seed, progress, f"{desc}: self-text", cache)
    data = collect_hidden_states(model, seqs, layers, progress=progress, desc=f"{desc}: hidden states")
    if n_positions is not None and len(data) > n_positions:
        data = data.subset(torch.arange(len(data)) < n_positions)
    return seqs, data


def fit_heads(model, tok, kind: str = "kl", layers: Iterable[int] = DEFAULT_LAYERS, prompts=DEFAULT_TRAIN,
              n_positions: int | None = 30_000, max_new_tokens: int = 128, chat_template: bool = True,
              data: HiddenData | None = None, ridge_alpha: float = 1e-3, kl_epochs: int = 4,
              kl_lr: float = 1e-3, kl_batch_size: int = 256, mlp_width: int = 256, val_fraction: float = 0.1,
              seed: int = 0, progress: bool = True, cache: str | Path | None = None,
              model_name: str | None = None) -> ExitHeads:
    """Fit exit heads of ``kind`` (``"ridge"``, ``"kl"`` or ``"kl-mlp"``) for ``layers`` on the model's own
    greedy continuations of ``prompts`` (pass ``data`` to reuse collected hidden states). KL kinds start from
    ridge on 90% of the sequences and keep, per layer, the epoch with the best agreement on the other 10%."""
    layers = sorted(int(L) for L in layers)
    if kind == "identity":
        return identity_heads()
    if kind not in ("ridge", "kl", "kl-mlp"):
        raise ValueError(f"Unknown exit-head kind {kind!r}; choose 'identity', 'ridge', 'kl' or 'kl-mlp'.")
    t0 = time.perf_counter()
    if data is None:
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
    train, val = _split(data, val_fraction, seed) if kind != "ridge" else (data, None)
    heads = fit_ridge(train, layers, alpha=ridge_alpha, meta=meta, progress=progress)
    if kind != "ridge":
        heads = fit_kl(model, train, heads, layers, arch="affine" if kind == "kl" else "affine_mlp",
                       mlp_width=mlp_width, epochs=kl_epochs, batch_size=kl_batch_size, lr=kl_lr, val=val,
                       seed=seed, progress=progress, meta=heads.meta)
    heads.meta["fit"]["seconds"] = round(time.perf_counter() - t0, 1)
    return heads


def _split(data: HiddenData, val_fraction: float, seed: int) -> tuple[HiddenData, HiddenData | None]:
    """Split by sequence (not by position) into train / validation."""
    if val_fraction <= 0:
        return data, None
    seqs = torch.unique(data.seq_index)
    g = torch.Generator().manual_seed(seed + 1)
    n_val = max(1, int(round(val_fraction * len(seqs))))
    val_seqs = seqs[torch.randperm(len(seqs), generator=g)[:n_val]]
    is_val = torch.isin(data.seq_index, val_seqs)
    return data.subset(~is_val), data.subset(is_val)


def fit_heads_report(model=None, tok=None, out: str | Path | None = None, model_name: str = "smollm2-135m",
                     kinds: Sequence[str] = ("ridge", "kl"), layers: Iterable[int] = DEFAULT_LAYERS,
                     train_prompts=DEFAULT_TRAIN, test_prompts=DEFAULT_TEST, n_positions: int | None = 30_000,
                     n_test_positions: int | None = None, max_new_tokens: int = 128,
                     chat_template: bool = True, kl_epochs: int = 4, save_all: bool = True, seed: int = 0,
                     threads: int | None = 2, draft_vocab_top_k: int = 8,
                     cache_dir: str | Path | None = None, train_data: HiddenData | None = None,
                     test_data: HiddenData | None = None, progress: bool = True, echo=print) -> dict:
    """What ``lede fit-heads`` runs. Fit each of ``kinds`` on the train prompts' self-generated text, evaluate
    top-1 agreement on the TEST prompts' continuations (never used for fitting; ``n_test_positions=None``: all
    test prompts), print a table per exit layer (identity vs each kind) and the head cost per token, save the
    best kind (highest mean held-out agreement) to ``out`` and, with ``save_all``, every kind to
    ``out/<kind>/``, plus ``out/report.json``. ``cache_dir`` keeps the generated text for reruns;
    ``train_data`` / ``test_data`` reuse collected hidden states (they must hold every layer). ``threads``:
    torch threads; on a CPU shared with other jobs use 1 (2 threads on 2 busy cores ran ~10x slower here).
    ``draft_vocab_top_k > 0``: every saved kind carries a draft vocabulary (`draft_vocabulary` of the train
    positions; its held-out coverage and the agreement through it are reported). Returns the report dict
    (with the fitted heads under ``"heads"``)."""
    if threads is not None:
        torch.set_num_threads(threads)
    if model is None:
        from lede_env.models import load_model

        model, tok = load_model(model_name)
    layers = sorted(int(L) for L in layers)
    def cache(name: str) -> Path | None:
        return Path(cache_dir) / f"selftext_{name}.json" if cache_dir is not None else None

    t0 = time.perf_counter()
    train, test = train_data, test_data
    if train is None:
        _, train = build_training_data(model, tok, train_prompts, layers, n_positions, max_new_tokens,
                                       chat_template, seed=seed, progress=progress, desc="train",
                                       cache=cache("train"))
    t_train_data = time.perf_counter() - t0
    if test is None:
        _, test = build_training_data(model, tok, test_prompts, layers, n_test_positions, max_new_tokens,
                                      chat_template, seed=seed, progress=progress, desc="test",
                                      cache=cache("test"))
    t_test_data = time.perf_counter() - t0 - t_train_data
    results: dict[str, dict[int, float]] = {
        "identity": agreement_on_data(model, identity_heads(), test, layers)}
    fitted: dict[str, ExitHeads] = {}
    seconds: dict[str, float] = {}
    for kind in kinds:
        t = time.perf_counter()
        heads = fit_heads(model, tok, kind, layers, train_prompts, data=train, max_new_tokens=max_new_tokens,
                          chat_template=chat_template, kl_epochs=kl_epochs, seed=seed, progress=progress,
                          model_name=model_name)
        seconds[kind] = round(time.perf_counter() - t, 1)
        results[kind] = agreement_on_data(model, heads, test, layers)
        fit = heads.meta.setdefault("fit", {})
        fit["heldout_agreement"] = {str(L): round(a, 4) for L, a in results[kind].items()}
        fit["heldout_identity_agreement"] = {str(L): round(a, 4) for L, a in results["identity"].items()}
        fit["heldout_prompts"] = _spec_list(test_prompts)
        fit["heldout_positions"] = len(test)
        fit["head_seconds_per_token"] = head_cost(heads, layers[len(layers) // 2], threads=1)
        fitted[kind] = heads
    if threads is not None:
        torch.set_num_threads(threads)
    vocab_info = None
    if draft_vocab_top_k > 0:
        vocab = draft_vocabulary(model, train, draft_vocab_top_k)
        vocab_info = {"top_k": draft_vocab_top_k, "size": len(vocab), "heldout_coverage": vocab_coverage(vocab, test)}
        for kind in ["identity", *kinds]:
            heads = fitted[kind] if kind in fitted else identity_heads()
            heads = heads.with_draft_vocab(vocab)
            results[f"{kind}+vocab"] = agreement_on_data(model, heads, test, layers)
            if kind in fitted:
                heads.meta.setdefault("fit", {})["draft_vocab"] = dict(
                    vocab_info, heldout_agreement={str(L): round(a, 4) for L, a in results[f"{kind}+vocab"].items()})
                fitted[kind] = heads
    costs = {k: fitted[k].meta["fit"]["head_seconds_per_token"] for k in fitted}
    cols = ["identity", *kinds]
    if vocab_info is not None:
        cols += [f"{k}+vocab" for k in ["identity", *kinds]]
    echo(f"Held-out top-1 agreement with the full model's greedy token ({len(test)} positions of test-prompt "
         f"continuations; fitted on {len(train)} train positions)")
    width = max(9, *(len(c) for c in cols))
    echo("layer " + " ".join(f"{c:>{width}}" for c in cols))
    for L in layers:
        echo(f"{L:>5} " + " ".join(f"{results[c][L]:{width}.3f}" for c in cols))
    echo("mean  " + " ".join(f"{statistics.mean(results[c].values()):{width}.3f}" for c in cols))
    if vocab_info is not None:
        echo(f"draft vocabulary ('+vocab'): the full model's top-{vocab_info['top_k']} tokens at the train positions, "
             f"{vocab_info['size']} tokens, covering {vocab_info['heldout_coverage']:.4f} of the held-out greedy "
             "tokens; saved heads carry it")
    echo("head cost per token (median, 1 thread): "
         + ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in costs.items()))
    echo(f"time: train text+states {t_train_data:.0f} s, test text+states {t_test_data:.0f} s, fits "
         + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    best = max(fitted, key=lambda k: statistics.mean(results[k].values())) if fitted else "identity"
    report = {"layers": layers, "draft_vocab": vocab_info,
              "agreement": {k: {str(L): a for L, a in v.items()} for k, v in results.items()},
              "head_seconds_per_token": costs, "fit_seconds": seconds, "best": best,
              "train_positions": len(train), "test_positions": len(test),
              "data_seconds": {"train": round(t_train_data, 1), "test": round(t_test_data, 1)}}
    if out is not None and fitted:
        out = Path(out)
        fitted[best].save(out)
        if save_all:
            for k, h in fitted.items():
                h.save(out / k)
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        echo(f"saved {best} heads to {out}" + (f" (every kind under {out}/<kind>/)" if save_all else ""))
    report["heads"] = fitted
    return report
