"""The observation: local-context features computed from work the step already did (no extra forward
passes). Every feature is defined on the committed prefix, so a trace reproduces it (live == replay).

Layout, for J exit layers and P probe layers (``ObservationLayout.table()`` prints it):

  index        name                 range    meaning
  0            last_exit            [0, 1]   index of the last step's exit layer / (J - 1); 0 before the first step
  1            last_drafted         [0, 1]   drafted tokens of the last step / max speculation length
  2            last_accept_rate     [0, 1]   accepted / drafted of the last step (0 when nothing was drafted)
  3            last_tokens          [0, 1]   tokens the last step produced / (max speculation length + 1)
  4            full_maxprob         [0, 1]   full model's max probability at the last committed position
  5            full_entropy         [0, 1]   full model's entropy there / ln(vocabulary size)
  6            draft_maxprob        [0, 1]   draft's max probability of its first rejected token (or of its last
                                             token when all were accepted); 0 when k = 0
  7 .. 7+P-1   cos_l<l>             [-1, 1]  cosine similarity of probe layer l's hidden state with the final one
                                             at the last committed position
  7+P .. +J-1  accept_ema_L<L>      [0, 1]   running acceptance rate of drafts at exit layer L (exponential moving
                                             average, weight 0.25 on the newest step, prior 0.5)
  7+P+J        budget_used          [0, 1]   generated tokens / max_new_tokens
Confidence and cosine features are 0 before the first step.

With stop rules (``LEDE-v0``'s ``stop_rules`` option), a step whose draft a rule could stop counts only its
*verified* drafts in ``last_drafted``, ``last_accept_rate`` and ``accept_ema_L<L>``: ``min(drafted, accepted + 1)``,
the accepted drafts and the first rejected one. Past the first rejected draft the replay's drafted count is an
approximation (`lede_env.traces.Trace.drafted_under`); the verified count is exact, so live and replay still give
the same observations. (``info["drafted"]`` and the cost keep the whole count.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lede_env.backends.base import BackendStep

EMA_WEIGHT = 0.25
EMA_PRIOR = 0.5


@dataclass(frozen=True)
class ObservationLayout:
    """Names, bounds and meaning of each observation feature."""

    exit_layers: tuple[int, ...]
    spec_lengths: tuple[int, ...]
    probe_layers: tuple[int, ...]
    vocab_size: int

    @property
    def names(self) -> list[str]:
        return (["last_exit", "last_drafted", "last_accept_rate", "last_tokens", "full_maxprob", "full_entropy",
                 "draft_maxprob"] + [f"cos_l{l}" for l in self.probe_layers]
                + [f"accept_ema_L{L}" for L in self.exit_layers] + ["budget_used"])

    @property
    def size(self) -> int:
        return 8 + len(self.probe_layers) + len(self.exit_layers)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        low = np.zeros(self.size, dtype=np.float32)
        low[7:7 + len(self.probe_layers)] = -1.0
        return low, np.ones(self.size, dtype=np.float32)

    def table(self) -> str:
        low, high = self.bounds()
        return "\n".join(f"{i:3d}  {n:<20s} [{lo:g}, {hi:g}]" for i, (n, lo, hi) in enumerate(zip(self.names, low, high)))

    def as_dict(self) -> dict:
        return {"exit_layers": list(self.exit_layers), "spec_lengths": list(self.spec_lengths),
                "probe_layers": list(self.probe_layers), "vocab_size": self.vocab_size, "names": self.names}


class FeatureTracker:
    """Keeps the running statistics and builds each observation.

    Every feature is written already inside its bounds (ratios by construction, probabilities and cosines
    clamped), so an observation is a copy of the running vector: no array-wide clip per step."""

    def __init__(self, layout: ObservationLayout):
        self.layout = layout
        self.kmax = max(max(layout.spec_lengths), 1)
        self.log_vocab = math.log(layout.vocab_size)
        P, J = len(layout.probe_layers), len(layout.exit_layers)
        self._exit_frac = {L: i / max(1, J - 1) for i, L in enumerate(layout.exit_layers)}
        self._ema = {L: 7 + P + i for i, L in enumerate(layout.exit_layers)}
        self._cos = slice(7, 7 + P)
        self.obs = np.zeros(layout.size, dtype=np.float32)
        self.low, self.high = layout.bounds()
        self.reset(generated=1, max_new_tokens=1)

    def reset(self, generated: int, max_new_tokens: int) -> np.ndarray:
        P = len(self.layout.probe_layers)
        self.obs[:] = 0.0
        self.obs[7 + P: 7 + P + len(self.layout.exit_layers)] = EMA_PRIOR
        self.obs[-1] = min(1.0, generated / max_new_tokens)
        return self.obs.copy()

    def update(self, s: BackendStep, generated: int, max_new_tokens: int, drafted: int | None = None) -> np.ndarray:
        """The observation after step ``s``; ``drafted`` replaces ``s.drafted`` in the features (the environment
        passes the verified drafts of a step stopped by a stop rule: module docstring)."""
        o, kmax = self.obs, self.kmax
        d = s.drafted if drafted is None else drafted
        o[0] = self._exit_frac[s.exit_layer]
        o[1] = d / kmax
        rate = s.accepted / d if d else 0.0
        o[2] = rate
        o[3] = len(s.tokens) / (kmax + 1)
        o[4] = _clamp(s.full_maxprob)
        o[5] = _clamp(s.full_entropy / self.log_vocab)
        o[6] = _clamp(s.draft_maxprob)
        o[self._cos] = [_clamp(c, -1.0) for c in s.probe_cos]
        if d:
            i = self._ema[s.exit_layer]
            o[i] = (1 - EMA_WEIGHT) * o[i] + EMA_WEIGHT * rate
        o[-1] = min(1.0, generated / max_new_tokens)
        return o.copy()


def _clamp(x: float, low: float = 0.0, high: float = 1.0) -> float:
    """``x`` clamped to ``[low, high]`` (a plain-float ``min``/``max``, cheaper than numpy per scalar)."""
    return low if x < low else (high if x > high else x)
