"""Published draft-stopping rules as agents: Draft & Verify's adaptive draft-exiting, SpecDec++'s cumulative
acceptance stop, SVIP's entropy stop and Kangaroo's shallow exit with a confidence stop.

Each decides the draft length *while* drafting, so each needs an environment with stop rules (``stop_rules=
"default"``: `lede_env.engine.stop_rules`); the action is ``[exit, cap, rule]``, the cap being the method's
maximum draft length clipped to the environment's lengths (the largest configured length ``<=`` it). Every rule
keeps the token that triggers the stop in the draft, as the environment's rules do. Draft & Verify, SpecDec++ and
SVIP draft at the zoo's "best fixed exit" (`agents.zoo.ZooContext.best_exit`); Kangaroo at the shallowest exit.

Published constants (from the code each paper released; the class docstrings quote it):

- ``draft-verify``: initial gamma 0.8, at most 8 drafts, target acceptance 0.9, step 0.01, smoothing 0.5 (acceptance)
  and 0.9 (threshold), an update after every verification. github.com/dilab-zju/self-speculative-decoding,
  ``decoding.py`` (``exact_self_speculative_generate``).
- ``specdec++``: stop when ``1 - prod(acceptance) > 0.3``, at most 20 drafts. github.com/Kaffaljidhmah2/SpecDec_pp,
  ``specdec_pp/hf_generation.py`` and its README (``--stop_threshold 0.3 --bound 2 20``). Rule ``prod<0.7``.
- ``svip``: stop when ``sqrt(0.15 * H) > 0.3`` (H in nats), at most 40 drafts. github.com/Geralt-Targaryen/SVIP,
  ``vanilla-sd/eval_specbench.py`` and ``vanilla-sd/config.json``. Rule ``H>0.6`` (in the default list).
- ``kangaroo``: exit layer 2 (of Vicuna-7B's 32), stop when top-1 ``< 0.6``, at most 6 drafts.
  github.com/Equationliu/Kangaroo, ``evaluation/inference_kangaroo.py`` and its README. Rule ``p<0.6``.
"""

from __future__ import annotations

import math

from agents.base import Agent, register

__all__ = ["DraftVerifyAgent", "SpecDecPPAgent", "SVIPAgent", "KangarooAgent"]


class _FixedRuleAgent(Agent):
    """One exit, one cap, one stop rule at every step (SpecDec++, SVIP, Kangaroo)."""

    uses_stop_rules = True

    def _fix(self, exit_layer: int, cap: int, stop: int) -> None:
        lists = self.lists
        self.exit_layer = int(exit_layer)
        self.j = lists.exit_index(self.exit_layer)
        self.kidx = lists.nearest_length_index(int(cap))
        self.stop = int(stop)
        self.action = lists.action(self.j, self.kidx, self.stop)

    @property
    def cap(self) -> int:
        """The speculation length (cap) of every action."""
        return self.lists.spec_lengths[self.kidx]

    @property
    def stop_rule(self) -> str:
        """The environment's stop rule of every action."""
        return self.lists.stop_rules[self.stop]

    def _act(self, observation, deterministic):
        return self.action.copy()


# ------------------------------------------------------------------------------------------ Draft & Verify
@register
class DraftVerifyAgent(Agent):
    """Draft & Verify's adaptive draft-exiting (Zhang et al., ACL 2024, "Draft & Verify: Lossless Large Language
    Model Acceleration via Self-Speculative Decoding", arXiv:2309.08168).

    Source: github.com/dilab-zju/self-speculative-decoding, ``decoding.py``, ``exact_self_speculative_generate``
    (greedy; defaults ``max_step_draft=8, th_stop_draft=0.8, auto_th_stop_draft=True,
    auto_parameters=[1, 0.5, 0.9, 1e-2, 0.9]``). Drafting stops after a token whose top-1 probability is
    ``< gamma`` (``th_stop_draft``; the token stays in the draft) or after ``max_step_draft`` tokens. After every
    ``update_every`` verifications, with ``m`` accepted of ``d`` drafted::

        alpha_hat = beta1 * alpha_hat + (1 - beta1) * m / d               # alpha_hat starts at 0
        new = gamma + epsilon         if alpha_hat < alpha
              gamma                   elif d == cap (the draft ran to its cap)
              gamma - epsilon         otherwise
        gamma = beta2 * gamma + (1 - beta2) * new

    with ``alpha = 0.9`` (target acceptance), ``epsilon = 0.01``, ``beta1 = 0.5``, ``beta2 = 0.9``,
    ``update_every = 1`` and gamma starting at 0.8: gamma moves by 0.001 per verification.

    Draft & Verify drafts by skipping a searched set of intermediate layers; here the draft is the environment's
    early exit at ``exit_layer``. Rule here: cap the largest configured length ``<= max_step_draft`` (the
    ``d == cap`` test uses this cap); stop rule ``"p<gamma"`` snapped to the environment's ``p<`` grid at every
    step (`ActionLists.nearest_stop_index`), gamma itself kept unsnapped. gamma and alpha_hat restart in every `reset`
    (the released code keeps them per generation call). Without the hooks (``evaluate_policy``) gamma stays 0.8."""

    kind = "draft-verify"
    uses_stop_rules = True

    def __init__(self, env, exit_layer: int, th_stop_draft: float = 0.8, max_step_draft: int = 8,
                 target_matchness: float = 0.9, epsilon: float = 0.01, beta1: float = 0.5, beta2: float = 0.9,
                 update_every: int = 1):
        lists = self.bind(env)
        for name, value in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}.")
        if int(update_every) < 1 or int(max_step_draft) < 1:
            raise ValueError("update_every and max_step_draft must be >= 1.")
        self.exit_layer = int(exit_layer)
        self.j = lists.exit_index(self.exit_layer)
        self.max_step_draft = int(max_step_draft)
        self.kidx = lists.nearest_length_index(self.max_step_draft)
        self.initial_threshold = float(th_stop_draft)
        self.target_matchness = float(target_matchness)
        self.epsilon = float(epsilon)
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.update_every = int(update_every)
        lists.nearest_stop_index("p", self.initial_threshold)   # refuses an environment without p< rules, at once
        self.reset({})

    @classmethod
    def zoo(cls, env, ctx) -> "DraftVerifyAgent":
        return cls(env, ctx.best_exit)

    @property
    def cap(self) -> int:
        return self.lists.spec_lengths[self.kidx]

    @property
    def stop_rule(self) -> str:
        """The environment's rule the next action uses."""
        return self.lists.stop_rules[self.lists.nearest_stop_index("p", self.threshold)]

    def reset(self, info: dict) -> None:
        self.threshold = self.initial_threshold
        self.matchness = 0.0
        self.verifications = 0

    def observe(self, info: dict) -> None:
        d = int(info["drafted"])
        if d <= 0:              # nothing was drafted: no draft to measure (the released code always drafts)
            return
        self.verifications += 1
        if self.verifications % self.update_every:
            return
        self.matchness = self.beta1 * self.matchness + (1 - self.beta1) * int(info["accepted"]) / d
        if self.matchness < self.target_matchness:
            new = self.threshold + self.epsilon
        elif d == self.cap:
            new = self.threshold
        else:
            new = self.threshold - self.epsilon
        self.threshold = self.beta2 * self.threshold + (1 - self.beta2) * new

    def _act(self, observation, deterministic):
        return self.lists.action(self.j, self.kidx, self.lists.nearest_stop_index("p", self.threshold))

    def arguments(self) -> dict:
        return {"exit_layer": self.exit_layer, "th_stop_draft": self.initial_threshold,
                "max_step_draft": self.max_step_draft, "target_matchness": self.target_matchness,
                "epsilon": self.epsilon, "beta1": self.beta1, "beta2": self.beta2, "update_every": self.update_every}


# ------------------------------------------------------------------------------------------ SpecDec++
@register
class SpecDecPPAgent(_FixedRuleAgent):
    """SpecDec++'s stop rule (Huang, Guo and Wang 2024, "SpecDec++: Boosting Speculative Decoding via Adaptive
    Candidate Lengths", arXiv:2405.19715).

    Source: github.com/Kaffaljidhmah2/SpecDec_pp, ``specdec_pp/hf_generation.py`` (schedule ``"ada"``: after each
    draft token ``cum_acc_prob *= acc_prob``; stop when ``1 - cum_acc_prob > stop_threshold``; ``bound = (min,
    max)`` forces the candidate count into ``[min, max]``) with the README's settings ``--stop_threshold 0.3
    --bound 2 20``. ``acc_prob`` comes from a trained acceptance-prediction head on the draft model.

    Rule here: the draft's own confidence (its top-1 probability) stands in for the trained head, so the stop is
    ``p_1 * ... * p_i < 1 - 0.3``: the environment's rule ``"prod<0.7"`` (`ActionLists.stop_index`; in the default
    list), with cap the largest configured length ``<= 20`` and exit ``exit_layer``. Two differences from the
    released code: its head scores draft ``d_i`` only when ``d_i`` is fed back (one forward later), so it stops one
    draft *after* the product crosses, and its lower bound 2 keeps at least two drafts; the draft's confidence is
    known as soon as ``d_i`` is drafted, so here the crossing token ends the draft (at least one draft). No running
    statistics: `predict` alone plays it."""

    kind = "specdec++"

    def __init__(self, env, exit_layer: int, stop_threshold: float = 0.3, max_candidates: int = 20):
        lists = self.bind(env)
        h = float(stop_threshold)
        if not 0.0 <= h < 1.0:
            raise ValueError(f"stop_threshold must be in [0, 1), got {stop_threshold}.")
        self.stop_threshold, self.max_candidates = h, int(max_candidates)
        self._fix(exit_layer, self.max_candidates, lists.stop_index(f"prod<{round(1.0 - h, 10):g}"))

    @classmethod
    def zoo(cls, env, ctx) -> "SpecDecPPAgent":
        return cls(env, ctx.best_exit)

    def arguments(self) -> dict:
        return {"exit_layer": self.exit_layer, "stop_threshold": self.stop_threshold,
                "max_candidates": self.max_candidates}


# ------------------------------------------------------------------------------------------ SVIP
@register
class SVIPAgent(_FixedRuleAgent):
    """SVIP's self-verification length policy (Zhang et al. 2024/2025, "Draft Model Knows When to Stop: A
    Self-Verification Length Policy for Speculative Decoding", arXiv:2411.18462, EMNLP 2025).

    Source: github.com/Geralt-Targaryen/SVIP, ``vanilla-sd/eval_specbench.py`` (``AssistantModel.generate``: stop
    after a draft token when ``torch.sqrt(entropy * 0.15) > self.entropy_threshold``, the token staying in the
    draft; ``entropy`` is the natural-log entropy of the draft's distribution for that token; at most
    ``min(40, ...)`` drafts) with ``entropy_threshold`` 0.3 (the ``Args`` default and ``vanilla-sd/config.json``):
    ``gamma = 0.15``, ``h = 0.3``.

    Rule here: ``sqrt(gamma * H) > h`` is ``H > h**2 / gamma = 0.6`` nats: the environment's ``"H>T"`` rule nearest
    0.6 (`ActionLists.nearest_stop_index`): ``"H>0.6"`` in the default list; an environment whose list lacks it gets
    the nearest (``"H>0.5"`` stops a little earlier than SVIP). Cap: the
    largest configured length ``<= 40``; exit ``exit_layer``. No running statistics: `predict` alone plays it."""

    kind = "svip"

    def __init__(self, env, exit_layer: int, gamma: float = 0.15, h: float = 0.3, max_draft: int = 40):
        lists = self.bind(env)
        if not (float(gamma) > 0 and float(h) >= 0 and math.isfinite(float(gamma)) and math.isfinite(float(h))):
            raise ValueError(f"SVIP needs gamma > 0 and h >= 0, got gamma={gamma}, h={h}.")
        self.gamma, self.h, self.max_draft = float(gamma), float(h), int(max_draft)
        self._fix(exit_layer, self.max_draft, lists.nearest_stop_index("H", self.entropy_bound))

    @property
    def entropy_bound(self) -> float:
        """``h**2 / gamma``: SVIP stops after a draft token whose entropy (nats) exceeds it."""
        return self.h * self.h / self.gamma

    @classmethod
    def zoo(cls, env, ctx) -> "SVIPAgent":
        return cls(env, ctx.best_exit)

    def arguments(self) -> dict:
        return {"exit_layer": self.exit_layer, "gamma": self.gamma, "h": self.h, "max_draft": self.max_draft}


# ------------------------------------------------------------------------------------------ Kangaroo
@register
class KangarooAgent(_FixedRuleAgent):
    """Kangaroo's double early exit (Liu et al. 2024, "Kangaroo: Lossless Self-Speculative Decoding via Double
    Early Exiting", arXiv:2404.18911).

    Source: github.com/Equationliu/Kangaroo, ``evaluation/inference_kangaroo.py`` (``kangaroo_forward(...,
    EARLY_STOP_LAYER=2, SPECULATIVE_DECODING_STEPS=6, threshold=0.6)``; the README runs ``--exitlayer 2
    --threshold 0.6 --steps 6`` on Vicuna-7B): the draft is the model's first 2 layers plus a trained adapter;
    drafting stops after a token whose top-1 probability is ``< 0.6`` (that token is verified with the rest) or
    after 6 drafts.

    Rule here: exit ``exit_layer``, by default the environment's shallowest exit layer (the environment's exit
    head stands in for Kangaroo's adapter); the rule ``"p<0.6"`` (`ActionLists.stop_index`; in the default list);
    cap the largest configured length ``<= 6``. No running statistics: `predict` alone plays it."""

    kind = "kangaroo"

    def __init__(self, env, exit_layer: int | None = None, threshold: float = 0.6, steps: int = 6):
        lists = self.bind(env)
        self.threshold, self.steps = float(threshold), int(steps)
        layer = min(lists.exit_layers) if exit_layer is None else int(exit_layer)
        self._fix(layer, self.steps, lists.stop_index(f"p<{self.threshold:g}"))

    @classmethod
    def zoo(cls, env, ctx) -> "KangarooAgent":
        return cls(env)

    def arguments(self) -> dict:
        return {"exit_layer": self.exit_layer, "threshold": self.threshold, "steps": self.steps}
