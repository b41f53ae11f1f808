"""The decoding rule (`SamplingConfig`): greedy, or speculative sampling with temperature and top-p. Pure Python, so
that the environment's configuration validates it without torch; the decoder (`lede_env.engine.decoder`) applies it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding rule. ``temperature == 0`` is greedy; otherwise speculative sampling with temperature and
    nucleus (top-p) warping applied alike to the draft and the full model."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
