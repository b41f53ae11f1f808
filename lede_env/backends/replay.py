"""Replay backend: episodes from recorded traces, no model, thousands of steps per second.
Reproduces the live backend's accepted counts exactly under greedy decoding (see `lede_env.traces`)."""

from __future__ import annotations

from lede_env.backends.base import BackendReset, BackendStep
from lede_env.traces import TraceSet


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
        self.trace = first
        self.t = 0

    @property
    def num_prompts(self) -> int:
        return len(self.traces)

    def reset(self, prompt_index: int) -> BackendReset:
        self.trace = self.traces.traces[prompt_index]
        self.t = 0
        return BackendReset(prompt_index, tuple(int(x) for x in self.trace.prompt_ids), int(self.trace.tokens[0]),
                            0.0, self.trace.length == 1)

    def step(self, exit_layer: int, k: int) -> BackendStep:
        tr, t, j = self.trace, self.t, self.columns[exit_layer]
        out = tr.outcome(t, j, k)
        last = t + out.produced - 1   # row of the last committed verified position
        d = min(out.produced, out.drafted)
        self.t = t + out.produced
        # A trace that ended neither at EOS nor at the budget ended at the full context window.
        truncated = out.finished and not tr.eos and tr.length < tr.max_new_tokens
        return BackendStep(
            exit_layer=exit_layer, k=k, drafted=out.drafted, accepted=out.accepted,
            tokens=tuple(int(x) for x in tr.tokens[t + 1: t + 1 + out.produced]), wall_time=None,
            full_maxprob=float(tr.full_maxprob[last]), full_entropy=float(tr.full_entropy[last]),
            draft_maxprob=float(tr.draft_maxprob[t + d - 1, j]) if d > 0 else 0.0,
            probe_cos=tuple(float(x) for x in tr.probe_cos[last]), finished=out.finished and not truncated,
            truncated=truncated)
