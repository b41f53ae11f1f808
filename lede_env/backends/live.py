"""Live backend: the real model decodes with `SelfSpeculativeDecoder`; costs are measured wall-clock."""

from __future__ import annotations

import statistics
from typing import Sequence

from lede_env.backends.base import BackendReset, BackendStep


class LiveBackend:
    """Runs a `SelfSpeculativeDecoder` (built by `lede_env.wiring.build_decoder`) on tokenised prompts."""

    kind = "live"

    def __init__(self, decoder, prompts: Sequence[Sequence[int]], max_new_tokens: int):
        self.decoder = decoder
        self.prompts = [list(p) for p in prompts]
        self.max_new_tokens = max_new_tokens
        self.probe_layers = tuple(decoder.probe_layers)
        for i, p in enumerate(self.prompts):
            if len(p) >= self.decoder.max_context:
                raise ValueError(f"Prompt {i} has {len(p)} tokens but the context window holds "
                                 f"{self.decoder.max_context}: shorten it or raise max_context.")

    @property
    def num_prompts(self) -> int:
        return len(self.prompts)

    def reset(self, prompt_index: int, seed: int | None = None) -> BackendReset:
        ids = self.prompts[prompt_index]
        t = self.decoder.start(ids, self.max_new_tokens, seed=seed)
        return BackendReset(prompt_index, tuple(ids), self.decoder.tokens[-1], t, self.decoder.done)

    def step(self, exit_layer: int, k: int, stop=None) -> BackendStep:
        r = self.decoder.step(exit_layer, k, stop)
        return BackendStep(
            exit_layer=exit_layer, k=k, drafted=r.drafted, accepted=r.accepted, tokens=r.tokens, wall_time=r.time,
            full_maxprob=r.full_maxprob[-1], full_entropy=r.full_entropy[-1],
            draft_maxprob=r.draft_maxprob[-1] if r.draft_maxprob else 0.0, probe_cos=r.probe_cos,
            finished=r.finished, truncated=r.truncated, draft_confidences=r.draft_maxprob)

    def measure_ar_cost(self, steps: int = 16) -> float:
        """Median wall-clock seconds of a plain autoregressive step, measured on the first prompt."""
        times: list[float] = []
        while len(times) < steps:
            self.decoder.start(self.prompts[0], steps + 1)
            while not self.decoder.done and len(times) < steps:
                times.append(self.decoder.step(self.decoder.num_layers - 1, 0).time)
        return statistics.median(times[2:] if len(times) > 4 else times)
