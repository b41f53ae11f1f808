"""Baseline and behaviour policies: uniform random, autoregressive, static ``(L, k)``, the best static setting
found on training traces, and mixtures; with the epsilon-noised oracle (`agents.oracle`), the behaviour policies of
the datasets. All have the stable-baselines3 ``predict`` signature (`agents.base.Agent`).

Behaviour specs (the ``[behaviour]`` table of a dataset recipe, JSON-safe dicts) build them with
`make_behaviour`::

    {"kind": "random"}
    {"kind": "autoregressive"}                       # alias "ar": k = 0 at every step
    {"kind": "static", "exit_layer": 24, "k": 3}     # layer and length *values*, mapped to the env's indices
    {"kind": "oracle", "epsilon": 0.2}               # replay only; epsilon = 0 is the plain oracle
    {"kind": "zoo", "name": "hf-heuristic"}          # an agent of the zoo (`agents.zoo`), fitted on the env's traces
    {"kind": "mixture", "components": [{"kind": "random", "weight": 0.5},
                                       {"kind": "oracle", "epsilon": 0.1, "weight": 0.5}]}

A mixture draws one component per episode (weights normalised), with its own seeded generator.
Seeds: ``make_behaviour(spec, env, seed)`` gives every stochastic part an independent child seed of ``seed``
(``numpy.random.SeedSequence``), so a recipe with a seed rebuilds the same actions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agents.base import Agent, action_lists, agent_class, child_seed, env_spec, register
from agents.oracle import OracleAgent

__all__ = ["RandomAgent", "AutoregressiveAgent", "StaticAgent", "BestStaticAgent", "MixtureAgent",
           "make_behaviour", "check_behaviour_spec", "behaviour_name", "KINDS"]

KINDS = ("random", "autoregressive", "static", "oracle", "zoo", "mixture")
_ALIASES = {"ar": "autoregressive", "epsilon_oracle": "oracle", "eps_oracle": "oracle"}
_KEYS = {"random": set(), "autoregressive": set(), "static": {"exit_layer", "k"}, "oracle": {"epsilon"},
         "zoo": {"name"}, "mixture": {"components"}}


# ------------------------------------------------------------------------------------------ agents
@register
class RandomAgent(Agent):
    """Uniform over the action space (independent indices), seeded. It has no mode: it samples whatever
    ``deterministic`` says."""

    kind = "random"

    def __init__(self, env, seed: int | None = None):
        self.bind(env)
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    @classmethod
    def zoo(cls, env, ctx) -> "RandomAgent":
        return cls(env, seed=0)

    def _act(self, observation, deterministic):
        return np.array([self.rng.integers(n) for n in self.lists.nvec], dtype=np.int64)

    def restart(self, seed=None) -> None:
        self.rng = np.random.default_rng(child_seed(seed))

    def arguments(self) -> dict:
        return {"seed": self.seed}


@register
class StaticAgent(Agent):
    """The same ``(exit_layer, k)`` at every step, given as *values* (``exit_layer=24, k=3``) and mapped to the
    environment's indices (with stop rules: the rule ``"none"``). ``k = 0`` is plain autoregressive decoding (the
    exit layer is then irrelevant)."""

    kind = "static"

    def __init__(self, env, exit_layer: int, k: int):
        lists = self.bind(env)
        self.exit_layer, self.k = int(exit_layer), int(k)
        self.action = lists.action(lists.exit_index(exit_layer), lists.length_index(k))

    @property
    def name(self) -> str:
        return f"static-L{self.exit_layer}-k{self.k}"

    def _act(self, observation, deterministic):
        return self.action.copy()

    def arguments(self) -> dict:
        return {"exit_layer": self.exit_layer, "k": self.k}


@register
class AutoregressiveAgent(StaticAgent):
    """``k = 0`` at every step: plain greedy decoding, the speedup-1.0 reference (first exit index)."""

    kind = "autoregressive"

    def __init__(self, env):
        lists = action_lists(env)
        super().__init__(env, lists.exit_layers[0], 0)

    @property
    def name(self) -> str:
        return "autoregressive"

    def arguments(self) -> dict:
        return {}


@register
class BestStaticAgent(StaticAgent):
    """The best fixed ``(L, k)`` on training traces: LayerSkip's sweep (Elhoushi et al. 2024, "LayerSkip: Enabling
    Early Exit Inference and Self-Speculative Decoding", section 5: a grid over exit layer and number of
    speculations). `fit` runs the grid search (`lede_env.oracle.best_static`: the highest token-weighted speedup
    under the environment's cost table, ties to the shorter ``k``) over the traces of a *training* split; the
    agent then plays that setting. Saved, it keeps the choice and where it was fitted."""

    kind = "best-static"

    def __init__(self, env, exit_layer: int, k: int, fitted_on: str = "", train_speedup: float | None = None):
        super().__init__(env, exit_layer, k)
        self.fitted_on = str(fitted_on)
        self.train_speedup = None if train_speedup is None else float(train_speedup)

    @property
    def name(self) -> str:
        return "best-static"

    @classmethod
    def zoo(cls, env, ctx) -> "BestStaticAgent":
        ctx.best_exit   # noqa: B018  (refuses clearly without training traces)
        b = ctx.best_static
        return cls(env, b.exit_layer, b.k, fitted_on=b.fitted_on, train_speedup=b.train_speedup)

    @classmethod
    def fit(cls, env, traces, fitted_on: str = "", speculative: bool = False) -> "BestStaticAgent":
        """Grid-search ``traces`` (a `lede_env.traces.TraceSet`, a path or a list of traces recorded with the
        environment's exit layers among theirs) under ``env``'s cost table; ``speculative``: over ``k >= 1`` only
        (the best fixed exit a drafting heuristic uses, even where drafting does not pay)."""
        from lede_env.oracle import best_static

        spec = env_spec(env)
        if spec.cost_table is None:
            raise ValueError("best-static needs the profiled cost table (cost_model='profile').")
        trs = _training_traces(traces, spec.exit_layers)
        ks = [k for k in spec.spec_lengths if k > 0] if speculative else list(spec.spec_lengths)
        if not ks:
            raise ValueError("The environment has no speculation length k >= 1.")
        j, kidx, speed = best_static(trs, spec.cost_table, ks)
        return cls(env, spec.exit_layers[j], ks[kidx], fitted_on=fitted_on or str(traces), train_speedup=speed)

    def arguments(self) -> dict:
        return {"exit_layer": self.exit_layer, "k": self.k, "fitted_on": self.fitted_on,
                "train_speedup": self.train_speedup}


def _training_traces(traces, exit_layers):
    from lede_env.traces import TraceSet

    from agents.oracle import _restrict

    if isinstance(traces, (str, Path)):
        traces = TraceSet.load(traces)
    trs = list(traces.traces if isinstance(traces, TraceSet) else traces)
    return [_restrict(tr, tuple(exit_layers), i) for i, tr in enumerate(trs)]


@register
class MixtureAgent(Agent):
    """Picks one component per episode (probabilities ``weights``, normalised; seeded) and acts with it.

    The pick happens in ``reset(info)``; without the hook, at the first ``predict`` of an episode (the first
    call, or one with a true ``episode_start``). ``component`` is the index of the current component.
    ``reset``/``observe`` are forwarded to the current component."""

    kind = "mixture"

    def __init__(self, components: Sequence[Agent], weights: Sequence[float] | None = None,
                 seed: int | None = None):
        if not components:
            raise ValueError("A mixture needs at least one component.")
        w = np.ones(len(components)) if weights is None else np.asarray(weights, dtype=float)
        if w.shape != (len(components),) or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"Mixture weights must be {len(components)} non-negative numbers with a positive "
                             f"sum, got {list(weights) if weights is not None else None}.")
        self.components = list(components)
        self.spec = self.components[0].spec
        self.weights = w / w.sum()
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.component: int | None = None
        self._fresh = False

    def _pick(self) -> None:
        self.component = int(self.rng.choice(len(self.components), p=self.weights))

    def restart(self, seed=None) -> None:
        """Restart every component and reseed the pick, with the seeds `make_behaviour` gives them."""
        ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        children = ss.spawn(len(self.components) + 1)
        for agent, child in zip(self.components, children):
            agent.restart(child)
        self.rng = np.random.default_rng(child_seed(children[-1]))
        self.component, self._fresh = None, False

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

    def arguments(self) -> dict:
        return {"components": [dict(c.config(), weight=float(w)) for c, w in zip(self.components, self.weights)],
                "seed": self.seed}

    def config(self) -> dict:
        return {"kind": self.kind, "components": self.arguments()["components"]}

    @classmethod
    def from_arguments(cls, env, arguments: dict) -> "MixtureAgent":
        comps = arguments["components"]
        agents = [agent_class(c["kind"]).from_arguments(env, {k: v for k, v in c.items()
                                                              if k not in ("kind", "weight")}) for c in comps]
        return cls(agents, [c["weight"] for c in comps], seed=arguments.get("seed"))


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
    elif kind == "zoo":
        from agents.zoo import ZOO

        name = spec.get("name")
        if name not in ZOO or name in ("oracle", "random", "autoregressive"):
            raise ValueError(f"A zoo behaviour names a heuristic of the zoo ({', '.join(ZOO[2:-1])}), got {name!r} "
                             "(the oracle, random and autoregressive behaviours have kinds of their own).")
        out["name"] = str(name)
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


def _build(spec: dict, env, ss: np.random.SeedSequence) -> Agent:
    kind = spec["kind"]
    if kind == "random":
        return RandomAgent(env, seed=child_seed(ss))
    if kind == "autoregressive":
        return AutoregressiveAgent(env)
    if kind == "static":
        return StaticAgent(env, spec["exit_layer"], spec["k"])
    if kind == "oracle":
        return OracleAgent(env, spec["epsilon"], seed=child_seed(ss))
    if kind == "zoo":
        return _zoo_behaviour(spec["name"], env)
    comps = spec["components"]
    children = ss.spawn(len(comps) + 1)
    agents = [_build({k: v for k, v in c.items() if k != "weight"}, env, s) for c, s in zip(comps, children)]
    return MixtureAgent(agents, [c["weight"] for c in comps], seed=child_seed(children[-1]))


def _zoo_behaviour(name: str, env) -> Agent:
    """The zoo agent ``name`` for ``env``, fitted (best static, the exit of the single-exit heuristics) on the
    environment's own replay traces, the prompts its resets draw from (``prompt_indices``): a dataset's behaviour
    sees only its training prompts."""
    from agents.zoo import ZooContext, build

    base = env.unwrapped
    ctx = ZooContext()
    if base.config.backend == "replay":
        from lede_env.traces import TraceSet

        ts = TraceSet.load(base.config.traces)
        pool = base.config.prompt_indices
        if pool is not None:
            ts = TraceSet(traces=tuple(ts.traces[i] for i in pool), meta=ts.meta)
        ctx = ZooContext.from_traces(env, ts)
    return build(name, env, ctx)


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
    if kind == "zoo":
        return spec["name"]
    return kind
