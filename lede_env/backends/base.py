"""What a backend reports to the environment (pure Python; no model code)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackendReset:
    """After the prefill: the prompt fed, the first generated token, the prefill's wall time."""

    prompt_index: int
    prompt_ids: tuple[int, ...]
    first_token: int
    prefill_time: float
    done: bool


@dataclass(frozen=True)
class BackendStep:
    """One step as the environment needs it. Confidence features refer to the last committed verified
    position (the one that produced the step's last token)."""

    exit_layer: int
    k: int                  # requested speculation length
    drafted: int            # after clipping to the budget and context
    accepted: int
    tokens: tuple[int, ...]  # produced
    wall_time: float | None  # measured seconds (live), None in replay
    full_maxprob: float
    full_entropy: float
    draft_maxprob: float    # draft confidence of the first rejected draft (or the last one), 0 when k = 0
    probe_cos: tuple[float, ...]
    finished: bool
    truncated: bool
    draft_confidences: tuple[float, ...] = ()  # draft max probability of d_1..d_min(produced, drafted)
