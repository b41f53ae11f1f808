"""Self-speculative decoding over one sequence: draft with the first L layers, verify with the full model,
accept, commit, crop. One step is three public phases, `SelfSpeculativeDecoder.draft`, `verify` and `commit`,
composed by `step`, each read top to bottom.

State between steps (DESIGN.md section 1): committed tokens ``x_1..x_n``; one KV cache holding every layer
for ``x_1..x_{n-1}``; the *pending* token ``x_n`` (chosen by the full model, not yet processed by any layer).

A step with action ``(L, k)``:
  1. draft:  feed ``x_n, d_1, .., d_{k-1}`` through layers ``0..L-1`` (+ exit head, final norm, LM head),
             one token at a time, appending to those layers' cache; this yields ``d_1..d_k``.
  2. verify: layers ``0..L-1`` already hold ``x_n, d_1..d_{k-1}``, so they process only ``d_k``; layers
             ``L..N-1`` then process all ``k + 1`` positions from the saved layer-L hidden states (one position
             at a time on a layer stack that is not batch-invariant, so that exactness holds on every path).
  3. accept: greedy: the longest prefix with ``d_i == argmax p_full``; sampling: the speculative-sampling
             rule, whose output distribution is exactly the full model's.
  4. commit: accepted drafts plus one full-model token (correction or bonus) are produced; every layer's
             cache is cropped to the committed length minus one.
``k == 0`` is a plain autoregressive step. The engine drafts the full (budget-clipped) ``k``, also past an EOS
draft, unless a stop rule (`lede_env.engine.stop_rules`) stops it on the draft's confidence: without one the work
of a step is a function of the committed prefix, which replay relies on; with one, replay knows it up to the first
rejected draft (`lede_env.traces.Trace.drafted_under`).

The engine knows nothing of RL: the environment turns `StepResult` into observations and rewards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from lede_env.engine.limits import max_draft_length
from lede_env.engine.sampling import SamplingConfig  # noqa: F401  (part of the decoder's API)
from lede_env.engine.stop_rules import StopRule, parse_stop_rule
from lede_env.engine.stack import make_stack


class HeadsLike(Protocol):
    """``apply(layer, h, context=None)``; heads whose ``uses_context`` is true get, for the first draft of a step,
    ``context``: the full model's last verified pre-norm feature (`SelfSpeculativeDecoder.context`)."""

    def apply(self, layer: int, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor: ...


class _IdentityHeads:
    kind = "identity"
    uses_context = False

    def apply(self, layer: int, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return h


@dataclass(frozen=True, eq=False)
class Draft:
    """What `SelfSpeculativeDecoder.draft` did: the draft tokens and, per pass, the layer-L state, the probe
    layers' states and the draft's logits (inputs ``x_n, d_1..d_{k-1}``)."""

    exit_layer: int
    k_requested: int
    tokens: list[int]
    hidden: list[torch.Tensor]
    probes: list[dict[int, torch.Tensor]]
    logits: list[torch.Tensor]
    time: float
    committed: int = -1     # committed tokens when it was drafted (the decoder's state it belongs to)


@dataclass(frozen=True, eq=False)
class Verification:
    """What `SelfSpeculativeDecoder.verify` computed: final hidden states [1, k+1, hidden], per position the probe
    layers' states, the full model's logits [k+1, V]."""

    hidden: torch.Tensor
    probes: list[dict[int, torch.Tensor]]
    logits: torch.Tensor
    time: float


@dataclass(frozen=True)
class ExitReadings:
    """Per exit layer, what a draft from the pending token would read: argmax, max probability, entropy."""

    tokens: list[int]
    maxprob: list[float]
    entropy: list[float]


@dataclass(frozen=True)
class StepResult:
    """One step's outcome. Per-position quantities cover only the committed prefix of the step (the
    verified positions ``0..accepted``), so a trace reproduces them exactly."""

    exit_layer: int
    k_requested: int
    drafted: int
    accepted: int
    tokens: tuple[int, ...]           # produced: accepted drafts, then the correction or bonus token
    draft_time: float                 # seconds spent drafting
    verify_time: float                # seconds spent verifying, accepting and committing
    full_maxprob: tuple[float, ...]   # full model's max probability at verified positions 0..produced-1
    full_entropy: tuple[float, ...]   # full model's entropy (nats) at the same positions
    draft_maxprob: tuple[float, ...]  # draft's max probability of d_1..d_{min(accepted+1, drafted)}
    probe_cos: tuple[float, ...]      # cos(h_l, h_N) at the last committed verified position, l in probes
    finished: bool                    # EOS produced or max_new_tokens reached
    truncated: bool                   # the context window is full

    @property
    def produced(self) -> int:
        return len(self.tokens)

    @property
    def time(self) -> float:
        return self.draft_time + self.verify_time


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def confidence(logits: torch.Tensor, entropy: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """argmax, max probability and entropy (nats; None unless ``entropy``) of logits [..., V], in float32.
    Drafts skip the entropy: it needs ``exp`` over the whole row, which is slow on the -1e4 entries a draft
    vocabulary leaves (about 0.3 ms per row on CPU)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    maxlogp, arg = logp.max(dim=-1)
    ent = -(logp.exp() * logp).sum(dim=-1) if entropy else None
    return arg, maxlogp.exp(), ent


class SelfSpeculativeDecoder:
    """Exact self-speculative decoding of one sequence with a Hugging Face Llama model.

    Args:
        model: a ``LlamaForCausalLM`` (eval mode; its weights are never changed).
        exit_heads: object with ``apply(layer, h)`` mapping ``h_L`` before the final norm (default identity:
            the plain LayerSkip early exit).
        eos_token_id: token (or tokens) that end a generation.
        probe_layers: layers whose hidden state's cosine similarity to the final one is reported per step.
        sampling: `SamplingConfig`; greedy by default.
        max_context: context window in tokens (default: the model's ``max_position_embeddings``).
        path: execution path of the layer stack (`lede_env.engine.stack`): "auto" (default: the fastest path
            validated for the model's device and dtype), "eager" (transformers' own layers), "fast",
            "fast-bf16". Exact on every path: on a stack that is not batch-invariant (`stack.batch_invariant`),
            verification runs one position at a time.
    """

    def __init__(self, model, exit_heads: HeadsLike | None = None, eos_token_id: int | Sequence[int] | None = None,
                 probe_layers: Sequence[int] = (), sampling: SamplingConfig | None = None,
                 max_context: int | None = None, path: str = "auto"):
        self.model = model
        self.stack = make_stack(model, path)
        self.path = self.stack.name   # the resolved path ("auto" becomes "fast" or "eager")
        self.layers = model.model.layers
        self.num_layers = len(self.layers)
        self.heads = exit_heads if exit_heads is not None else _IdentityHeads()
        self.uses_context = bool(getattr(self.heads, "uses_context", False))
        self.context: torch.Tensor | None = None   # h_N [1, hidden] (pre-norm) of the input before the pending token
        self.device = next(model.parameters()).device
        # Draft vocabulary (optional, carried by the exit heads): drafts are read from these tokens only, with
        # a small LM head; the full head still verifies, so only the drafts (and their cost) change.
        vocab = getattr(self.heads, "draft_vocab", None)
        self.draft_vocab = None if vocab is None else torch.as_tensor(vocab, dtype=torch.long, device=self.device)
        if self.draft_vocab is not None:
            V = model.config.vocab_size
            if self.draft_vocab.ndim != 1 or len(self.draft_vocab) == 0 or \
                    int(self.draft_vocab.min()) < 0 or int(self.draft_vocab.max()) >= V:
                raise ValueError(f"The exit heads' draft vocabulary must be a non-empty list of token ids in "
                                 f"0..{V - 1} (this model's vocabulary); refit the heads for this model.")
            self.stack.set_draft_vocab(self.draft_vocab)
        eos = eos_token_id if eos_token_id is not None else model.config.eos_token_id
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        for layer in probe_layers:
            self._check_layer(layer, "probe layer")
        self.probe_layers = tuple(int(x) for x in probe_layers)
        self.sampling = sampling or SamplingConfig()
        limit = model.config.max_position_embeddings
        self.max_context = int(max_context or limit)
        if not 2 <= self.max_context <= limit:
            raise ValueError(f"max_context must be in 2..{limit} (the model's window), got {max_context}.")
        self._gen = torch.Generator(device=self.device).manual_seed(self.sampling.seed)
        self.tokens: list[int] = []
        self.prompt_len = 0
        self.max_new_tokens = 0
        self.done = True

    # ------------------------------------------------------------------ public API
    @property
    def generated(self) -> list[int]:
        """Generated tokens so far (the pending one included)."""
        return self.tokens[self.prompt_len:]

    def start(self, prompt_ids: Sequence[int], max_new_tokens: int, seed: int | None = None) -> float:
        """Prefill the prompt; the full model's first token becomes the pending token. Returns seconds.
        ``seed`` reseeds the sampler (sampling only); otherwise its stream continues."""
        prompt_ids = [int(t) for t in prompt_ids]
        if not prompt_ids:
            raise ValueError("The prompt is empty: give at least one token.")
        if len(prompt_ids) >= self.max_context:
            raise ValueError(f"The prompt has {len(prompt_ids)} tokens but the context window holds "
                             f"{self.max_context}, and at least one position must stay free for generation. "
                             "Shorten the prompt or raise max_context.")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        self.stack.reset()
        if seed is not None:
            self._gen.manual_seed(int(seed))
        _sync(self.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            x = torch.tensor([prompt_ids], device=self.device)
            h = self.stack.run(self.model.model.embed_tokens(x), 0, self.num_layers)[0]
            logits = self.logits(h[:, -1])
            first = int(self.pick(logits)[0])
            self.context = h[:, -1].clone()
        _sync(self.device)
        self.tokens = prompt_ids + [first]
        self.prompt_len = len(prompt_ids)
        self.max_new_tokens = int(max_new_tokens)
        self.done = first in self.eos_ids or max_new_tokens == 1 or len(self.tokens) >= self.max_context
        return time.perf_counter() - t0

    def max_k(self) -> int:
        """Largest speculation length the budget and the context allow now."""
        return max_draft_length(self.max_new_tokens - len(self.generated), self.max_context - len(self.tokens))

    def step(self, exit_layer: int, k: int, stop: StopRule | str | None = None) -> StepResult:
        """One self-speculative step with exit layer ``exit_layer`` and speculation length ``k`` (with a stop rule
        ``stop``: the cap): `draft`, then `verify`, then `commit`."""
        draft = self.draft(exit_layer, k, stop)
        return self.commit(draft, self.verify(draft))

    def draft(self, exit_layer: int, k: int, stop: StopRule | str | None = None) -> Draft:
        """Phase 1: ``min(k, max_k())`` draft tokens from layers ``0..L-1`` (+ exit head, final norm, LM head), one
        at a time, appending to those layers' cache and keeping each pass's layer-L state for `verify`.
        ``stop`` (`lede_env.engine.stop_rules`, e.g. ``"p<0.6"``): stop after the first token whose confidence
        (`draft_confidence`) meets the rule, ``k`` being the cap."""
        self._check_layer(exit_layer, "exit layer")
        if k < 0:
            raise ValueError(f"Speculation length k must be >= 0 (0 = plain autoregressive step), got {k}.")
        if self.done:
            raise RuntimeError("The generation is finished; call start() with a new prompt.")
        L = int(exit_layer)
        k_eff = min(int(k), self.max_k())
        rule = None if stop is None else parse_stop_rule(stop)
        rule = None if rule is None or rule.kind == "none" else rule
        product = 1.0
        _sync(self.device)
        t0 = time.perf_counter()
        tokens: list[int] = []
        hidden: list[torch.Tensor] = []   # h_L of inputs x_n, d_1..d_{k-1}
        probes: list[dict[int, torch.Tensor]] = []
        logits: list[torch.Tensor] = []
        token = self.tokens[-1]
        with torch.inference_mode():
            for i in range(k_eff):
                h, p = self.stack.run(self.embed(token), 0, L, self.probe_layers)
                hidden.append(h)
                probes.append(p)
                row = self.draft_logits(self.exit_head(L, h[:, -1], first=i == 0))
                logits.append(row[0])
                token = int(self.pick(row)[0])
                tokens.append(token)
                if rule is not None:
                    maxp, ent = self.draft_confidence(row, rule.needs_entropy)
                    product *= maxp
                    if rule.stops(maxp, ent, product):
                        break
        _sync(self.device)
        return Draft(L, int(k), tokens, hidden, probes, logits, time.perf_counter() - t0, committed=len(self.tokens))

    def verify(self, draft: Draft, extra_probes: Sequence[int] = ()) -> Verification:
        """Phase 2: the full model over ``[x_n, d_1..d_k]``. Layers ``0..L-1`` already hold ``x_n, d_1..d_{k-1}``
        from drafting, so they process only ``d_k``; layers ``L..N-1`` process all ``k + 1`` positions from the
        saved layer-L states (one position at a time on a stack that is not batch-invariant, so that each
        position gets the bits of plain decoding). ``extra_probes``: more layers whose hidden states to keep."""
        self._check_current(draft)
        L, N, k = draft.exit_layer, self.num_layers, len(draft.tokens)
        for layer in extra_probes:
            self._check_layer(layer, "probe layer")
            if k > 0 and int(layer) <= L:
                raise ValueError(f"Extra probe layer {layer} is at or below the draft's exit layer {L}: the drafts did "
                                 "not keep it. Ask for it in the decoder's probe_layers, or verify a k = 0 step.")
        probe_set = tuple(sorted(set(self.probe_layers) | {int(x) for x in extra_probes}))
        _sync(self.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            if k == 0:
                h_final, p = self.stack.run(self.embed(self.tokens[-1]), 0, N, probe_set)
                probe_rows = [p]
            else:
                h_last, p_last = self.stack.run(self.embed(draft.tokens[-1]), 0, L, probe_set)
                h_final, uppers = self.run_positions(torch.cat(draft.hidden + [h_last], dim=1), L, N, probe_set)
                probe_rows = [{**p, **u} for p, u in zip(draft.probes + [p_last], uppers)]
            full_logits = self.verify_logits(h_final[0])                              # [k+1, V]
        _sync(self.device)
        return Verification(h_final, probe_rows, full_logits, time.perf_counter() - t0)

    def commit(self, draft: Draft, verification: Verification) -> StepResult:
        """Phases 3 and 4: accept the longest agreeing prefix (greedy) or by the speculative-sampling rule, cut at
        EOS, append the produced tokens and crop every layer's cache to the committed length minus one; the
        step's features come from the committed prefix only."""
        self._check_current(draft)
        drafts, k, full_logits = draft.tokens, len(draft.tokens), verification.logits
        t0 = time.perf_counter()
        with torch.inference_mode():
            if self.sampling.greedy:
                targets = full_logits.argmax(dim=-1).tolist()
                m = 0
                while m < k and drafts[m] == targets[m]:
                    m += 1
                produced = drafts[:m] + [targets[m]]
            else:
                m, last_token = self._accept_sampled(drafts, draft.logits, full_logits)
                produced = drafts[:m] + [last_token]
            for i, tok in enumerate(produced):
                if tok in self.eos_ids:
                    produced = produced[: i + 1]
                    break
            accepted = min(m, len(produced))
            self.tokens.extend(produced)
            self.stack.crop(len(self.tokens) - 1)
            self.context = verification.hidden[0, len(produced) - 1:len(produced)].clone()

            # Features on the committed prefix: verified positions 0..last (last produced the final
            # token; last == m unless an EOS cut the step short) and drafts d_1..d_{last+1}.
            last = len(produced) - 1
            _, maxp, ent = confidence(full_logits[: last + 1])
            d_conf = [float(confidence(dl, entropy=False)[1]) for dl in draft.logits[: min(last + 1, k)]]
            h_ref = verification.hidden[0, last].float()
            probe_cos = tuple(float(torch.nn.functional.cosine_similarity(
                verification.probes[last][l][0, -1].float(), h_ref, dim=0)) for l in self.probe_layers)
        _sync(self.device)
        t1 = time.perf_counter()

        hit_eos = produced[-1] in self.eos_ids
        finished = hit_eos or len(self.generated) >= self.max_new_tokens
        truncated = not finished and len(self.tokens) >= self.max_context
        self.done = finished or truncated
        return StepResult(
            exit_layer=draft.exit_layer, k_requested=draft.k_requested, drafted=k, accepted=accepted,
            tokens=tuple(produced), draft_time=draft.time, verify_time=verification.time + (t1 - t0),
            full_maxprob=tuple(maxp.tolist()), full_entropy=tuple(ent.tolist()), draft_maxprob=tuple(d_conf),
            probe_cos=probe_cos, finished=finished, truncated=truncated)

    def run_positions(self, h: torch.Tensor, start: int, stop: int, probes: Sequence[int] = ()
                      ) -> tuple[torch.Tensor, list[dict[int, torch.Tensor]]]:
        """Layers ``start..stop-1`` over the q positions of ``h`` [1, q, hidden] as verification runs them: in one
        run on a batch-invariant stack, else one position at a time (each then gets plain decoding's bits).
        Returns the output and, per position, the probe layers' states."""
        q = h.shape[1]
        if self.stack.batch_invariant:
            out, upper = self.stack.run(h, start, stop, probes)
            return out, [{l: v[:, i:i + 1] for l, v in upper.items()} for i in range(q)]
        runs = [self.stack.run(h[:, i:i + 1], start, stop, probes) for i in range(q)]
        return torch.cat([o for o, _ in runs], dim=1), [p for _, p in runs]

    def verify_logits(self, rows: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head over verified rows [q, hidden], as `run_positions` runs the layers."""
        if self.stack.batch_invariant:
            return self.logits(rows)
        return torch.cat([self.logits(rows[i:i + 1]) for i in range(rows.shape[0])])

    def _check_current(self, draft: Draft) -> None:
        if draft.committed != len(self.tokens) or self.done:
            raise RuntimeError("This draft belongs to an earlier state of the decoder (a step was committed since, "
                               "or a new generation started): draft again.")

    def rollback(self) -> None:
        """Drop what a `draft` or `verify` not followed by `commit` appended to the cache (profiling)."""
        self.stack.crop(len(self.tokens) - 1)

    def draft_confidence(self, row: torch.Tensor, entropy: bool) -> tuple[float, float]:
        """The draft's max probability and (when ``entropy``; else 0.0) entropy in nats, from one draft logits row
        [1, V]: what stop rules read while drafting and what a trace records, the same function on the same row."""
        _, maxp, ent = confidence(row, entropy=entropy)
        return float(maxp[0]), (float(ent[0]) if entropy else 0.0)

    def step_with_exits(self, exit_layers: Sequence[int]) -> tuple[StepResult, ExitReadings, ExitReadings | None]:
        """A plain autoregressive step that also reads the early exit of every layer in ``exit_layers`` at the
        pending token: returns the step, the readings of a draft after the first (`ExitReadings`) and, for heads
        that use the verified feature (``uses_context``), those of a step's first draft (else None). Used to record
        traces. Each exit is computed exactly as a draft computes it: one row at a time, `exit_head`,
        `draft_logits`, `pick` and `draft_confidence`, so replay reads the same bits as live."""
        draft = self.draft(int(exit_layers[0]), 0)
        context = self.context
        verification = self.verify(draft, extra_probes=exit_layers)
        result = self.commit(draft, verification)
        captured = verification.probes[0]
        readings = []
        with torch.inference_mode():
            for first in ((False, True) if self.uses_context else (False,)):
                out = ExitReadings([], [], [])
                for L in exit_layers:
                    row = self.draft_logits(self.exit_head(L, captured[L][:, -1], first, context))
                    p, e = self.draft_confidence(row, True)
                    out.tokens.append(int(self.pick(row)[0]))
                    out.maxprob.append(p)
                    out.entropy.append(e)
                readings.append(out)
        return result, readings[0], (readings[1] if self.uses_context else None)

    def exit_head(self, layer: int, h: torch.Tensor, first: bool, context: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """The exit head over ``h_L`` [1, hidden]; the first draft of a step (``first``) of heads that use it also
        reads the verified feature (``context``, default: the decoder's current `context`)."""
        if first and self.uses_context:
            return self.heads.apply(layer, h, self.context if context is None else context)
        return self.heads.apply(layer, h)

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int,
                 actions: Sequence[tuple[int, int]] | None = None, exit_layer: int = 1, k: int = 0
                 ) -> tuple[list[int], list[StepResult]]:
        """Decode to the end. ``actions`` cycles through a sequence of (L, k); else the static (exit_layer, k)."""
        self.start(prompt_ids, max_new_tokens)
        results = []
        i = 0
        while not self.done:
            L, kk = actions[i % len(actions)] if actions else (exit_layer, k)
            results.append(self.step(L, kk))
            i += 1
        return list(self.generated), results

    def cache_lengths(self) -> list[int]:
        """Per-layer KV-cache length (for the invariant: committed length minus one)."""
        return self.stack.lengths()

    def embed(self, token: int) -> torch.Tensor:
        """The embedding [1, 1, hidden] of one token."""
        return self.model.model.embed_tokens(torch.tensor([[token]], device=self.device))

    # ------------------------------------------------------------------ internals
    def _check_layer(self, layer: int, what: str) -> None:
        if not isinstance(layer, (int,)) and not hasattr(layer, "__index__"):
            raise ValueError(f"The {what} must be an integer, got {layer!r}.")
        if not 1 <= int(layer) <= self.num_layers - 1:
            raise ValueError(f"The {what} {layer} is out of range: this model has {self.num_layers} layers, so "
                             f"exits run from 1 to {self.num_layers - 1} (use k=0 for a full-model step).")

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head, on the execution path's own kernels (the same function on every path)."""
        return self.stack.logits(h)

    def draft_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits of a draft from ``head(h_L)`` [rows, hidden]: the full LM head, or with a draft vocabulary
        the small head over its tokens, scattered into a full-width row (other tokens get -1e4: probability 0)."""
        if self.draft_vocab is None:
            return self.logits(h)
        sub = self.stack.draft_logits(h)
        out = torch.full((*sub.shape[:-1], self.model.config.vocab_size), -1e4, dtype=sub.dtype, device=sub.device)
        return out.index_copy_(-1, self.draft_vocab, sub)

    def _warp(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities after temperature and top-p."""
        probs = torch.softmax(logits.float() / self.sampling.temperature, dim=-1)
        if self.sampling.top_p < 1.0:
            sorted_p, idx = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(dim=-1) - sorted_p < self.sampling.top_p
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
            probs = probs / probs.sum(dim=-1, keepdim=True)
        return probs

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        if self.sampling.greedy:
            return logits.argmax(dim=-1)
        return torch.multinomial(self._warp(logits), 1, generator=self._gen).squeeze(-1)

    def _accept_sampled(self, drafts: list[int], draft_logits: list[torch.Tensor], full_logits: torch.Tensor
                        ) -> tuple[int, int]:
        """Speculative sampling: accept d_i with prob min(1, p/q); on rejection sample norm(max(0, p - q));
        if all are accepted sample the bonus from p. Returns (accepted count, final token)."""
        p = self._warp(full_logits)
        for i, d in enumerate(drafts):
            q = self._warp(draft_logits[i])
            u = torch.rand((), generator=self._gen, device=self.device)
            if u * q[d] <= p[i, d]:
                continue
            residual = torch.clamp(p[i] - q, min=0)
            total = residual.sum()
            residual = residual / total if total > 0 else p[i]
            return i, int(torch.multinomial(residual, 1, generator=self._gen))
        return len(drafts), int(torch.multinomial(p[len(drafts)], 1, generator=self._gen))
