"""Hugging Face assisted generation's draft-length policies as agents: the ``"heuristic"`` schedule of
``num_assistant_tokens`` and the dynamic ``assistant_confidence_threshold``.

Source: transformers, ``src/transformers/generation/candidate_generator.py`` (``AssistedCandidateGenerator``:
``__init__``, ``_generate_candidates``, ``update_candidate_strategy``), ``generation/stopping_criteria.py``
(``ConfidenceCriteria``), ``generation/utils.py`` (``_assisted_decoding``: the ``"heuristic"`` schedule writes
``num_assistant_tokens`` back to the assistant's generation config after each ``generate()``) and
``generation/configuration_utils.py`` (defaults: ``num_assistant_tokens=20``,
``num_assistant_tokens_schedule="constant"``, ``assistant_confidence_threshold=0.4``); read in transformers 5.24
(the version in this project's environment). The dynamic threshold is Hugging Face's unsupervised take on Mamou et
al. 2024, "Dynamic Speculation Lookahead Accelerates Speculative Decoding of Large Language Models"
(arXiv:2405.04304; blog: huggingface.co/blog/dynamic_speculation_lookahead).

Hugging Face applies both mechanisms at once by default (the confidence stop is on whenever the threshold is set,
and it is, to 0.4); here they are two agents, so that each is measured alone: `HFHeuristicAgent` is the length
schedule without a stop rule, `HFDynamicAgent` the confidence stop with the constant length 20. Both draft at one
exit layer, the zoo's "best fixed exit" (`agents.zoo.ZooContext.best_exit`).

The ROC curve of the dynamic threshold is `sklearn.metrics.roc_curve` in transformers; scikit-learn is not a
dependency of this project, so `roc_curve` here is the same computation in numpy (scikit-learn >= 1.3: the curve
starts at threshold ``inf``; collinear points dropped).
"""

from __future__ import annotations

import numpy as np

from agents.base import Agent, register

__all__ = ["HFHeuristicAgent", "HFDynamicAgent", "roc_curve", "fit_confidence_threshold",
           "NUM_ASSISTANT_TOKENS", "ASSISTANT_CONFIDENCE_THRESHOLD", "SCHEDULES"]

NUM_ASSISTANT_TOKENS = 20             # GenerationConfig default num_assistant_tokens
ASSISTANT_CONFIDENCE_THRESHOLD = 0.4  # GenerationConfig default assistant_confidence_threshold
SCHEDULES = ("heuristic", "heuristic_transient")
HEURISTIC_UP, HEURISTIC_DOWN = 2, 1   # +2 when every candidate matched, else -1 (floor 1)
MIN_SAMPLES = 5                       # re-fit once len(probs) > 5 ...
FN_COST = 3.0                         # ... minimising fpr + 3 * fnr ("25% to false positives, 75% to false negatives")


# ------------------------------------------------------------------------------------------ the ROC re-fit
def roc_curve(y_true, y_score, drop_intermediate: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` of binary labels ``y_true`` (1 = positive) scored by ``y_score``: what
    ``sklearn.metrics.roc_curve(y_true, y_score)`` returns (scikit-learn >= 1.3). Thresholds decrease; the first is
    ``inf`` (nothing predicted positive); a sample is predicted positive when its score is ``>=`` the threshold.
    Needs both classes (the caller checks)."""
    y_true = np.asarray(y_true) == 1
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.shape != y_score.shape or y_true.ndim != 1:
        raise ValueError(f"roc_curve needs two 1-D arrays of one length, got {y_true.shape} and {y_score.shape}.")
    order = np.argsort(y_score, kind="mergesort")[::-1]
    y_score, y_true = y_score[order], y_true[order]
    distinct = np.where(np.diff(y_score))[0]
    ends = np.r_[distinct, y_true.size - 1]          # the last sample of each distinct score
    tps = np.cumsum(y_true, dtype=np.float64)[ends]
    fps = 1 + ends - tps
    thresholds = y_score[ends]
    if drop_intermediate and len(fps) > 2:           # points collinear with their neighbours
        keep = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    tps, fps = np.r_[0, tps], np.r_[0, fps]
    thresholds = np.r_[np.inf, thresholds]
    return fps / fps[-1], tps / tps[-1], thresholds


def fit_confidence_threshold(matches, probs, fn_cost: float = FN_COST, min_samples: int = MIN_SAMPLES
                             ) -> float | None:
    """Hugging Face's re-fit of ``assistant_confidence_threshold`` (``update_candidate_strategy``): with more than
    ``min_samples`` samples and both classes among ``matches``, the ROC threshold of ``probs`` minimising
    ``fpr + fn_cost * fnr`` (the first such, as ``np.argmin``); None otherwise (the threshold stays)."""
    if len(probs) != len(matches):
        raise ValueError(f"probs and matches differ in length ({len(probs)}, {len(matches)}).")
    if not (len(probs) > min_samples and {0, 1}.issubset(set(int(m) for m in matches))):
        return None
    fpr, tpr, thresholds = roc_curve(matches, probs)
    return float(thresholds[int(np.argmin(fpr + fn_cost * (1 - tpr)))])


# ------------------------------------------------------------------------------------------ agents
def _exit_index(lists, exit_layer) -> int:
    return lists.exit_index(int(exit_layer))


@register
class HFHeuristicAgent(Agent):
    """Hugging Face's ``num_assistant_tokens_schedule="heuristic"`` at one exit layer, no stop rule.

    Source: transformers ``AssistedCandidateGenerator.update_candidate_strategy``
    (``generation/candidate_generator.py``): after each verification, ``num_assistant_tokens += 2`` when every
    candidate matched (``num_matches == len(scores[0]) - 1``, the number of drafted tokens), else
    ``num_assistant_tokens = max(1, num_assistant_tokens - 1)``; the counter has no upper bound. It starts at
    ``num_assistant_tokens = 20`` (the ``GenerationConfig`` default).

    Rule here: exit ``exit_layer`` and length the largest configured speculation length ``<= num_assistant_tokens``
    (`ActionLists.nearest_length_index`); with stop rules, the rule ``"none"``. `observe` applies the update with
    ``info["accepted"] == info["drafted"]`` as the full match (the drafted count, like Hugging Face's candidate
    count, already holds any clip: the env's lengths, the token budget).

    ``schedule``: ``"heuristic"`` (the zoo's, as in Hugging Face) keeps the counter across episodes, as Hugging Face
    keeps it across ``generate()`` calls with the same assistant model (``generation/utils.py`` writes it back to
    ``assistant_model.generation_config``), so an episode's actions depend on the episodes before it;
    ``"heuristic_transient"`` restarts it at ``num_assistant_tokens`` in every `reset`. Without the hooks
    (``evaluate_policy``) the counter never moves: a static length ``min(20, largest length)``. A saved agent
    restarts from ``num_assistant_tokens``."""

    kind = "hf-heuristic"

    def __init__(self, env, exit_layer: int, num_assistant_tokens: int = NUM_ASSISTANT_TOKENS,
                 schedule: str = "heuristic"):
        lists = self.bind(env)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}.")
        if isinstance(num_assistant_tokens, bool) or int(num_assistant_tokens) != num_assistant_tokens or \
                int(num_assistant_tokens) < 1:
            raise ValueError(f"num_assistant_tokens must be an integer >= 1, got {num_assistant_tokens!r}.")
        self.exit_layer = int(exit_layer)
        self.j = _exit_index(lists, exit_layer)
        self.initial_tokens = int(num_assistant_tokens)
        self.schedule = schedule
        self.num_assistant_tokens = self.initial_tokens

    @classmethod
    def zoo(cls, env, ctx) -> "HFHeuristicAgent":
        return cls(env, ctx.best_exit)

    @property
    def k(self) -> int:
        """The speculation length the next action asks for."""
        return self.lists.spec_lengths[self.lists.nearest_length_index(self.num_assistant_tokens)]

    def reset(self, info: dict) -> None:
        if self.schedule == "heuristic_transient":
            self.num_assistant_tokens = self.initial_tokens

    def restart(self, seed=None) -> None:
        self.num_assistant_tokens = self.initial_tokens

    def observe(self, info: dict) -> None:
        if int(info["accepted"]) == int(info["drafted"]):
            self.num_assistant_tokens += HEURISTIC_UP
        else:
            self.num_assistant_tokens = max(1, self.num_assistant_tokens - HEURISTIC_DOWN)

    def _act(self, observation, deterministic):
        return self.lists.action(self.j, self.lists.nearest_length_index(self.num_assistant_tokens))

    def arguments(self) -> dict:
        return {"exit_layer": self.exit_layer, "num_assistant_tokens": self.initial_tokens,
                "schedule": self.schedule}


@register
class HFDynamicAgent(Agent):
    """Hugging Face's dynamic ``assistant_confidence_threshold`` at one exit layer (needs stop rules).

    Source: transformers ``generation/stopping_criteria.py`` (``ConfidenceCriteria``: the assistant stops once its
    probability of the token it just drafted is ``< assistant_confidence_threshold``; that token stays in the
    draft) and ``generation/candidate_generator.py`` (``AssistedCandidateGenerator``): ``_generate_candidates``
    appends the probability of every drafted token to ``self.probs``; ``update_candidate_strategy`` appends
    ``[1] * num_matches`` to ``self.matches``, then one ``0`` when a drafted token was rejected, cuts ``probs`` to
    the length of ``matches`` (the accepted drafts and the first rejected one), and once ``len(probs) > 5`` with
    both classes present sets the threshold to the ROC threshold (`roc_curve`) minimising ``fpr + 3 * fnr``.
    Defaults: threshold 0.4, ``num_assistant_tokens = 20`` with the ``"constant"`` schedule.

    Rule here: exit ``exit_layer``; cap the largest configured length ``<= 20``; stop rule ``"p<T"`` with ``T`` the
    current threshold snapped to the environment's ``p<`` grid (`ActionLists.nearest_stop_index`; the default list
    has every 0.05). `observe` adds ``info["draft_maxprob"]`` (the draft's confidence in the accepted drafts and the
    first rejected one: exactly the samples Hugging Face keeps; under greedy decoding the drafted token's
    probability is the max probability) labelled 1 for the first ``info["accepted"]`` and 0 for the rest, and
    re-fits (`fit_confidence_threshold`).

    The statistics and the threshold restart in every `reset`: Hugging Face keeps ``probs``/``matches`` on the
    candidate generator, which each ``generate()`` call builds anew, and (transformers 5.x) adapts the threshold on
    a copy of the assistant's generation config. Without the hooks (``evaluate_policy``) the threshold stays 0.4."""

    kind = "hf-dynamic"
    uses_stop_rules = True

    def __init__(self, env, exit_layer: int, assistant_confidence_threshold: float = ASSISTANT_CONFIDENCE_THRESHOLD,
                 num_assistant_tokens: int = NUM_ASSISTANT_TOKENS):
        lists = self.bind(env)
        threshold = float(assistant_confidence_threshold)
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"assistant_confidence_threshold must be in (0, 1], got {assistant_confidence_threshold}.")
        if int(num_assistant_tokens) < 1:
            raise ValueError(f"num_assistant_tokens must be >= 1, got {num_assistant_tokens}.")
        self.exit_layer = int(exit_layer)
        self.j = _exit_index(lists, exit_layer)
        self.num_assistant_tokens = int(num_assistant_tokens)
        self.kidx = lists.nearest_length_index(self.num_assistant_tokens)
        self.initial_threshold = threshold
        lists.nearest_stop_index("p", threshold)       # refuses an environment without p< rules, at once
        self.reset({})

    @classmethod
    def zoo(cls, env, ctx) -> "HFDynamicAgent":
        return cls(env, ctx.best_exit)

    @property
    def stop_rule(self) -> str:
        """The environment's rule the next action uses."""
        return self.lists.stop_rules[self.lists.nearest_stop_index("p", self.threshold)]

    def reset(self, info: dict) -> None:
        self.threshold = self.initial_threshold
        self.probs: list[float] = []
        self.matches: list[int] = []

    def observe(self, info: dict) -> None:
        conf = [float(p) for p in info["draft_maxprob"]]
        m = min(int(info["accepted"]), len(conf))
        self.probs.extend(conf)
        self.matches.extend([1] * m + [0] * (len(conf) - m))
        fitted = fit_confidence_threshold(self.matches, self.probs)
        if fitted is not None:
            self.threshold = fitted

    def _act(self, observation, deterministic):
        return self.lists.action(self.j, self.kidx, self.lists.nearest_stop_index("p", self.threshold))

    def arguments(self) -> dict:
        return {"exit_layer": self.exit_layer, "assistant_confidence_threshold": self.initial_threshold,
                "num_assistant_tokens": self.num_assistant_tokens}
