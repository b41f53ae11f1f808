"""Agents that choose the exit layer (and the length) from running per-layer acceptance: DEL and SWIFT-style.

Both price a step with the environment's profiled cost table (``spec.cost_table[j, d]`` seconds for a step at exit
index ``j`` that drafted ``d`` tokens; ``spec.c_ar``) and score an action ``(j, k)`` by its *expected tokens per unit
cost*, ``E[tokens] * c_ar / cost_table[j, k]`` (an expected speedup over autoregressive decoding), where the tokens of
a greedy draft of length ``k`` whose drafts are each accepted with probability ``a`` (until the first rejection)
number, with the correction or bonus token, the geometric sum ``1 + a + ... + a**k = (1 - a**(k+1)) / (1 - a)``
(`expected_tokens`).

Both need the hooks (`agents.base`): ``observe(info)`` after every step is where they learn (the step's ``exit_layer``,
``drafted``, ``accepted`` and ``tokens``). Without them (``stable_baselines3.common.evaluation.evaluate_policy``,
which calls ``predict`` only) they keep the choice their current statistics give, every step: no crash, no learning.
``predict`` itself never changes the statistics, so a batch of observations gets one action each, all the same.

What a step tells about one exit layer: the drafts on the committed prefix were checked by the full model, the
accepted ones (matches) and the first rejected one (a mismatch, present when ``accepted < drafted`` and the step made a
correction token); drafts after the first mismatch were never verified and tell nothing (`verified_drafts`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from agents.base import Agent, register

__all__ = ["DELAgent", "SwiftAgent", "expected_tokens", "verified_drafts", "tokens_per_cost"]

# SWIFT's published constants (github hemingkx/SWIFT).
SWIFT_STOP_THRESHOLD = 0.8     # model/swift/utils.py, swift_draft(stop_threshold=0.8): stop after p_i < 0.8
SWIFT_MAX_STEP_DRAFT = 25      # model/swift/utils.py, swift_draft(max_step_draft=25): at most 25 drafts a step
SWIFT_CONTEXT_WINDOW = 50      # eval_llama.sh CONTEXT_WINDOW=50 (the argparse default is 32): matchness window
SWIFT_MAX_SCORE = 0.93         # eval_llama.sh MAX_SCORE=0.93 (argparse default 0.95): matchness that ends the search


def expected_tokens(alpha, k):
    """Expected tokens of one greedy step drafting ``k`` tokens, each accepted with probability ``alpha`` until the
    first rejection: ``sum_{i=0..k} alpha**i`` (``k + 1`` at ``alpha = 1``; 1 at ``k = 0``). Broadcasts."""
    a = np.asarray(alpha, dtype=float)
    k = np.asarray(k, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        geo = (1.0 - a ** (k + 1.0)) / (1.0 - a)
    return np.where(a >= 1.0, k + 1.0, geo)


def tokens_per_cost(alpha: Sequence[float], spec) -> np.ndarray:
    """``score[j, kidx]``: expected tokens per unit cost, ``expected_tokens(alpha[j], k) * c_ar / cost_table[j, k]``
    for the environment's speculation lengths ``k = spec_lengths[kidx]`` (an expected speedup: 1 for ``k = 0``)."""
    ks = np.asarray(spec.spec_lengths)
    cost = np.asarray(spec.cost_table)[:, ks]
    return expected_tokens(np.asarray(alpha, dtype=float)[:, None], ks[None, :]) * spec.c_ar / cost


def verified_drafts(info: dict) -> tuple[int, int]:
    """``(matches, mismatches)`` among the step's verified drafts: the accepted drafts, and the first rejected one
    (0 or 1) when the step drafted more than it accepted and made a correction token after them (a step whose drafts
    ran into the end of the generation made none, and its rejection is not seen)."""
    drafted, accepted, tokens = int(info.get("drafted", 0)), int(info.get("accepted", 0)), int(info.get("tokens", 0))
    if drafted <= 0:
        return 0, 0
    return accepted, int(accepted < drafted and tokens > accepted)


def _require_costs(spec, who: str) -> None:
    if spec.cost_table is None or spec.c_ar is None:
        raise ValueError(f"{who} prices each (exit layer, length) with the profiled cost table, which this environment "
                         "does not have (cost_model='wallclock'): make it with cost_model='profile'.")


def _exit_index(lists, info: dict) -> int | None:
    L = int(info.get("exit_layer", -1))
    return lists.exit_layers.index(L) if L in lists.exit_layers else None


# ------------------------------------------------------------------------------------------ DEL
@register
class DELAgent(Agent):
    """DEL: exit layer and speculation length from per-layer acceptance and cost.

    Source: Entezari Zarch, Gao, Jiang, Annavaram, "DEL: Context-Aware Dynamic Exit Layer for Efficient
    Self-Speculative Decoding" (COLM 2025, arXiv:2504.05598), code github hoenza/DEL (its ``DEL.py``; that repository
    could not be fetched here, so this follows the paper's description, not the code). DEL keeps, per exit layer
    ``l``, an estimate ``alpha_l`` of the chance that a draft token at ``l`` is accepted, and before each round picks
    the exit layer and length maximising *tokens per layer*, ``TPL(l, d) = [(1 - alpha_l**(d+1)) / (1 - alpha_l)] /
    (d*l + N)``: the expected tokens of the round (the geometric sum) over the layers the round loads (``d`` drafts of
    ``l`` layers, one verification of ``N``).

    Rule here: ``(j, k) = argmax expected_tokens(alpha_j, k) * c_ar / cost_table[j, k]`` over every exit layer and
    every speculation length of the environment (`tokens_per_cost`; ties to the shallower layer, then the shorter
    length). The numerator is DEL's; the denominator is the environment's profiled step cost instead of the layer
    count (the same quantity in the units the reward uses: it also prices the LM head, the exit head, the overhead).
    ``k = 0`` (one token at ``c_ar``, score 1) competes too, so DEL decodes autoregressively when no draft pays.

    Acceptance estimates. DEL measures ``alpha_l`` for *every* layer at once from "shadow tokens": the early-exit
    predictions of each layer on the verified tokens, read from hidden states the round already computed. This
    environment does not compute them (a step returns only its own draft's outcome), so the stand-in is: only the layer
    the agent drafted at is updated, from its verified drafts (`verified_drafts`: accepted drafts count as matches, the
    first rejected one as a mismatch; the maximum-likelihood estimate of a geometric acceptance rate), smoothed by a
    prior: ``alpha_j = (matches_j + prior_j * prior_weight) / (verified_j + prior_weight)``. ``prior = 0.5`` (the
    observation's own acceptance prior, `lede_env.features.EMA_PRIOR`) with ``prior_weight = 2`` is Laplace's rule of
    succession; neither is a published constant (DEL needs none: its shadow tokens measure every layer from the first
    round). A consequence DEL does not have: a layer never drafted at keeps its prior, so one whose prior looks worse
    than the current layer's estimate is never tried. ``prior`` may be one number or one per exit layer. DEL adapts
    per prompt (its README: "on-the-fly optimization ... for each prompt and context window"; the ``TPL`` formula
    above is the paper's): the statistics are cleared by ``reset(info)``, at every episode.

    Not reproduced: DEL's *dynamic draft exiting* (a confidence rule that may end a round's drafting early); with
    stop rules in the environment the agent drafts under the rule ``"none"``. Needs ``observe(info)`` to learn (module
    docstring). Saved: ``prior`` and ``prior_weight`` (the per-episode statistics are not saved).
    """

    kind = "del"

    def __init__(self, env, prior: float | Sequence[float] = 0.5, prior_weight: float = 2.0):
        lists = self.bind(env)
        _require_costs(self.spec, "DEL")
        J = len(lists.exit_layers)
        p = np.broadcast_to(np.asarray(prior, dtype=float), (J,)).copy() if np.ndim(prior) == 0 else \
            np.asarray(prior, dtype=float)
        if p.shape != (J,) or not np.all((p >= 0) & (p <= 1)):
            raise ValueError(f"prior must be one acceptance rate in [0, 1] or one per exit layer ({J}: "
                             f"{list(lists.exit_layers)}), got {prior!r}.")
        if not (float(prior_weight) > 0 and np.isfinite(prior_weight)):
            raise ValueError(f"prior_weight must be a positive number of pseudo-drafts, got {prior_weight!r}.")
        self.prior = p
        self.prior_weight = float(prior_weight)
        self._scalar_prior = np.ndim(prior) == 0
        self.clear()

    @classmethod
    def zoo(cls, env, ctx) -> "DELAgent":
        return cls(env)

    def clear(self) -> None:
        """Forget the episode's statistics (back to the prior)."""
        J = len(self.lists.exit_layers)
        self.matches = np.zeros(J)
        self.verified = np.zeros(J)
        self._action: np.ndarray | None = None

    @property
    def acceptance(self) -> np.ndarray:
        """The current per-exit acceptance estimates ``alpha_j``."""
        w = self.prior_weight
        return (self.matches + self.prior * w) / (self.verified + w)

    def scores(self) -> np.ndarray:
        """``[J, K]`` expected tokens per unit cost (an expected speedup) of every action under `acceptance`."""
        return tokens_per_cost(self.acceptance, self.spec)

    def reset(self, info: dict) -> None:
        self.clear()

    def observe(self, info: dict) -> None:
        j = _exit_index(self.lists, info)
        match, miss = verified_drafts(info)
        if j is None or match + miss == 0:
            return
        self.matches[j] += match
        self.verified[j] += match + miss
        self._action = None

    def _act(self, observation, deterministic):
        if self._action is None:
            s = self.scores()
            j, kidx = np.unravel_index(int(np.argmax(s)), s.shape)
            self._action = self.lists.action(int(j), int(kidx))
        return self._action.copy()

    def arguments(self) -> dict:
        prior = float(self.prior[0]) if self._scalar_prior else [float(x) for x in self.prior]
        return {"prior": prior, "prior_weight": self.prior_weight}


# ------------------------------------------------------------------------------------------ SWIFT
@register
class SwiftAgent(Agent):
    """SWIFT-style layer choice by matchness, drafting with a confidence stop.

    Source: Xia, Li, Zhang, Du, Li, "SWIFT: On-the-Fly Self-Speculative Decoding for LLM Inference
    Acceleration" (ICLR 2025, arXiv:2410.06916), code github hemingkx/SWIFT (``model/swift/utils.py``:
    ``swift_optimization``, ``swift_draft``; ``evaluation_llama/inference_swift.py``; ``eval_llama.sh``). SWIFT drafts
    with the model minus a set of skipped layers, and searches that set on the fly (an *optimisation phase*: random
    and Bayesian proposals, each scored by its *matchness*, the share of the LLM's own recent tokens that the draft
    configuration predicts, over a context window of ``CONTEXT_WINDOW = 50`` tokens; the best one is kept; the search
    ends when the matchness exceeds ``MAX_SCORE = 0.93`` or after a number of tries) and then accelerates with the best
    set, drafting until a draft token's probability falls below ``stop_threshold = 0.8``, at most
    ``max_step_draft = 25`` tokens a step.

    Rule here (an exit layer stands for a layer set: skipping layers ``L..N-1``):

    * per exit layer, the *matchness* over the last ``window`` (50) verified draft tokens drafted there
      (`verified_drafts`: accepted drafts match, the first rejected one does not);
    * optimisation phase: the agent drafts at the exit layers in turn, shallowest first, cycling over those whose window
      holds fewer than ``min_verified`` tokens, until none does, or until one with ``min_verified`` tokens has a
      matchness above ``max_score`` (SWIFT's early end of the search);
    * then, every step: the exit layer (among those with data) and length ``k >= 1`` maximising the expected tokens
      per unit cost at its matchness, ``expected_tokens(m_j, k) * c_ar / cost_table[j, k]`` (`tokens_per_cost`; ties
      to the shallower layer, the shorter length). SWIFT compares layer sets of one size (one skip ratio, so one cost)
      by matchness alone; exit layers differ in cost, which this score weighs. SWIFT always drafts, so ``k = 0`` is
      not a choice;
    * the draft length: with stop rules in the environment, SWIFT's confidence stop, the environment's ``"p<T"`` rule
      nearest ``stop_threshold`` (0.8; `stop_rule`), with the cap ``max_step_draft`` (25) clipped to the environment's
      lengths (the largest length <= 25; also during the optimisation phase); without stop rules (or without any
      ``"p<T"`` among them: then under ``"none"``), the ``k`` of the rule above (in the optimisation phase, the
      shortest positive length: a cheap probe). The zoo marks SWIFT as a stop-rule agent (``uses_stop_rules``).

    Departures. SWIFT scores a proposal on the window of past tokens at once (one parallel forward of the draft
    configuration, no decoding step spent); here a layer's matchness comes only from the steps the agent drafted there,
    so the optimisation phase spends real steps (``min_verified = 10`` verified tokens per exit layer, not a published
    constant) and the windows of layers not drafted at go stale. SWIFT's window is the first 50 generated tokens of the
    prompt; here it is each layer's latest 50. As in SWIFT's evaluation loop (one optimiser state and one layer set
    for the whole task), the statistics persist across episodes: ``reset(info)`` does not clear them (`clear` does), so
    the optimisation phase runs once, and the agent is deterministic given the order of the episodes. Needs
    ``observe(info)`` to learn (module docstring). Saved: the constructor arguments (the statistics are not saved).
    """

    kind = "swift"
    uses_stop_rules = True     # its published drafting stops on confidence; without stop rules k is chosen instead

    def __init__(self, env, window: int = SWIFT_CONTEXT_WINDOW, stop_threshold: float = SWIFT_STOP_THRESHOLD,
                 max_step_draft: int = SWIFT_MAX_STEP_DRAFT, max_score: float = SWIFT_MAX_SCORE,
                 min_verified: int = 10):
        lists = self.bind(env)
        _require_costs(self.spec, "SWIFT")
        if int(window) < 1 or int(min_verified) < 1 or int(max_step_draft) < 1:
            raise ValueError(f"window, min_verified and max_step_draft must be >= 1, got {window}, {min_verified}, "
                             f"{max_step_draft}.")
        if not 0 < float(stop_threshold) <= 1 or not 0 <= float(max_score) <= 1:
            raise ValueError(f"stop_threshold must be in (0, 1] and max_score in [0, 1], got {stop_threshold}, "
                             f"{max_score}.")
        self.window, self.min_verified = int(window), min(int(min_verified), int(window))
        self.stop_threshold, self.max_step_draft, self.max_score = (float(stop_threshold), int(max_step_draft),
                                                                    float(max_score))
        positive = [i for i, k in enumerate(lists.spec_lengths) if k > 0]
        if not positive:
            raise ValueError("SWIFT always drafts: the environment needs a speculation length >= 1.")
        self._positive = np.array(positive)
        self._probe_kidx = min(positive, key=lambda i: lists.spec_lengths[i])
        self._stop: int | None = None      # the confidence stop's rule index; None: k from the matchness
        if lists.stop_rules is not None and any(r.startswith("p<") for r in lists.stop_rules):
            self._stop = lists.nearest_stop_index("p", self.stop_threshold)
            cap = lists.nearest_length_index(self.max_step_draft)
            self._cap_kidx = cap if lists.spec_lengths[cap] > 0 else max(positive, key=lambda i: lists.spec_lengths[i])
        self.clear()

    @classmethod
    def zoo(cls, env, ctx) -> "SwiftAgent":
        return cls(env)

    @property
    def stop_rule(self) -> str:
        """The rule the agent drafts under: the environment's ``"p<T"`` nearest ``stop_threshold``, or ``"none"``
        (then ``k`` comes from the matchness)."""
        return "none" if self._stop is None else self.lists.stop_rules[self._stop]

    def clear(self) -> None:
        """Forget every window and restart the optimisation phase."""
        J = len(self.lists.exit_layers)
        self.windows: list[deque] = [deque(maxlen=self.window) for _ in range(J)]
        self._hits = np.zeros(J)  # matches in each window
        self._sizes = np.zeros(J)
        self.optimising = True
        self.probe = 0            # the exit index the optimisation phase drafts at next
        self._action: np.ndarray | None = None

    def matchness(self) -> np.ndarray:
        """Per exit layer, the share of matches in its window (NaN where the window is empty)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self._sizes > 0, self._hits / self._sizes, np.nan)

    def scores(self) -> np.ndarray:
        """``[J, K]`` expected tokens per unit cost at each layer's matchness; -inf for layers without data and for
        ``k = 0``."""
        m = self.matchness()
        s = tokens_per_cost(np.nan_to_num(m), self.spec)
        s[np.isnan(m), :] = -np.inf
        mask = np.full(s.shape[1], -np.inf)
        mask[self._positive] = 0.0
        return s + mask[None, :]

    def reset(self, info: dict) -> None:
        """Nothing: the statistics persist across episodes (class docstring)."""

    def observe(self, info: dict) -> None:
        j = _exit_index(self.lists, info)
        match, miss = verified_drafts(info)
        if j is None or match + miss == 0:
            return
        w = self.windows[j]
        for v in [True] * match + [False] * miss:
            if len(w) == w.maxlen:
                self._hits[j] -= w[0]
            w.append(v)
            self._hits[j] += v
        self._sizes[j] = len(w)
        self._action = None
        if self.optimising:
            self._advance(j)

    def _advance(self, last: int) -> None:
        counts = self._sizes
        m = self.matchness()
        done_early = any(c >= self.min_verified and m[i] > self.max_score for i, c in enumerate(counts))
        lacking = [i for i, c in enumerate(counts) if c < self.min_verified]
        if done_early or not lacking:
            self.optimising = False
            return
        J = len(counts)
        self.probe = next((last + s) % J for s in range(1, J + 1) if (last + s) % J in lacking)

    def _act(self, observation, deterministic):
        if self._action is None:
            if self.optimising:
                j = self.probe
                kidx = self._cap_kidx if self._stop is not None else self._probe_kidx
            else:
                s = self.scores()
                j, kidx = (int(x) for x in np.unravel_index(int(np.argmax(s)), s.shape))
                if self._stop is not None:
                    kidx = self._cap_kidx
            self._action = self.lists.action(j, kidx, self._stop)
        return self._action.copy()

    def arguments(self) -> dict:
        return {"window": self.window, "stop_threshold": self.stop_threshold, "max_step_draft": self.max_step_draft,
                "max_score": self.max_score, "min_verified": self.min_verified}
