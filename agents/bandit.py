"""A bandit over the environment's actions: UCB1 over every ``(exit layer, speculation length)``."""

from __future__ import annotations

import math

import numpy as np

from agents.base import Agent, register

__all__ = ["UCBAgent"]


@register
class UCBAgent(Agent):
    """UCB1 over the ``(L, k)`` arms of the environment, rewarded by each step's tokens per unit cost.

    Sources: Auer, Cesa-Bianchi, Fischer 2002, "Finite-time Analysis of the Multiarmed Bandit Problem" (Machine
    Learning 47), policy UCB1: play each arm once, then the arm maximising ``mean_a + sqrt(2 ln n / n_a)`` (``n``
    plays in all, ``n_a`` of arm ``a``), rewards in ``[0, 1]``. The setting is BanditSpec's (Hou et al. 2025,
    "BanditSpec: Adaptive Speculative Decoding via Bandit Algorithms", ICML 2025, arXiv:2505.15141: the speculative
    decoding configuration chosen round by round by a bandit); this is the textbook UCB1 in that setting, not its own
    algorithms (UCBSpec, EXP3Spec), whose arms and reward differ.

    Arms: every exit index ``j`` with every speculation length ``k > 0``, and one autoregressive arm for ``k = 0``
    (at the first exit index: ``(L, 0)`` is the same step for every ``L``, so the ``J`` copies are one arm), in a fixed
    order: the autoregressive arm, then ``j`` ascending, ``k`` ascending within each ``j`` (`arms`). With stop rules,
    the rule ``"none"`` (the arm's ``k`` is the drafted length).

    Reward of a step: its tokens per unit cost, ``tokens * c_ar / cost`` (from the step's info: 1 for an
    autoregressive step), divided by ``r_max``, the largest value any step can take, so that it lies in ``[0, 1]``: a
    step at exit ``j`` that drafted ``d`` tokens produces at most ``d + 1`` and costs ``cost_table[j, d]``, so
    ``r_max = max over j and d = 0..max(spec_lengths) of (d + 1) * c_ar / cost_table[j, d]`` (every draft accepted, at
    the best exit and length). Under the wall clock (no cost table) ``r_max = max(spec_lengths) + 1``, the bound for
    steps that cost at least one autoregressive step; a measured step cheaper than that is clipped to 1.

    A step credits the arm its info names (``exit_layer``, ``k``; only steps under the rule ``"none"``), whoever chose
    it. The statistics persist across episodes: ``reset(info)`` does not clear them (`clear` does); the agent is
    deterministic given the order of its episodes (ties go to the first arm in the fixed order). Needs
    ``observe(info)``; without it (``evaluate_policy``) it plays the first arm of the order every step. Saved: no
    arguments (the statistics are not saved: a loaded agent starts afresh).
    """

    kind = "ucb"

    def __init__(self, env):
        lists = self.bind(env)
        J = len(lists.exit_layers)
        arms: list[tuple[int, int]] = []
        if 0 in lists.spec_lengths:
            arms.append((0, lists.length_index(0)))
        arms += [(j, kidx) for j in range(J) for kidx, k in sorted(enumerate(lists.spec_lengths), key=lambda x: x[1])
                 if k > 0]
        self.arms: tuple[tuple[int, int], ...] = tuple(arms)
        self._arm_of = {(lists.exit_layers[j], lists.spec_lengths[kidx]): a for a, (j, kidx) in enumerate(arms)}
        if 0 in lists.spec_lengths:
            for L in lists.exit_layers:
                self._arm_of[(L, 0)] = 0
        self._actions = [lists.action(j, kidx) for j, kidx in arms]
        spec = self.spec
        kmax = max(lists.spec_lengths)
        if spec.cost_table is None or spec.c_ar is None:
            self.r_max = float(kmax + 1)
        else:
            table = np.asarray(spec.cost_table)[:, :kmax + 1]
            self.r_max = float(np.max((np.arange(kmax + 1)[None, :] + 1.0) * spec.c_ar / table))
        self.clear()

    @classmethod
    def zoo(cls, env, ctx) -> "UCBAgent":
        return cls(env)

    def clear(self) -> None:
        """Forget every arm's statistics."""
        self.counts = np.zeros(len(self.arms), dtype=np.int64)
        self.sums = np.zeros(len(self.arms))
        self._choice: int | None = None

    @property
    def plays(self) -> int:
        return int(self.counts.sum())

    def reward(self, info: dict) -> float:
        """The step's reward in ``[0, 1]`` (class docstring)."""
        cost = float(info["cost"])
        value = float(info["tokens"]) * float(info["c_ar"]) / cost if cost > 0 else self.r_max
        return min(1.0, max(0.0, value / self.r_max))

    def index(self) -> np.ndarray:
        """UCB1's index of every arm: ``mean + sqrt(2 ln n / n_a)``; +inf for an arm not yet played."""
        n = self.plays
        with np.errstate(divide="ignore", invalid="ignore"):
            idx = self.sums / self.counts + np.sqrt(2.0 * math.log(max(n, 1)) / self.counts)
        return np.where(self.counts == 0, np.inf, idx)

    def choose(self) -> int:
        """The arm to play now: the first unplayed one in the fixed order, else the highest index."""
        if self._choice is None:
            self._choice = int(np.argmax(self.index()))     # argmax: the first of equals (inf first when unplayed)
        return self._choice

    def reset(self, info: dict) -> None:
        """Nothing: the statistics persist across episodes (class docstring)."""

    def observe(self, info: dict) -> None:
        if info.get("stop_rule", "none") != "none":
            return
        arm = self._arm_of.get((int(info.get("exit_layer", -1)), int(info.get("k", -1))))
        if arm is None:
            return
        self.counts[arm] += 1
        self.sums[arm] += self.reward(info)
        self._choice = None

    def _act(self, observation, deterministic):
        return self._actions[self.choose()].copy()

    def arguments(self) -> dict:
        return {}
