"""Traces: one prompt's greedy continuation recorded once with the real model, enough to replay the
outcome of *any* sequence of (exit layer, speculation length) actions without the model.

Positions. The continuation is ``g_0 .. g_{T-1}``: ``g_0`` is the token chosen by the prefill, ``g_{T-1}``
is EOS or the last token the ``max_new_tokens`` budget allows. When a step starts, ``g_0..g_t`` are
committed and ``g_t`` is the *pending* token (no layer has processed it yet). Row ``t`` of every
per-position array describes the forward pass whose input is ``g_t`` (it predicts ``g_{t+1}``), so arrays
have ``T - 1`` rows.

Exactness argument (DESIGN.md section 2): under greedy decoding, drafting at exit ``L`` from pending
``g_t`` proposes ``d_1 = draft_tokens[t, L]``; while ``d_i == g_{t+i}`` the draft's prefix equals the greedy
prefix, so ``d_{i+1} = draft_tokens[t+i, L]``. Drafts past the first mismatch are rejected whatever they
are, and the engine drafts the full (budget-clipped) ``k`` unless a stop rule stops it, so the accepted
count and the tokens produced are known from the trace, and so is the work done without a stop rule (with one,
see `Trace.drafted_under`).

Heads that give a step's first draft the full model's last verified feature (``eagle``, `lede_env.engine.heads`)
draft it differently from the rest: the ``first_*`` arrays hold that first draft from pending ``g_t`` (its input, the
feature of ``g_{t-1}``, is on the greedy path too); drafts ``d_2, d_3, ..`` read ``draft_*`` rows ``t+1, t+2, ..``.
Without them (every other kind) the first draft is ``draft_*`` row ``t``.

This module is pure numpy: the replay backend, the oracle and the agents use it without a model.
"""

from __future__ import annotations

import json
import os
import pickle
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lede_env.engine.limits import max_draft_length
from lede_env.engine.stop_rules import StopRule, draft_length

TRACE_FORMAT_VERSION = 3
READABLE_FORMATS = (1, 2, 3)   # format 1 has no draft_entropy (read as NaN: entropy stop rules refuse it); format 3
                               # may carry first_* arrays (heads that read the verified feature)
_ARRAYS = ("prompt_ids", "tokens", "draft_tokens", "draft_maxprob", "full_maxprob", "full_entropy", "probe_cos")
_OPTIONAL = ("draft_entropy", "first_tokens", "first_maxprob", "first_entropy")
_META_KEYS = ("exit_layers", "probe_layers", "max_new_tokens")


class TraceFileError(ValueError):
    """A file that `TraceSet.load` cannot read as a LEDE trace file (corrupt, truncated, foreign, empty)."""


@dataclass(frozen=True)
class StepOutcome:
    """What one step does on a trace: drafted tokens, accepted drafts and tokens produced."""

    drafted: int
    accepted: int
    produced: int
    finished: bool


@dataclass(frozen=True, eq=False)
class Trace:
    """One prompt's recorded greedy continuation and per-position, per-exit-layer quantities.

    Arrays (``T`` continuation tokens, ``J`` candidate exit layers, ``P`` probe layers):
      tokens        int64 [T]        greedy continuation g_0..g_{T-1}
      draft_tokens  int64 [T-1, J]   early-exit argmax at layer exit_layers[j] from input g_t
      draft_maxprob f32   [T-1, J]   that prediction's max probability
      draft_entropy f32   [T-1, J]   its entropy (nats); NaN in traces of format 1, which did not record it
      first_tokens, first_maxprob, first_entropy  [T-1, J]  the same for the first draft of a step from pending g_t
                                     when the heads read the verified feature; None otherwise (= the draft_* arrays)
      full_maxprob  f32   [T-1]      full model's max probability from input g_t
      full_entropy  f32   [T-1]      full model's entropy (nats) from input g_t
      probe_cos     f32   [T-1, P]   cosine(h_l, h_N) at input g_t for l in probe_layers
    Scalars: ``prompt_ids`` (the tokens fed, after any chat template), ``eos`` (whether g_{T-1} is EOS),
    ``max_new_tokens`` and ``max_context`` (the limits the recording ran under).
    """

    prompt_index: int
    prompt_ids: np.ndarray
    tokens: np.ndarray
    exit_layers: tuple[int, ...]
    probe_layers: tuple[int, ...]
    draft_tokens: np.ndarray
    draft_maxprob: np.ndarray
    full_maxprob: np.ndarray
    full_entropy: np.ndarray
    probe_cos: np.ndarray
    eos: bool
    max_new_tokens: int
    max_context: int
    meta: dict = field(default_factory=dict)
    draft_entropy: np.ndarray | None = None
    first_tokens: np.ndarray | None = None
    first_maxprob: np.ndarray | None = None
    first_entropy: np.ndarray | None = None

    def __post_init__(self) -> None:
        T, J, P = len(self.tokens), len(self.exit_layers), len(self.probe_layers)
        if T < 1:
            raise ValueError("A trace needs at least one generated token.")
        if self.draft_entropy is None:
            object.__setattr__(self, "draft_entropy", np.full((T - 1, J), np.nan, dtype=np.float32))
        firsts = [getattr(self, f"first_{n}") is None for n in ("tokens", "maxprob", "entropy")]
        if any(firsts) and not all(firsts):
            raise ValueError("A trace carries all three first_* arrays (first_tokens, first_maxprob, first_entropy) "
                             "or none.")
        shapes = {"draft_tokens": (T - 1, J), "draft_maxprob": (T - 1, J), "draft_entropy": (T - 1, J),
                  "full_maxprob": (T - 1,),
                  "full_entropy": (T - 1,), "probe_cos": (T - 1, P)}
        if not all(firsts):
            shapes.update(first_tokens=(T - 1, J), first_maxprob=(T - 1, J), first_entropy=(T - 1, J))
        for name, shape in shapes.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"Trace field {name} has shape {getattr(self, name).shape}, expected {shape}.")
        agree = self.draft_tokens == self.tokens[1:, None]
        object.__setattr__(self, "agree", agree)
        run = _run_lengths(agree)
        if self.has_first:
            first_agree = self.first_tokens == self.tokens[1:, None]
            later = np.vstack([run[1:], np.zeros((1, J), dtype=run.dtype)])   # the run of drafts from row t+1
            run = np.where(first_agree, 1 + later, 0)
        else:
            first_agree = agree
        object.__setattr__(self, "first_agree", first_agree)
        object.__setattr__(self, "run_length", run)

    @property
    def has_first(self) -> bool:
        """Whether a step's first draft is recorded apart (heads that read the verified feature)."""
        return self.first_tokens is not None

    def step_maxprob(self) -> np.ndarray:
        """``first_maxprob`` when recorded apart, else ``draft_maxprob``: row t is the first draft from pending g_t."""
        return self.first_maxprob if self.has_first else self.draft_maxprob

    def step_entropy(self) -> np.ndarray:
        """``first_entropy`` when recorded apart, else ``draft_entropy`` (see `step_maxprob`)."""
        return self.first_entropy if self.has_first else self.draft_entropy

    @property
    def length(self) -> int:
        """Number of generated tokens T."""
        return len(self.tokens)

    def layer_index(self, exit_layer: int) -> int:
        """Column of ``exit_layer`` in the per-layer arrays."""
        try:
            return self.exit_layers.index(int(exit_layer))
        except ValueError:
            raise ValueError(f"Exit layer {exit_layer} was not recorded in this trace; recorded exits: "
                             f"{list(self.exit_layers)}. Re-record with `lede trace --exit-layers ...`.") from None

    def max_draft(self, t: int) -> int:
        """Largest k the engine allows with pending g_t: the step may produce at most the tokens the
        ``max_new_tokens`` budget and the context window have left."""
        return max_draft_length(self.max_new_tokens - (t + 1), self.max_context - (len(self.prompt_ids) + t + 1))

    @property
    def has_entropy(self) -> bool:
        """Whether the draft entropies were recorded (format 2 and later)."""
        return not bool(np.isnan(self.draft_entropy).any()) if self.draft_entropy.size else True

    def outcome(self, t: int, j: int, k: int, stop: StopRule | None = None) -> StepOutcome:
        """Replay one greedy step from pending g_t with exit column j and requested length k (with a stop rule:
        the cap; `drafted_under`)."""
        if not 0 <= t < self.length - 1:
            raise ValueError(f"No step starts at position {t}: the trace has {self.length} tokens.")
        drafted = min(int(k), self.max_draft(t))
        if stop is not None and stop.kind != "none" and drafted > 1:
            drafted = self.drafted_under(stop, t, j, drafted)
        accepted = min(int(self.run_length[t, j]), drafted) if drafted > 0 else 0
        last = self.length - 1
        if t + accepted >= last:  # the drafts reached the final token (EOS): no bonus token after it
            return StepOutcome(drafted, last - t, last - t, True)
        produced = accepted + 1
        return StepOutcome(drafted, accepted, produced, t + produced >= last)

    def drafted_under(self, stop: StopRule, t: int, j: int, cap: int) -> int:
        """Tokens drafted from pending g_t at exit column j under ``stop`` with cap ``cap``.

        Along the accepted drafts and the first rejected one, the draft's inputs are the greedy prefix, so the
        recorded confidences at rows ``t, t+1, ..`` are the draft's own and the decision is exact. Past the first
        rejected draft the trace cannot know the draft's confidence (its input is no longer the greedy prefix):
        the replay then reads the confidences recorded along the greedy path at the same rows, as a proxy. After the
        trace's final token (drafts that ran through EOS) there is no recorded row: the replay does not stop there.
        Only the drafted count (and so the cost, and what is computed from it) can differ from live in these two
        cases: the accepted count and the tokens produced do not depend on it."""
        if stop.needs_entropy and not self.has_entropy:
            raise ValueError(f"The stop rule {stop.text} reads the draft entropy, which this trace did not record "
                             "(trace format 1): re-record it with `lede trace`.")
        end = min(t + cap, self.length - 1)
        p = [float(self.step_maxprob()[t, j])] + self.draft_maxprob[t + 1:end, j].tolist()
        ent = [float(self.step_entropy()[t, j])] + self.draft_entropy[t + 1:end, j].tolist() \
            if stop.needs_entropy else None
        return draft_length(stop, cap, p, ent)

    # ---------------------------------------------------------------- storage
    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in _ARRAYS + _OPTIONAL if getattr(self, name) is not None}

    def header(self) -> dict:
        return {"prompt_index": self.prompt_index, "exit_layers": list(self.exit_layers),
                "probe_layers": list(self.probe_layers), "eos": self.eos, "max_new_tokens": self.max_new_tokens,
                "max_context": self.max_context}


def _run_lengths(agree: np.ndarray) -> np.ndarray:
    """run[t, j] = number of consecutive True in agree[t:, j]."""
    run = np.zeros((agree.shape[0] + 1, agree.shape[1]), dtype=np.int64)
    for t in range(agree.shape[0] - 1, -1, -1):
        run[t] = np.where(agree[t], run[t + 1] + 1, 0)
    return run[:-1]


@dataclass(frozen=True, eq=False)
class TraceSet:
    """The traces of one prompt set, with the metadata of their recording (model, dtype, exit heads,
    prompt set, chat template, limits)."""

    traces: tuple[Trace, ...]
    meta: dict

    def save(self, path: str | Path) -> Path:
        """Write all traces to one compressed ``.npz`` at ``path``, atomically: written to a hidden temporary file
        next to it, then renamed (an existing file is replaced; `lede trace` refuses that without
        ``--overwrite``). Errors name ``path``, not the temporary file."""
        path = Path(path)
        if not self.traces:
            raise ValueError(f"No traces to save to {path}: the trace set is empty.")
        payload: dict[str, np.ndarray] = {}
        headers = []
        for i, tr in enumerate(self.traces):
            for name, arr in tr.arrays().items():
                payload[f"{i}/{name}"] = arr
            headers.append(tr.header())
        meta = dict(self.meta, format_version=TRACE_FORMAT_VERSION, headers=headers)
        payload["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npz")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **payload)
            tmp.replace(path)
        except OSError as e:
            raise OSError(e.errno, f"Cannot write the trace file {path}: {e.strerror or e}") from None
        finally:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:   # its folder does not exist (a part of the path is a file): nothing to remove
                pass
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TraceSet":
        """Read a trace file written by `save` (``lede trace``). ``FileNotFoundError`` when there is none;
        ``ValueError`` ("<path> is not a LEDE trace file (...)") when it is corrupt, truncated, of another format
        or holds no traces. Never unpickles anything."""
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"{path} is a folder, not a trace file: pass the .npz written by `lede trace --out`.")
        if not path.is_file():
            raise FileNotFoundError(f"No trace file at {path}. Record one with `lede trace --out {path}`.")

        def bad(why: str) -> ValueError:
            return TraceFileError(f"{path} is not a LEDE trace file ({why}): re-record it with `lede trace`.")

        try:
            data = np.load(path, allow_pickle=False)
        except (ValueError, pickle.UnpicklingError):     # numpy read it as a pickle: never unpickle a file
            raise bad("not an .npz archive") from None
        except (OSError, EOFError, zipfile.BadZipFile) as e:
            raise bad(f"not a readable .npz archive, truncated or damaged: {type(e).__name__}: {e}") from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise bad("a single numpy array, not an .npz archive")
        with data:
            try:
                if "__meta__" not in data.files:
                    raise bad("no __meta__ entry")
                try:
                    meta = json.loads(bytes(data["__meta__"]).decode())
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise bad(f"unreadable __meta__: {e}") from None
                if not isinstance(meta, dict):
                    raise bad("__meta__ is not a JSON object")
                if meta.get("format_version") not in READABLE_FORMATS:
                    raise TraceFileError(f"{path} has trace format {meta.get('format_version')}, this code reads "
                                         f"{list(READABLE_FORMATS)}: re-record it with `lede trace`.")
                headers = meta.pop("headers", None)
                if not isinstance(headers, list):
                    raise bad("__meta__ has no list of trace headers")
                missing = [k for k in _META_KEYS if k not in meta]
                if missing:
                    raise bad(f"__meta__ lacks {missing}")
                traces = []
                for i, h in enumerate(headers):
                    absent = [f"{i}/{name}" for name in _ARRAYS if f"{i}/{name}" not in data.files]
                    if absent:
                        raise bad(f"missing arrays {absent}")
                    arrays = {name: data[f"{i}/{name}"] for name in _ARRAYS}
                    for name in _OPTIONAL:
                        if f"{i}/{name}" in data.files:
                            arrays[name] = data[f"{i}/{name}"]
                    try:
                        traces.append(Trace(prompt_index=h["prompt_index"], exit_layers=tuple(h["exit_layers"]),
                                            probe_layers=tuple(h["probe_layers"]), eos=h["eos"],
                                            max_new_tokens=h["max_new_tokens"], max_context=h["max_context"],
                                            meta={}, **arrays))
                    except (KeyError, TypeError, ValueError) as e:
                        raise bad(f"trace {i} is malformed: {type(e).__name__}: {e}") from None
            except TraceFileError:
                raise
            except ValueError as e:   # numpy: object arrays (pickled content) or a malformed array header
                why = "it holds pickled (object) arrays" if "allow_pickle" in str(e) else f"a malformed array: {e}"
                raise bad(why) from None
            except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
                raise bad(f"truncated or damaged: {type(e).__name__}: {e}") from None
        if not traces:
            raise TraceFileError(f"{path} holds no traces (recorded from an empty prompt selection?): record it again "
                             "with `lede trace` on a non-empty prompt set.")
        return cls(traces=tuple(traces), meta=meta)

    def __len__(self) -> int:
        return len(self.traces)
