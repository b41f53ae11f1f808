"""Baseline and behaviour policies: uniform random, autoregressive, static ``(L, k)``, the epsilon-noised
oracle (replay only) and mixtures of these, all with the stable-baselines3 ``predict`` signature
(`agents.base.Agent`).

Behaviour specs (the ``[behaviour]`` table of a dataset recipe, JSON-safe dicts) build them with
`make_behaviour`::

    {"kind": "random"}
    {"kind": "autoregressive"}                       # alias "ar": k = 0 at every step
    {"kind": "static", "exit_layer": 24, "k": 3}     # layer and length *values*, mapped to the env's indices
    {"kind": "oracle", "epsilon": 0.2}               # replay only; epsilon = 0 is the plain oracle
    {"kind": "mixture", "components": [{"kind": "random", "weight": 0.5},
                                       {"kind": "oracle", "epsilon": 0.1, "weight": 0.5}]}

A mixture draws one component per episode (weights normalised), with its own seeded generator.
Seeds: ``make_behaviour(spec, env, seed)`` gives every stochastic part an independent child seed of ``seed``
(``numpy.random.SeedSequence``), so a recipe with a seed rebuilds the same actions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from agents.base import Agent, action_lists

__all__ = ["RandomAgent", "AutoregressiveAgent", "StaticAgent", "EpsilonOracleAgent", "MixtureAgent",
           "make_behaviour", "check_behaviour_spec", "behaviour_name", "KINDS"]

KINDS = ("random", "autoregressive", "static", "oracle", "mixture")
_ALIASES = {"ar": "autoregressive", "epsilon_oracle": "oracle", "eps_oracle": "oracle"}
_KEYS = {"random": set(), "autoregressive": set(), "static": {"exit_layer", "k"}, "oracle": {"epsilon"},
         "mixture": {"components"}}


# ------------------------------------------------------------------------------------------ agents
class RandomAgent(Agent):
    """Uniform over ``MultiDiscrete([J, K])`` (independent exit and length indices), seeded. It has no mode:
    it samples whatever ``deterministic`` says."""

    name = "random"

    def __init__(self, env, seed: int | None = None):
        self.lists = action_lists(env)
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def _act(self, observation, deterministic):
        J, K = self.lists.nvec
        return np.array([self.rng.integers(J), self.rng.integers(K)], dtype=np.int64)


class StaticAgent(Agent):
    """The same ``(exit_layer, k)`` at every step, given as *values* (``exit_layer=24, k=3``) and mapped to the
    environment's indices. ``k = 0`` is plain autoregressive decoding (the exit layer is then irrelevant)."""

    name = "static"

    def __init__(self, env, exit_layer: int, k: int):
        self.lists = action_lists(env)
        self.exit_layer, self.k = int(exit_layer), int(k)
        self.action = np.array([self.lists.exit_index(exit_layer), self.lists.length_index(k)], dtype=np.int64)

    def _act(self, observation, deterministic):
        return self.action.copy()

    def config(self) -> dict:
        return {"kind": self.name, "exit_layer": self.exit_layer, "k": self.k}


class AutoregressiveAgent(StaticAgent):
    """``k = 0`` at every step: plain greedy decoding, the speedup-1.0 reference (first exit index)."""

    name = "autoregressive"

    def __init__(self, env):
        lists = action_lists(env)
        super().__init__(lists, lists.exit_layers[0], 0)

    def config(self) -> dict:
        return {"kind": self.name}


class EpsilonOracleAgent(Agent):
    """The hindsight oracle (`lede_env.oracle.OracleAgent`) with probability ``epsilon`` of a uniform random
    action per step (only when ``deterministic=False``). Replay backend only.

    It needs the episode's trace and position, which the observation does not carry: call ``reset(info)``
    after ``env.reset`` and ``observe(info)`` after each ``env.step`` (the collector does). The position is
    ``len(info["generated_ids"]) - 1`` (the pending token); the prompt is ``info["prompt_index"]``, the index
    of the trace in the environment's trace set. Off the optimal path (after a random action) it plays the
    DP policy from wherever the episode is, so it is optimal from there on.
    """

    name = "oracle"

    def __init__(self, env, epsilon: float = 0.0, seed: int | None = None):
        from lede_env.oracle import OracleAgent

        if not 0.0 <= float(epsilon) <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}.")
        base = env.unwrapped
        if getattr(base.config, "backend", None) != "replay":
            raise ValueError("The oracle needs the replay backend (a trace per prompt): make the environment with "
                             "backend='replay', traces=...")
        self.lists = action_lists(env)
        self.epsilon = float(epsilon)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        traces = [_restrict(tr, self.lists.exit_layers, i) for i, tr in enumerate(base.backend.traces.traces)]
        table = base.profile.cost_table(self.lists.exit_layers, max(self.lists.spec_lengths))
        self.oracle = OracleAgent(traces, table, self.lists.spec_lengths, lam=base.config.lam)
        self.position: int | None = None

    def reset(self, info: dict) -> None:
        self.oracle.reset(int(info["prompt_index"]))
        self.position = len(info["generated_ids"]) - 1

    def observe(self, info: dict) -> None:
        self.position = len(info["generated_ids"]) - 1

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        if np.asarray(observation).ndim != 1:
            raise ValueError("EpsilonOracleAgent drives a single environment: give one observation, not a batch.")
        if self.position is None:
            raise RuntimeError("EpsilonOracleAgent needs the episode's prompt and position: call "
                               "agent.reset(info) after env.reset and agent.observe(info) after each env.step.")
        if not deterministic and self.epsilon > 0 and self.rng.random() < self.epsilon:
            J, K = self.lists.nvec
            return np.array([self.rng.integers(J), self.rng.integers(K)], dtype=np.int64), state
        action, _ = self.oracle.predict(observation, position=self.position)
        return np.asarray(action, dtype=np.int64), state

    def config(self) -> dict:
        return {"kind": self.name, "epsilon": self.epsilon}


class MixtureAgent(Agent):
    """Picks one component per episode (probabilities ``weights``, normalised; seeded) and acts with it.

    The pick happens in ``reset(info)``; without the hook, at the first ``predict`` of an episode (the first
    call, or one with a true ``episode_start``). ``component`` is the index of the current component.
    ``reset``/``observe`` are forwarded to the current component."""

    name = "mixture"

    def __init__(self, components: Sequence[Agent], weights: Sequence[float] | None = None,
                 seed: int | None = None):
        if not components:
            raise ValueError("A mixture needs at least one component.")
        w = np.ones(len(components)) if weights is None else np.asarray(weights, dtype=float)
        if w.shape != (len(components),) or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"Mixture weights must be {len(components)} non-negative numbers with a positive "
                             f"sum, got {list(weights) if weights is not None else None}.")
        self.components = list(components)
        self.weights = w / w.sum()
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.component: int | None = None
        self._fresh = False

    def _pick(self) -> None:
        self.component = int(self.rng.choice(len(self.components), p=self.weights))

    def reset(self, info: dict) -> None:
        self._pick()
        self._fresh = True
        self.components[self.component].reset(info)

    def observe(self, info: dict) -> None:
        if self.component is not None:
            self.components[self.component].observe(info)

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        if self.component is None or (not self._fresh and episode_start is not None and np.any(episode_start)):
            self._pick()
        self._fresh = False
        return self.components[self.component].predict(observation, state, episode_start, deterministic)

    def config(self) -> dict:
        return {"kind": self.name, "components": [dict(c.config(), weight=float(w))
                                                  for c, w in zip(self.components, self.weights)]}


def _restrict(trace, exit_layers: tuple[int, ...], index: int):
    """The trace seen by an environment with ``exit_layers`` (a subset of the recorded ones) whose prompt
    ``index`` it is: the oracle's exit columns must be the environment's."""
    from dataclasses import replace

    if tuple(trace.exit_layers) == tuple(exit_layers) and trace.prompt_index == index:
        return trace
    cols = [trace.layer_index(L) for L in exit_layers]
    return replace(trace, prompt_index=index, exit_layers=tuple(exit_layers),
                   draft_tokens=trace.draft_tokens[:, cols], draft_maxprob=trace.draft_maxprob[:, cols])


# ------------------------------------------------------------------------------------------ specs
def check_behaviour_spec(spec: dict, _nested: bool = False) -> dict:
    """Validate a behaviour spec without an environment; returns it normalised (canonical kinds, numbers
    typed, mixture weights present). Raises ``ValueError`` naming the problem."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"A behaviour spec is a table with a 'kind' (one of {KINDS}), got {spec!r}.")
    kind = _ALIASES.get(spec["kind"], spec["kind"])
    if kind not in KINDS:
        raise ValueError(f"Unknown behaviour kind {spec['kind']!r}: use one of {KINDS} (or 'ar').")
    allowed = _KEYS[kind] | {"kind"} | ({"weight"} if _nested else set())
    extra = set(spec) - allowed
    if extra:
        raise ValueError(f"Behaviour {kind!r} does not take {sorted(extra)}; it takes {sorted(allowed - {'kind'})}.")
    out: dict = {"kind": kind}
    if kind == "static":
        if "exit_layer" not in spec or "k" not in spec:
            raise ValueError("A static behaviour needs exit_layer and k, e.g. {kind='static', exit_layer=24, k=3}.")
        out["exit_layer"], out["k"] = int(spec["exit_layer"]), int(spec["k"])
    elif kind == "oracle":
        eps = float(spec.get("epsilon", 0.0))
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"oracle epsilon must be in [0, 1], got {eps}.")
        out["epsilon"] = eps
    elif kind == "mixture":
        if _nested:
            raise ValueError("Mixtures cannot be nested.")
        comps = spec.get("components")
        if not isinstance(comps, list) or not comps:
            raise ValueError("A mixture needs a non-empty list of components.")
        out["components"] = [check_behaviour_spec(c, _nested=True) for c in comps]
        weights = [c["weight"] for c in out["components"]]
        if sum(weights) <= 0:
            raise ValueError("Mixture weights must have a positive sum.")
    if _nested:
        w = float(spec.get("weight", 1.0))
        if not (w >= 0 and math.isfinite(w)):
            raise ValueError(f"A mixture weight must be a finite number >= 0, got {spec.get('weight')!r}.")
        out["weight"] = w
    return out


def make_behaviour(spec: dict, env, seed: int | None = None) -> Agent:
    """Build the agent a behaviour spec describes, for ``env`` (its action lists; the oracle also needs its
    traces and cost table). ``seed`` seeds every stochastic part independently."""
    spec = check_behaviour_spec(spec)
    return _build(spec, env, np.random.SeedSequence(seed))


def _child(ss: np.random.SeedSequence) -> int:
    return int(ss.generate_state(1)[0])


def _build(spec: dict, env, ss: np.random.SeedSequence) -> Agent:
    kind = spec["kind"]
    if kind == "random":
        return RandomAgent(env, seed=_child(ss))
    if kind == "autoregressive":
        return AutoregressiveAgent(env)
    if kind == "static":
        return StaticAgent(env, spec["exit_layer"], spec["k"])
    if kind == "oracle":
        return EpsilonOracleAgent(env, spec["epsilon"], seed=_child(ss))
    comps = spec["components"]
    children = ss.spawn(len(comps) + 1)
    agents = [_build({k: v for k, v in c.items() if k != "weight"}, env, s) for c, s in zip(comps, children)]
    return MixtureAgent(agents, [c["weight"] for c in comps], seed=_child(children[-1]))


def behaviour_name(spec: dict) -> str:
    """Short name for dataset ids: ``random``, ``ar``, ``static-L24-k3``, ``oracle`` / ``oracle-eps20``
    (epsilon in percent), ``mixture``."""
    spec = check_behaviour_spec(spec)
    kind = spec["kind"]
    if kind == "autoregressive":
        return "ar"
    if kind == "static":
        return f"static-L{spec['exit_layer']}-k{spec['k']}"
    if kind == "oracle":
        if spec["epsilon"] == 0:
            return "oracle"
        pct = f"{100 * spec['epsilon']:g}".replace(".", "_")
        return f"oracle-eps{pct}"
    return kind
