"""The fast execution path of the layer stack (`lede_env.engine.stack` describes the interface): the same
Llama decoder layers as transformers' eager ones with the per-operation overhead taken out, on the kernels
measured fastest on CPU, optionally in bfloat16; batch-invariant with the C++ operations.

What it does differently from `HFLayerStack` ("eager"):
  * a static, preallocated KV cache ``[layers, kv_heads, capacity, head_dim]`` with a length counter per
    layer: appending writes in place, ``crop`` only sets counters (capacity doubles when a sequence outgrows
    it);
  * fused weights: one matmul for q/k/v, one for gate/up (fused copies; the model itself is not changed);
  * RoPE cos/sin read from a table computed once by the model's own rotary embedding, applied to q and k
    together with a sign-folded sine (``x * cos + roll(x) * sin'`` equals ``x * cos + rotate_half(x) * sin``);
  * a fused RMSNorm, no repeated k/v for grouped-query attention, few Python operations per layer;
  * the matrix products on `fast_ops.linear` (kernel "native", the default with the C++ operations: AVX-512
    kernels where the CPU has them, portable loops elsewhere; fp32 inputs, fp32 or bf16 weights;
    batch-invariant by construction). For SmolLM2's 30 layers, 2 threads, fp32: one row
    1.1x as fast as MKL's gemv (eager's kernel), 13 rows 2.0x as fast as MKL's gemm as eager calls it and
    1.4x as fast as oneDNN; bf16 weights: 1.7x and 1.5x as fast as oneDNN's bf16 kernels (no AMX here;
    figures in `csrc/fast_ops.cpp`). Without the C++ operations: `F.linear` in fp32 (MKL), oneDNN with the
    weights reordered once into its blocked layout (`_dnn`) in bf16;
  * its own LM head (`logits`) on the same kernels, for the decoder to call instead of ``model.lm_head``;
  * the glue between the matrix products (RMSNorm, RoPE and cache append, attention, SiLU) in C++ (``ops=
    "native"``, `lede_env.engine.fast_ops`, the default where it builds): one call each instead of some 35
    small torch operations per layer (one SmolLM2 layer at one position: 0.72 -> 0.56 ms in fp32). Its loops
    compute each row from its own inputs and position only, so they are batch-invariant by construction;
    ``ops="torch"`` is the torch-operations version below;
  * an optional compute dtype (bfloat16: weights copied in it; on the native products the hidden states between
    them stay fp32 (`act_dtype`), as do the products' arithmetic; hidden states come in in the model's dtype and
    go out in it, or in fp32 where that is wider (`out_dtype`: a bf16 model on the native products).

Batch invariance (`batch_invariant`). Self-speculative decoding is exact by construction when verifying ``k + 1``
positions computes, for each position, the bits that decoding one position at a time computes. With the C++
operations and their products (``ops="native"``, ``kernel="native"``: the defaults wherever the C++ operations
build, with AVX-512 kernels or the portable loops of any other CPU) every row is computed by the same loops from
its own inputs and position only, so the stack is batch-invariant by construction on any CPU. The torch
operations and oneDNN/MKL kernels are not (their kernels for one row and for several sum in other orders, by
CPU: measured 1e-6 apart on an AMD EPYC); there `batch_invariant` is False and the decoder verifies one
position at a time (`SelfSpeculativeDecoder`), which keeps exactness at the price of the verification's speed.
The prefill (the first run, on an empty cache) is computed once in every decoding of a prompt and uses SDPA.
"""

from __future__ import annotations

from typing import Collection

import torch
import torch.nn.functional as F

from lede_env.engine import fast_ops

BLOCK = 64          # the KV cache's capacity is a multiple of it
PACK_HINT = 16      # batch-size hint of oneDNN's weight reorder (16: fast at 1..13 rows)


def _dnn(w: torch.Tensor):
    """``x @ w.T`` on oneDNN with the weight reordered once into its blocked layout."""
    packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), PACK_HINT)
    op = torch.ops.mkldnn._linear_pointwise
    return (lambda x: op(x, packed, None, "none", [], "")), packed


def mkldnn_available(dtype: torch.dtype) -> bool:
    """Whether oneDNN's prepacked linear runs here for ``dtype`` (CPU builds with oneDNN)."""
    try:
        fn, _ = _dnn(torch.zeros(16, 16, dtype=dtype))
        fn(torch.zeros(2, 16, dtype=dtype))
        return True
    except Exception:  # noqa: BLE001 - any failure means: not usable here
        return False


def _linears(w: torch.Tensor, kernel: str, ops=None):
    """(function for one row, function for several rows, storage to keep alive) computing ``x @ w.T``."""
    w = w.contiguous()
    if kernel == "native":   # fast_ops.linear: batch-invariant by construction, the fastest at every size
        fn = lambda x: ops.linear(x, w)  # noqa: E731
        return fn, fn, [w]
    if kernel == "torch":    # in fp32 one row is MKL's gemv, the eager path's own kernel
        fn = lambda x: F.linear(x, w)  # noqa: E731
        return fn, fn, [w]
    many, packed = _dnn(w)
    one = many if w.dtype != torch.float32 else (lambda x: F.linear(x, w))
    return one, many, [w, packed]


class FastLayerStack:
    """Llama decoder layers over a static KV cache with fused, prepacked weights (module docstring).

    Args:
        model: a ``LlamaForCausalLM`` (never changed; weights are copied, fused and packed).
        dtype: compute dtype of the layers and the LM head (default: the model's).
        kernel: the matrix products: "native" (`fast_ops.linear`, batch-invariant; the default with the C++
            operations; fp32 inputs and hidden states, fp32 or bf16 weights), "mkldnn" (oneDNN; the default
            without them for bf16, with MKL's gemv for one fp32 row) or "torch" (`F.linear`; the default without
            them for fp32).
        ops: the glue between the matrix products: "native" (C++, `fast_ops`; default on CPU in fp32/bf16
            where it builds) or "torch" (torch operations; in fp32 one position bit for bit the eager path's values).
        capacity: initial KV-cache capacity in positions.
        name: the execution path this stack is registered as (`lede_env.engine.stack.STACKS`).
    """

    def __init__(self, model, dtype: torch.dtype | None = None,
                 kernel: str | None = None, capacity: int = 256, name: str = "fast", ops: str | None = None):
        self.name = name
        cfg = model.config
        self.model = model
        self.device = next(model.parameters()).device
        self.io_dtype = next(model.parameters()).dtype
        self.dtype = dtype or self.io_dtype
        self.num_layers = cfg.num_hidden_layers
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.hidden = cfg.hidden_size
        self.intermediate = cfg.intermediate_size
        self.max_positions = cfg.max_position_embeddings
        if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
            raise ValueError("The fast path supports Llama layers without biases; use path='eager'.")
        if cfg.hidden_act != "silu":
            raise ValueError(f"The fast path supports SiLU MLPs, not {cfg.hidden_act!r}; use path='eager'.")
        native_ops = self.device.type == "cpu" and self.dtype in (torch.float32, torch.bfloat16)
        if ops is None:
            ops = "native" if native_ops and fast_ops.available() else "torch"
        if ops not in ("native", "torch"):
            raise ValueError(f"ops must be 'native' or 'torch', got {ops!r}.")
        if ops == "native" and not native_ops:
            raise ValueError("ops='native' (the C++ operations) runs on CPU in float32 or bfloat16; use ops='torch'.")
        self.ops = ops
        self._ops = fast_ops.load(required=True) if ops == "native" else None
        native = self._ops is not None
        if kernel is None:
            if native:
                kernel = "native"
            else:
                dnn = self.device.type == "cpu" and self.dtype != torch.float32 and mkldnn_available(self.dtype)
                kernel = "mkldnn" if dnn else "torch"
        if kernel not in ("native", "mkldnn", "torch"):
            raise ValueError(f"kernel must be 'native', 'mkldnn' or 'torch', got {kernel!r}.")
        if kernel == "native" and not native:
            raise ValueError("kernel='native' (fast_ops.linear) needs ops='native' (the C++ operations); "
                             "use kernel='mkldnn' or 'torch'.")
        self.kernel = kernel
        # dtype of the hidden states between the products: fp32 on the native products (they take bf16
        # weights with fp32 inputs), else the compute dtype
        self.act_dtype = torch.float32 if kernel == "native" else self.dtype
        # dtype of the hidden states `run` hands back: the model's, or the wider activations' (a bf16 model on
        # the native products gets fp32), so that a run split at an exit layer (drafts, then verification)
        # computes the bits of one run: rounding between the two would break exactness
        self.out_dtype = torch.promote_types(self.io_dtype, self.act_dtype)
        # the C++ operations with their products are batch-invariant by construction (module docstring)
        self.batch_invariant = self._ops is not None and kernel == "native"
        self.build = f"native-{self._ops.isa}" if self.batch_invariant else f"{ops}-{kernel}"
        self.scale = self.head_dim ** -0.5
        self.eps = float(model.model.layers[0].input_layernorm.variance_epsilon)
        # dtype of the cache and the scores
        self.att_dtype = torch.float32 if self._ops else self.dtype
        self._storage: list[torch.Tensor] = []   # keeps the (packed) weights alive
        self._layers: list[tuple] = []
        with torch.no_grad():
            cast = lambda t: t.detach().to(self.dtype).contiguous()  # noqa: E731
            cast_act = lambda t: t.detach().to(self.act_dtype).contiguous()  # noqa: E731
            for layer in model.model.layers:
                att, mlp = layer.self_attn, layer.mlp
                fns = [fn for w in (
                    torch.cat([cast(att.q_proj.weight), cast(att.k_proj.weight), cast(att.v_proj.weight)]),
                    cast(att.o_proj.weight),
                    torch.cat([cast(mlp.gate_proj.weight), cast(mlp.up_proj.weight)]),
                    cast(mlp.down_proj.weight)) for fn in self._make_linears(w)]
                # (norm 1, norm 2, qkv, o, gate/up, down) for one row, then the same for several rows
                norms = (cast_act(layer.input_layernorm.weight), cast_act(layer.post_attention_layernorm.weight))
                self._layers.append(((*norms, *fns[0::2]), (*norms, *fns[1::2])))
            self._head = self._make_linears(cast(model.lm_head.weight))
            self._norm = cast_act(model.model.norm.weight)
        self._rotary = model.model.rotary_emb
        if getattr(self._rotary, "rope_type", "default") == "dynamic":
            raise ValueError("Dynamic RoPE rescales with the sequence length; use path='eager'.")
        self.capacity = 0
        self._grow(max(1, min(int(capacity), self.max_positions)))
        self.reset()

    def _make_linears(self, w: torch.Tensor):
        one, many, stored = _linears(w, self.kernel, self._ops)
        self._storage += stored
        return one, many

    # ------------------------------------------------------------------ state
    def _grow(self, need: int) -> None:
        """Room for ``need`` positions: a larger cache (a multiple of `BLOCK`, at least double) and RoPE table.
        Plain tensors even under inference mode, so that runs inside and outside it can both write them."""
        if need <= self.capacity:
            return
        if need > self.max_positions:
            raise ValueError(f"The sequence needs {need} positions but the model's window holds "
                             f"{self.max_positions}.")
        cap = -(-max(need, 2 * self.capacity) // BLOCK) * BLOCK
        shape = (self.num_layers, self.kv_heads, cap, self.head_dim)
        with torch.inference_mode(False), torch.no_grad():
            k = torch.zeros(shape, dtype=self.att_dtype, device=self.device)
            v = torch.zeros(shape, dtype=self.att_dtype, device=self.device)
            if self.capacity:
                k[:, :, :self.capacity] = self.k
                v[:, :, :self.capacity] = self.v
            # cos and sign-folded sin per position, from the model's own rotary embedding (the eager path's
            # values, also for scaled RoPE types whose table does not depend on the sequence length);
            # torch ops: [positions, 1, head_dim] broadcasts over the heads of a [rows, heads, head_dim] tensor
            pos = torch.arange(min(cap, self.max_positions), device=self.device)[None]
            cos, sin = self._rotary(torch.zeros(1, dtype=self.io_dtype, device=self.device), pos)
            half = self.head_dim // 2
            sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)
            if self._ops:   # [positions, head_dim] fp32, read by fast_ops.rope_append
                self.cos, self.sin = cos[0].float().contiguous(), sin.float().contiguous()
            else:
                self.cos = cos[0].to(self.dtype)[:, None].contiguous()
                self.sin = sin.to(self.dtype)[:, None].contiguous()
        self.k, self.v, self.capacity = k, v, cap

    def reset(self) -> None:
        self.len = [0] * self.num_layers

    def lengths(self) -> list[int]:
        return list(self.len)

    def crop(self, length: int) -> None:
        self.len = [min(n, length) for n in self.len]

    # ------------------------------------------------------------------ compute
    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head on ``h`` [..., hidden] in the path's dtype and kernels, returned in the
        model's dtype; batch-invariant when the layers are. ``model.lm_head(model.model.norm(h))`` up to
        rounding; bit for bit for one fp32 row with ``ops="torch"``."""
        shape = h.shape[:-1]
        x = h.to(self.act_dtype).reshape(-1, self.hidden)
        out = self._head[x.shape[0] > 1](self._rms(x, self._norm))
        return out.view(*shape, -1).to(self.io_dtype)

    def set_draft_vocab(self, ids: torch.Tensor) -> None:
        """A small LM head over the token ids ``ids`` (rows of the model's head), for `draft_logits`."""
        with torch.no_grad():
            self._draft_head = self._make_linears(self.model.lm_head.weight[ids].detach().to(self.dtype).contiguous())

    def draft_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and the small head of `set_draft_vocab`: logits over its tokens, in the model's dtype."""
        shape = h.shape[:-1]
        x = h.to(self.act_dtype).reshape(-1, self.hidden)
        out = self._draft_head[x.shape[0] > 1](self._rms(x, self._norm))
        return out.view(*shape, -1).to(self.io_dtype)

    def run(self, h: torch.Tensor, start: int, stop: int, probes: Collection[int] = ()
            ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        q = h.shape[1]
        lens = self.len
        past = lens[start]
        for i in range(start + 1, stop):
            if lens[i] != past:
                raise RuntimeError(f"Layers {start}..{stop - 1} hold caches of different lengths "
                                   f"{lens[start:stop]}: a run must append at one position in every layer.")
        end = past + q
        if end > self.capacity:
            self._grow(end)
        x = h.reshape(q, self.hidden).to(self.act_dtype).contiguous()
        if self._ops:   # the C++ operations read the RoPE tables and attend themselves (SDPA for the prefill)
            layer, attend, ctx, cos, sin = self._layer_native, None, None, self.cos, self.sin
        else:
            layer, cos, sin = self._layer, self.cos[past:end], self.sin[past:end]
            attend, ctx = self._sdpa, self._sdpa_context(past, q)
        out: dict[int, torch.Tensor] = {}
        # one position and the prefill on the one-row kernels (in fp32: eager's own, MKL), several positions
        # after the prefill on the many-row kernels (oneDNN)
        many = int(q > 1 and past > 0)
        layers, ks, vs = self._layers, self.k, self.v
        for i in range(start, stop):
            x = layer(layers[i][many], ks[i], vs[i], x, past, end, cos, sin, attend, ctx)
            lens[i] = end
            if i + 1 in probes:
                out[i + 1] = x.view(1, q, self.hidden).to(self.out_dtype)
        return x.view(1, q, self.hidden).to(self.out_dtype), out

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # fused; in fp32 the same values as transformers' LlamaRMSNorm, in bf16 one rounding instead of two
        if self._ops:
            return self._ops.rms_norm(x.contiguous(), w, self.eps)
        return F.rms_norm(x, (self.hidden,), w, self.eps)

    def _layer(self, weights, kc, vc, x, past, end, cos, sin, attend, ctx) -> torch.Tensor:
        ln1, ln2, qkv_proj, o_proj, gu_proj, down_proj = weights
        H, KV, D, I = self.heads, self.kv_heads, self.head_dim, self.intermediate
        rows = x.shape[0]
        qkv = qkv_proj(self._rms(x, ln1)).view(rows, H + 2 * KV, D)
        qk = qkv[:, :H + KV]
        qk = qk * cos + qk.roll(D // 2, -1) * sin                  # RoPE on q and k at once
        kc[:, past:end].copy_(qk[:, H:].transpose(0, 1))
        vc[:, past:end].copy_(qkv[:, H + KV:].transpose(0, 1))
        x = x + o_proj(attend(qk[:, :H], kc, vc, end, ctx))
        gu = gu_proj(self._rms(x, ln2))
        return x + down_proj(F.silu(gu[:, :I]) * gu[:, I:])

    def _layer_native(self, weights, kc, vc, x, past, end, cos, sin, attend, ctx) -> torch.Tensor:
        """`_layer` with the glue between the matrix products in the C++ operations (`fast_ops`): row by row,
        so batch-invariant by construction; the prefill's attention runs on SDPA (computed once per prompt)."""
        ln1, ln2, qkv_proj, o_proj, gu_proj, down_proj = weights
        ops = self._ops
        q = ops.rope_append(qkv_proj(ops.rms_norm(x, ln1, self.eps)), kc, vc, past, cos, sin,
                            self.heads, self.kv_heads)
        if past == 0 and q.shape[0] > 1:
            att = self._sdpa(q, kc, vc, end, (None, True))
        else:
            att = ops.attention(q, kc, vc, past, self.scale, self.act_dtype)
        x, a = ops.add_rms_norm(x, o_proj(att), ln2, self.eps)
        return x + down_proj(ops.silu_mul(gu_proj(a)))

    # ---------------------------------------------------------------- attention
    def _sdpa_context(self, past: int, q: int):
        if q == 1:
            return None, False
        if past == 0:
            return None, True
        # SDPA's is_causal aligns top-left: give the mask explicitly
        return torch.ones(q, past + q, dtype=torch.bool, device=self.device).tril(past), False

    def _sdpa(self, qh, kc, vc, end, ctx) -> torch.Tensor:
        mask, causal = ctx
        rows = qh.shape[0]
        att = F.scaled_dot_product_attention(
            qh.transpose(0, 1)[None].to(self.att_dtype), kc[None, :, :end], vc[None, :, :end], attn_mask=mask,
            is_causal=causal, scale=self.scale, enable_gqa=True)
        return att[0].transpose(0, 1).reshape(rows, self.heads * self.head_dim).to(self.act_dtype)
