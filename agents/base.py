"""The agent interface: the stable-baselines3 ``predict`` contract, optional episode hooks, and a registry through
which any agent is saved and rebuilt.

Every agent implements::

    action, state = agent.predict(observation, state=None, episode_start=None, deterministic=True)

``observation`` is one observation of ``LEDE-v0`` (a float32 vector) or a batch of them (shape ``[n, D]``);
``action`` is ``np.array([exit index, length index])`` (int64), or ``[exit, length, stop-rule index]`` in an
environment made with ``stop_rules``, or a batch of these, in the environment's ``MultiDiscrete`` space.
``state`` is the recurrent state (``None`` for every agent here). ``deterministic=True`` asks for the policy's
mode; stochastic policies (the epsilon-oracle) only add their noise with ``deterministic=False``. A uniform random
policy has no mode and samples either way. `stable_baselines3.common.evaluation.evaluate_policy` runs any agent
unchanged (it calls ``predict`` only; agents that need the hooks below say so in their docstring).

Optional hooks, called by whoever runs the episode (`lede_env.rollout.rollout` does):

``reset(info)``
    right after ``env.reset``, with the reset ``info`` (``prompt_index``, ``generated_ids``, ...).
``observe(info)``
    after every ``env.step``, with the step's ``info`` (``tokens``, ``accepted``, ``drafted``, ``cost``,
    ``exit_layer``, ``k``, ``stop_rule``, ``draft_maxprob``, ...).

Agents read the environment only through its documented public attributes (`EnvSpec` collects them: action lists,
observation layout, cost table), never its backend.

Storage. ``agent.save(folder)`` writes ``folder/config.json``: ``{"kind", "arguments", "env"}`` (``env`` is the
`EnvSpec` the agent was built for: exit layers, speculation lengths, stop rules, observation layout), and any
weights beside it (`Agent.save_weights`). `load` reads it back through the registry (`register`, `KINDS`) and
refuses an environment whose spec differs, naming the difference.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

__all__ = ["Agent", "ActionLists", "EnvSpec", "action_lists", "env_spec", "register", "KINDS", "load",
           "agent_class", "AgentFileError"]

CONFIG = "config.json"
KINDS: dict[str, type["Agent"]] = {}


class AgentFileError(ValueError):
    """A folder `load` cannot read as a saved agent, or one saved for another environment."""


def child_seed(seed: int | np.random.SeedSequence | None) -> int:
    """The integer seed of a generator drawn from ``seed`` (a seed, or a `numpy.random.SeedSequence` spawned from
    one): how every seeded agent of a behaviour spec gets its generator."""
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return int(ss.generate_state(1)[0])


def register(cls: type["Agent"]) -> type["Agent"]:
    """Class decorator: make ``cls`` loadable by its ``kind``."""
    if cls.kind in KINDS and KINDS[cls.kind] is not cls:
        raise ValueError(f"Agent kind {cls.kind!r} is registered twice ({KINDS[cls.kind].__name__}, {cls.__name__}).")
    KINDS[cls.kind] = cls
    return cls


def agent_class(kind: str) -> type["Agent"]:
    """The registered class of ``kind``; ``ValueError`` listing the kinds."""
    import agents  # noqa: F401  (registers every family)

    if kind not in KINDS:
        raise ValueError(f"Unknown agent kind {kind!r}: the registered kinds are {sorted(KINDS)}.")
    return KINDS[kind]


class ActionLists:
    """The environment's action lists: ``exit_layers`` (index ``j``), ``spec_lengths`` (index ``kidx``) and, in an
    environment with stop rules, ``stop_rules`` (index ``s``; None without)."""

    def __init__(self, exit_layers, spec_lengths, stop_rules=None):
        self.exit_layers = tuple(int(x) for x in exit_layers)
        self.spec_lengths = tuple(int(x) for x in spec_lengths)
        self.stop_rules = None if stop_rules is None else tuple(str(r) for r in stop_rules)

    @property
    def nvec(self) -> tuple[int, ...]:
        base = (len(self.exit_layers), len(self.spec_lengths))
        return base if self.stop_rules is None else base + (len(self.stop_rules),)

    def exit_index(self, exit_layer: int) -> int:
        if int(exit_layer) not in self.exit_layers:
            raise ValueError(f"Exit layer {exit_layer} is not one of the environment's exit layers "
                             f"{list(self.exit_layers)}.")
        return self.exit_layers.index(int(exit_layer))

    def length_index(self, k: int) -> int:
        if int(k) not in self.spec_lengths:
            raise ValueError(f"Speculation length {k} is not one of the environment's lengths "
                             f"{list(self.spec_lengths)}.")
        return self.spec_lengths.index(int(k))

    def nearest_length_index(self, k: int) -> int:
        """Index of the largest speculation length <= ``k`` (the smallest one if none is)."""
        below = [i for i, v in enumerate(self.spec_lengths) if v <= k]
        if not below:
            return int(np.argmin(self.spec_lengths))
        return max(below, key=lambda i: self.spec_lengths[i])

    def stop_index(self, rule: str) -> int:
        """Index of the stop rule ``rule`` (canonical text, e.g. ``"p<0.6"``); ``ValueError`` naming the fix."""
        from lede_env.engine.stop_rules import parse_stop_rule

        text = parse_stop_rule(rule).text
        if self.stop_rules is None:
            raise ValueError(f"This agent stops drafts with the rule {text!r}, which needs an environment with stop "
                             "rules: make it with stop_rules='default' (or a list that holds this rule).")
        if text not in self.stop_rules:
            raise ValueError(f"Stop rule {text!r} is not one of the environment's stop rules {list(self.stop_rules)}: "
                             "add it to stop_rules.")
        return self.stop_rules.index(text)

    def nearest_stop_index(self, kind: str, threshold: float) -> int:
        """Index of the environment's rule of ``kind`` (``"p"``, ``"prod"``, ``"H"``) whose threshold is nearest
        ``threshold`` (ties: the lower threshold): how adaptive thresholds snap to the configured grid."""
        from lede_env.engine.stop_rules import parse_stop_rule

        if self.stop_rules is None:
            raise ValueError(f"This agent adapts a {kind!r} stop threshold, which needs an environment with stop "
                             "rules: make it with stop_rules='default'.")
        rules = [(i, parse_stop_rule(r)) for i, r in enumerate(self.stop_rules)]
        cands = [(round(abs(r.threshold - threshold), 12), r.threshold, i) for i, r in rules if r.kind == kind]
        if not cands:
            raise ValueError(f"The environment's stop rules {list(self.stop_rules)} have no {kind!r} rule: add some "
                             "(stop_rules='default' has them).")
        return min(cands)[2]

    def action(self, j: int, kidx: int, stop: int | None = None) -> np.ndarray:
        """An action of the environment's shape: ``[j, kidx]``, or ``[j, kidx, stop]`` with stop rules (``stop``
        None means the rule ``"none"``, which an environment with stop rules must offer)."""
        if self.stop_rules is None:
            if stop is not None:
                raise ValueError("This environment has no stop rules: make it with stop_rules='default'.")
            return np.array([j, kidx], dtype=np.int64)
        return np.array([j, kidx, self.stop_index("none") if stop is None else stop], dtype=np.int64)


def action_lists(env) -> ActionLists:
    """The action lists of a ``LEDE-v0`` environment (wrapped or not), or an `ActionLists` / `EnvSpec` as is."""
    if isinstance(env, ActionLists):
        return env
    if isinstance(env, EnvSpec):
        return env.lists
    base = env.unwrapped
    return ActionLists(base.exit_layers, base.config.spec_lengths, getattr(base, "stop_rules", None))


@dataclass(frozen=True)
class EnvSpec:
    """What an agent may know of its environment (its documented public attributes): the action lists, the
    observation layout (feature names), the cost table (``cost_table[j, d]`` seconds; None under the wall clock)
    and ``c_ar``. The part that must match for a saved agent to load is `key`."""

    exit_layers: tuple[int, ...]
    spec_lengths: tuple[int, ...]
    stop_rules: tuple[str, ...] | None
    observation: tuple[str, ...]
    cost_table: np.ndarray | None = None
    c_ar: float | None = None

    @property
    def lists(self) -> ActionLists:
        return ActionLists(self.exit_layers, self.spec_lengths, self.stop_rules)

    def key(self) -> dict:
        return {"exit_layers": list(self.exit_layers), "spec_lengths": list(self.spec_lengths),
                "stop_rules": None if self.stop_rules is None else list(self.stop_rules),
                "observation": list(self.observation)}

    def differences(self, saved: dict) -> list[str]:
        """What differs between this spec and a saved one (`key`), in words."""
        mine = self.key()
        return [f"{name}: {saved.get(name)!r} when saved, {mine[name]!r} now" for name in mine
                if saved.get(name) != mine[name]]


def env_spec(env) -> EnvSpec:
    """The `EnvSpec` of a ``LEDE-v0`` environment (wrapped or not)."""
    if isinstance(env, EnvSpec):
        return env
    base = env.unwrapped
    return EnvSpec(exit_layers=tuple(base.exit_layers), spec_lengths=tuple(base.config.spec_lengths),
                   stop_rules=getattr(base, "stop_rules", None), observation=tuple(base.layout.names),
                   cost_table=getattr(base, "cost_table", None), c_ar=getattr(base, "c_ar", None))


class Agent:
    """Base class of the agents: SB3 ``predict`` plus the optional ``reset``/``observe`` hooks, ``save``/`load`.

    Subclasses set ``kind`` (the registry key and the short name in tables), implement `_act` (one observation ->
    action) or override `predict`, and return their JSON-safe constructor arguments from `arguments`; those with
    weights override `save_weights` / `load_weights`. The constructor's first argument is the environment (or an
    `EnvSpec`); `bind` records its spec for `save`."""

    kind: ClassVar[str] = "agent"
    uses_stop_rules: ClassVar[bool] = False    # decides the draft length with a stop rule (needs stop_rules)
    spec: EnvSpec | None = None

    @property
    def name(self) -> str:
        return self.kind

    def bind(self, env) -> ActionLists:
        """Record the environment's spec (for `save`) and return its action lists."""
        self.spec = env_spec(env)
        self.lists = self.spec.lists
        return self.lists

    # ------------------------------------------------------------------ SB3 interface
    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True
                ) -> tuple[np.ndarray, Any]:
        obs = np.asarray(observation)
        if obs.ndim == 2:
            return np.stack([self._act(o, deterministic) for o in obs]).astype(np.int64), state
        return np.asarray(self._act(obs, deterministic), dtype=np.int64), state

    def _act(self, observation: np.ndarray, deterministic: bool) -> np.ndarray:
        raise NotImplementedError

    # ------------------------------------------------------------------ episode hooks (optional)
    def reset(self, info: dict) -> None:
        """Called after ``env.reset`` with its info. Default: nothing."""

    def observe(self, info: dict) -> None:
        """Called after each ``env.step`` with its info. Default: nothing."""

    def restart(self, seed: int | np.random.SeedSequence | None = None) -> None:
        """Forget what carries over from one episode to the next (statistics, counters: ``clear()`` where the agent
        has one) and reseed any generator from ``seed``: the agent then acts as the one
        `agents.baselines.make_behaviour` builds from its config with that seed. A dataset recipe with
        ``behaviour_seeding = "episode"`` calls it before every episode, which makes each episode depend only on its
        own seeds (so episodes can be collected apart, on Ray workers). Default: ``clear()`` if defined."""
        clear = getattr(self, "clear", None)
        if callable(clear):
            clear()

    # ------------------------------------------------------------------ description and storage
    def arguments(self) -> dict:
        """JSON-safe constructor arguments (besides the environment)."""
        return {}

    def config(self) -> dict:
        """``{"kind": ..., **arguments}`` without the seed: the behaviour-spec format of
        `agents.baselines.make_behaviour` (a recipe seeds its behaviour itself), and the dataset metadata's."""
        return {"kind": self.kind, **{k: v for k, v in self.arguments().items() if k != "seed"}}

    def save_weights(self, folder: Path) -> None:
        """Write any weights into ``folder`` (beside ``config.json``). Default: none."""

    def load_weights(self, folder: Path) -> None:
        """Read what `save_weights` wrote. Default: nothing."""

    def save(self, folder: str | os.PathLike, extra: dict[str, str] | None = None) -> Path:
        """Write ``config.json`` (kind, arguments, environment spec), any weights and the text files ``extra``
        (name -> content, e.g. a training log) to ``folder``, atomically: into a hidden folder beside it, then
        renamed (an existing saved agent there is replaced)."""
        if self.spec is None:
            raise RuntimeError(f"{type(self).__name__} was not bound to an environment (call self.bind(env) in its "
                               "constructor): nothing says which environment it is for.")
        folder = Path(folder)
        if folder.exists() and not (folder / CONFIG).is_file() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} exists and is not a saved agent: choose another folder.")
        tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.mkdir(parents=True)
        try:
            (tmp / CONFIG).write_text(json.dumps({"kind": self.kind, "arguments": self.arguments(),
                                                  "env": self.spec.key()}, indent=1))
            self.save_weights(tmp)
            for name, text in (extra or {}).items():
                (tmp / name).write_text(text)
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    @classmethod
    def zoo(cls, env, ctx) -> "Agent":
        """The zoo's instance for ``env`` (`agents.zoo.build`): the published defaults, fitted from ``ctx`` (an
        `agents.zoo.ZooContext`) where the agent needs it. Default: ``cls(env)``."""
        return cls(env)

    @classmethod
    def from_arguments(cls, env, arguments: dict) -> "Agent":
        """Build from saved arguments (default: ``cls(env, **arguments)``)."""
        return cls(env, **arguments)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.arguments().items())
        return f"{type(self).__name__}({args})"


def load(folder: str | os.PathLike, env) -> Agent:
    """Rebuild the agent saved in ``folder`` (`Agent.save`) for ``env``. Refuses an environment whose action lists
    or observation layout differ from the ones it was saved for, naming the difference. ``folder`` may also name an
    agent shipped with the package (`agents.shipped.SHIPPED`: ``"lede-default"``, alias ``"lede"``; ``"sb3-default"``, alias ``"sb3"``)."""
    from agents.shipped import is_shipped, shipped_folder

    name = str(folder)
    folder = shipped_folder(name) if is_shipped(name) and not Path(folder).exists() else Path(folder)
    path = folder / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"No saved agent in {folder}: it has no {CONFIG} (write one with agent.save(folder)).")
    try:
        saved = json.loads(path.read_text())
        kind, arguments, env_key = saved["kind"], saved["arguments"], saved["env"]
    except (ValueError, KeyError, TypeError) as e:
        raise AgentFileError(f"{path} is not a saved agent's config ({type(e).__name__}: {e}).") from None
    cls = agent_class(kind)
    diff = env_spec(env).differences(env_key)
    if diff:
        raise AgentFileError(f"The {kind} agent in {folder} was saved for another environment: "
                             + "; ".join(diff) + ". Make the environment with the lists it was saved for.")
    agent = cls.from_arguments(env, arguments)
    agent.load_weights(folder)
    return agent
