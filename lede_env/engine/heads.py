"""Exit heads: a small module per exit layer mapping ``h_L`` (the pre-norm residual stream after ``L`` decoder
layers) towards ``h_N`` before the model's shared final norm and LM head (DESIGN.md, "Exit heads").

The full model is never changed: heads only change drafts, so decoding stays exact. Kinds:

* ``identity``: the plain (LayerSkip) early exit ``lm_head(norm(h_L))``; applies to any layer.
* ``ridge``:    per-layer affine map ``h_L -> W h_L + b`` fitted by ridge regression onto ``h_N``.
* ``kl``:       the same affine map, then trained with KL(full softmax || head softmax) through the frozen
                norm and LM head (initialised from ridge).
* ``kl-mlp``:   affine map plus a residual MLP (``W h + b + down(silu(up(h)))``), KL-trained.
* ``eagle``:    EAGLE-style (Li et al. 2024, "EAGLE: speculative sampling requires rethinking feature
                uncertainty"): the *first* draft of a step also sees the full model's last verified feature,
                ``h_N`` at the position before the pending token (which the previous verification or the prefill
                computed anyway): ``[h_L, h_N(prev)] -> W' [h_L, h_N(prev)] + b'``, KL-trained. Later drafts of the
                step have no verified feature and use the ``kl`` map. Both inputs are functions of the committed
                prefix, so a trace reproduces every draft exactly (`lede_env.traces`, ``first_*`` arrays).

Heads may carry a *draft vocabulary*: the token ids drafts are read from, through a small LM head made of those
rows of the model's head (on SmolLM2 the full head is about a sixth of a 30-layer step; the tokens the model
actually emits are a fraction of its 49,152). The full head still verifies, so decoding stays exact.

Fitting lives in `lede_env.heads_fitting`. Storage: one safetensors file with the weights (tensor names
``"<layer>.<param>"``) and the JSON metadata both embedded in it (key ``"lede_heads"``) and written beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

HEAD_KINDS = ("identity", "ridge", "kl", "kl-mlp", "eagle")
ARCHS = ("affine", "affine_mlp", "affine_ctx")
WEIGHTS_FILE = "heads.safetensors"
META_FILE = "heads.json"
_META_KEY = "lede_heads"
FORMAT_VERSION = 1


class AffineHead(nn.Module):
    """``h -> W h + b`` (an ``nn.Linear`` with bias); initialised to the identity."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.affine = nn.Linear(hidden_size, hidden_size, bias=True)
        with torch.no_grad():
            self.affine.weight.copy_(torch.eye(hidden_size))
            self.affine.bias.zero_()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(h, self.affine.weight, self.affine.bias)


class AffineMLPHead(nn.Module):
    """``h -> W h + b + down(silu(up(h)))``: an affine map plus a residual MLP of width ``mlp_width``
    (``down`` starts at zero, so a fresh head equals its affine part)."""

    def __init__(self, hidden_size: int, mlp_width: int):
        super().__init__()
        self.affine = nn.Linear(hidden_size, hidden_size, bias=True)
        self.up = nn.Linear(hidden_size, mlp_width, bias=True)
        self.down = nn.Linear(mlp_width, hidden_size, bias=False)
        with torch.no_grad():
            self.affine.weight.copy_(torch.eye(hidden_size))
            self.affine.bias.zero_()
            self.down.weight.zero_()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.affine(h) + self.down(nn.functional.silu(self.up(h)))


class ContextHead(nn.Module):
    """EAGLE-style head: ``forward(h)`` is the plain affine map ``W h + b`` (drafts after the first);
    ``forward(h, context)`` with ``context`` the full model's last verified pre-norm feature is the affine map of
    the concatenation, ``fused([h, context])`` (the first draft of a step). ``fused`` starts as ``[I, 0]``: a fresh
    head ignores the context."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.affine = nn.Linear(hidden_size, hidden_size, bias=True)
        self.fused = nn.Linear(2 * hidden_size, hidden_size, bias=True)
        with torch.no_grad():
            self.affine.weight.copy_(torch.eye(hidden_size))
            self.affine.bias.zero_()
            self.fused.weight.zero_()
            self.fused.weight[:, :hidden_size].copy_(torch.eye(hidden_size))
            self.fused.bias.zero_()

    def forward(self, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is None:
            return nn.functional.linear(h, self.affine.weight, self.affine.bias)
        return nn.functional.linear(torch.cat([h, context.expand_as(h)], dim=-1), self.fused.weight, self.fused.bias)


def make_head(arch: str, hidden_size: int, mlp_width: int = 0) -> nn.Module:
    if arch == "affine":
        return AffineHead(hidden_size)
    if arch == "affine_ctx":
        return ContextHead(hidden_size)
    if arch == "affine_mlp":
        if mlp_width <= 0:
            raise ValueError(f"arch 'affine_mlp' needs mlp_width > 0, got {mlp_width}.")
        return AffineMLPHead(hidden_size, mlp_width)
    raise ValueError(f"Unknown head arch {arch!r}; choose one of {ARCHS}.")


class ExitHeads:
    """Exit heads for a set of exit layers (or the identity for every layer).

    ``apply(layer, h)`` maps ``h_L`` of shape ``[..., hidden]`` to the input of the final norm, with the same
    dtype and device as ``h``. ``meta`` holds the metadata saved with the heads (kind, layers, hidden size,
    model name, training data description, fit figures).
    """

    def __init__(self, kind: str, heads: Mapping[int, nn.Module] | None = None,
                 hidden_size: int | None = None, arch: str | None = None, mlp_width: int = 0,
                 meta: dict | None = None, draft_vocab=None):
        if kind not in HEAD_KINDS:
            raise ValueError(f"Unknown exit-head kind {kind!r}; choose one of {HEAD_KINDS}.")
        heads = dict(heads or {})
        if kind == "identity" and heads:
            raise ValueError("Identity heads hold no modules.")
        if kind != "identity" and not heads:
            raise ValueError(f"Exit heads of kind {kind!r} need at least one layer's head.")
        self.kind = kind
        self.arch = arch if arch is not None else {"identity": "identity", "eagle": "affine_ctx"}.get(kind, "affine")
        self.mlp_width = int(mlp_width)
        self.modules = nn.ModuleDict({str(int(k)): m for k, m in sorted(heads.items())})
        for m in self.modules.values():
            m.eval()
            m.requires_grad_(False)
        self.layers: tuple[int, ...] = tuple(sorted(int(k) for k in heads))
        if hidden_size is None and heads:
            hidden_size = next(iter(heads.values())).affine.in_features
        self.hidden_size = hidden_size
        # Draft vocabulary: token ids the drafts are read from (a small LM head; None = the whole vocabulary).
        self.draft_vocab = None if draft_vocab is None else torch.as_tensor(draft_vocab, dtype=torch.long).unique()
        self.meta: dict = dict(meta or {})
        self.meta.update(kind=self.kind, layers=list(self.layers), hidden_size=self.hidden_size,
                         arch=self.arch, mlp_width=self.mlp_width,
                         draft_vocab_size=None if self.draft_vocab is None else len(self.draft_vocab))
        self._sync_param_info()

    # ------------------------------------------------------------------ use
    def _sync_param_info(self) -> None:
        p = next(self.modules.parameters(), None)
        self._dtype = p.dtype if p is not None else None
        self._device = p.device if p is not None else None

    @property
    def label(self) -> str:
        """The kind, with "+vocab" when drafts read a draft vocabulary (keys latency profiles and traces)."""
        return self.kind if self.draft_vocab is None else f"{self.kind}+vocab"

    def has(self, layer: int) -> bool:
        return self.kind == "identity" or str(int(layer)) in self.modules

    @property
    def uses_context(self) -> bool:
        """Whether the first draft of a step reads the full model's last verified feature (``eagle``)."""
        return self.arch == "affine_ctx"

    def apply(self, layer: int, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Map ``h_L`` ([..., hidden]) for exit layer ``layer``; output has ``h``'s dtype and device.
        ``context``: the full model's last verified pre-norm feature ([..., hidden]), given for the first draft of
        a step; heads that do not use it (every kind but ``eagle``) ignore it."""
        if self.kind == "identity":
            return h
        head = self.modules[str(int(layer))] if str(int(layer)) in self.modules else None
        if head is None:
            raise ValueError(
                f"No exit head of kind {self.kind!r} for layer {layer}; "
                f"available layers: {list(self.layers)}. Fit heads for this layer "
                "(`lede fit-heads --layers ...`) or use identity heads."
            )
        if h.shape[-1] != self.hidden_size:
            raise ValueError(f"Exit head expects hidden size {self.hidden_size}, "
                             f"got h of shape {tuple(h.shape)}.")
        # Parameters never require grad, so no graph is recorded for a plain ``h``; ``forward`` skips the
        # module-call machinery (this is on the per-token drafting path).
        args = (h,) if context is None or not self.uses_context else (h, context)
        if any(a.dtype != self._dtype or a.device != self._device for a in args):
            cast = [a.to(device=self._device, dtype=self._dtype) for a in args]
            return head.forward(*cast).to(device=h.device, dtype=h.dtype)
        return head.forward(*args)

    __call__ = apply

    def to(self, device=None, dtype=None) -> "ExitHeads":
        """Move/cast the heads in place (returns self)."""
        self.modules.to(device=device, dtype=dtype)
        self._sync_param_info()
        return self

    def num_parameters(self, layer: int | None = None) -> int:
        mods = self.modules.values() if layer is None else [self.modules[str(int(layer))]]
        return sum(p.numel() for m in mods for p in m.parameters())

    def with_draft_vocab(self, draft_vocab) -> "ExitHeads":
        """The same heads (shared modules) with another draft vocabulary (None: the whole vocabulary)."""
        heads = {int(k): m for k, m in self.modules.items()}
        return ExitHeads(self.kind, heads, hidden_size=self.hidden_size, arch=self.arch, mlp_width=self.mlp_width,
                         meta=self.meta, draft_vocab=draft_vocab)

    def __repr__(self) -> str:
        vocab = "" if self.draft_vocab is None else f", draft_vocab={len(self.draft_vocab)} tokens"
        return (f"ExitHeads(kind={self.kind!r}, arch={self.arch!r}, layers={list(self.layers)}, "
                f"hidden={self.hidden_size}{vocab})")

    # ------------------------------------------------------------ storage
    @staticmethod
    def _paths(path) -> tuple[Path, Path]:
        path = Path(path)
        if path.suffix == ".safetensors":
            return path, path.with_suffix(".json")
        return path / WEIGHTS_FILE, path / META_FILE

    def save(self, path, dtype: torch.dtype | None = None) -> None:
        """Save to ``path``: a directory (``heads.safetensors`` + ``heads.json`` inside it) or a
        ``*.safetensors`` file (metadata also written beside it as ``*.json``). ``dtype`` stores the weights in
        another dtype (float16 halves the file; loading casts them back to the model's dtype)."""
        from safetensors.torch import save_file

        weights, meta_path = self._paths(path)
        weights.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"{k}.{name}": t.detach().to("cpu", dtype or t.dtype).contiguous()
                   for k, m in self.modules.items() for name, t in m.state_dict().items()}
        if self.draft_vocab is not None:
            tensors["_draft_vocab"] = self.draft_vocab.to("cpu", torch.int32).contiguous()
        meta = dict(self.meta, format_version=FORMAT_VERSION)
        text = json.dumps(meta, indent=2, default=str)
        if not tensors:  # safetensors refuses nothing at all on some versions: keep one marker tensor
            tensors = {"_identity": torch.zeros(1)}
        save_file(tensors, str(weights), metadata={_META_KEY: text})
        meta_path.write_text(text + "\n")

    @classmethod
    def load(cls, path, device=None, dtype=None) -> "ExitHeads":
        """Load heads saved by `save` (directory or ``*.safetensors`` path)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        weights, meta_path = cls._paths(path)
        if not weights.is_file():
            raise FileNotFoundError(f"No exit heads at {path}: {weights} is missing.")
        with safe_open(str(weights), framework="pt") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
        if raw is None and meta_path.is_file():
            raw = meta_path.read_text()
        if raw is None:
            raise ValueError(f"{weights} carries no exit-head metadata (key {_META_KEY!r}).")
        meta = json.loads(raw)
        kind = meta["kind"]
        state = load_file(str(weights))
        vocab = state.pop("_draft_vocab", None)
        vocab = None if vocab is None else vocab.long()
        if kind == "identity":
            return cls("identity", meta=meta, draft_vocab=vocab)
        hidden, arch, width = int(meta["hidden_size"]), meta["arch"], int(meta.get("mlp_width", 0))
        heads = {}
        for layer in meta["layers"]:
            head = make_head(arch, hidden, width)
            prefix = f"{int(layer)}."
            head.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            heads[int(layer)] = head
        out = cls(kind, heads, hidden_size=hidden, arch=arch, mlp_width=width, meta=meta, draft_vocab=vocab)
        out.to(device=device, dtype=dtype or torch.float32)   # stored float16 weights come back as float32
        return out


def identity_heads(draft_vocab=None) -> ExitHeads:
    """The plain early exit: ``apply(layer, h) == h`` for every layer (optionally with a draft vocabulary)."""
    return ExitHeads("identity", draft_vocab=draft_vocab)
