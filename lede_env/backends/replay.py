"""Replay backend: episodes from recorded traces, no model, thousands of steps per second.
Reproduces the live backend's accepted counts exactly under greedy decoding (see `lede_env.traces`)."""

from __future__ import annotations

from dataclasses import dataclass

from lede_env.backends.base import BackendReset, BackendStep
from lede_env.traces import Trace, TraceSet


@dataclass(frozen=True, eq=False)
class _Rows:
    """A trace's per-position arrays as Python lists (built once per trace): a step reads a few scalars, and
    indexing a list is several times cheaper than indexing numpy and converting the result."""

    tokens: list[int]
    full_maxprob: list[float]
    full_entropy: list[float]
    draft_maxprob: list[list[float]]   # per exit column: the column as a list (a step slices it)
    first_maxprob: list[list[float]]   # the same for a step's first draft (`Trace.step_maxprob`)
    probe_cos: list[tuple[float, ...]]

    @classmethod
    def of(cls, tr: Trace) -> "_Rows":
        later = tr.draft_maxprob.T.tolist()
        return cls(tokens=tr.tokens.tolist(), full_maxprob=tr.full_maxprob.tolist(),
                   full_entropy=tr.full_entropy.tolist(), draft_maxprob=later,
                   first_maxprob=tr.first_maxprob.T.tolist() if tr.has_first else later,
                   probe_cos=[tuple(row) for row in tr.probe_cos.tolist()])


class ReplayBackend:
    """Replays a `TraceSet`. Prompt index i is the i-th trace of the set."""

    kind = "replay"

    def __init__(self, traces: TraceSet | str, exit_layers: tuple[int, ...]):
        self.traces = traces if isinstance(traces, TraceSet) else TraceSet.load(traces)
        if not len(self.traces):
            raise ValueError("The trace set is empty: record traces with `lede trace`.")
        first = self.traces.traces[0]
        self.columns = {L: first.layer_index(L) for L in exit_layers}
        self.probe_layers = first.probe_layers
        self.max_new_tokens = first.max_new_tokens
        self._rows: dict[int, _Rows] = {}
        self._select(0)

    @property
    def num_prompts(self) -> int:
        return len(self.traces)

    def _select(self, prompt_index: int) -> None:
        self.trace = self.traces.traces[prompt_index]
        rows = self._rows.get(prompt_index)
        if rows is None:
            rows = self._rows[prompt_index] = _Rows.of(self.trace)
        self.rows = rows
        self.t = 0

    def reset(self, prompt_index: int) -> BackendReset:
        self._select(prompt_index)
        tr = self.trace
        return BackendReset(prompt_index, tuple(tr.prompt_ids.tolist()), self.rows.tokens[0], 0.0, tr.length == 1)

    def step(self, exit_layer: int, k: int, stop=None) -> BackendStep:
        """One step from the current position; ``stop``: a `lede_env.engine.stop_rules.StopRule` (``k`` is then the
        cap; `lede_env.traces.Trace.drafted_under`)."""
        tr, rows, t, j = self.trace, self.rows, self.t, self.columns[exit_layer]
        out = tr.outcome(t, j, k, stop)
        produced = out.produced
        last = t + produced - 1   # row of the last committed verified position
        d = min(produced, out.drafted)
        self.t = t + produced
        confidences = (rows.first_maxprob[j][t], *rows.draft_maxprob[j][t + 1:t + d]) if d > 0 else ()
        # A trace that ended neither at EOS nor at the budget ended at the full context window.
        truncated = out.finished and not tr.eos and tr.length < tr.max_new_tokens
        return BackendStep(
            exit_layer=exit_layer, k=k, drafted=out.drafted, accepted=out.accepted,
            tokens=tuple(rows.tokens[t + 1: t + 1 + produced]), wall_time=None,
            full_maxprob=rows.full_maxprob[last], full_entropy=rows.full_entropy[last],
            draft_maxprob=confidences[-1] if d > 0 else 0.0,
            probe_cos=rows.probe_cos[last], finished=out.finished and not truncated, truncated=truncated,
            draft_confidences=confidences)
