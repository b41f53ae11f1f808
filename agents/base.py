"""The agent interface: the stable-baselines3 ``predict`` contract plus optional episode hooks.

Every agent in this package (baselines now; heuristics and learned agents later) implements::

    action, state = agent.predict(observation, state=None, episode_start=None, deterministic=True)

``observation`` is one observation of ``LEDE-v0`` (a float32 vector) or a batch of them (shape ``[n, D]``);
``action`` is ``np.array([exit index, length index])`` (int64), or ``[n, 2]`` for a batch, in the
``MultiDiscrete([J, K])`` action space. ``state`` is the recurrent state (``None`` for every agent here).
``deterministic=True`` asks for the policy's mode; stochastic behaviour policies (the epsilon-oracle) only
add their noise with ``deterministic=False``. A uniform random policy has no mode and samples either way.

Optional hooks, called by whoever runs the episode (the Minari collector `lede_env.datasets.collect` does):

``reset(info)``
    right after ``env.reset``, with the reset ``info`` (``prompt_index``, ``generated_ids``, ...). Agents that
    need more than the observation (the oracle needs the prompt and the position in the trace) read it here;
    mixtures draw their component for the episode here.
``observe(info)``
    after every ``env.step``, with the step's ``info``.

An agent must not need these hooks to be *valid* on observations alone unless it says so (the oracle-based
agents raise a clear error when ``reset`` was not called). Hooks default to doing nothing.

``save(path)`` / ``Agent.load(path, env)``: baselines save their constructor arguments as JSON and are rebuilt
against an environment (they map exit layers and speculation lengths to indices of that environment's lists).
Learned agents override both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

__all__ = ["Agent", "ActionLists", "action_lists"]


class ActionLists:
    """The environment's action lists: ``exit_layers`` (index ``j``) and ``spec_lengths`` (index ``kidx``)."""

    def __init__(self, exit_layers, spec_lengths):
        self.exit_layers = tuple(int(x) for x in exit_layers)
        self.spec_lengths = tuple(int(x) for x in spec_lengths)

    @property
    def nvec(self) -> tuple[int, int]:
        return len(self.exit_layers), len(self.spec_lengths)

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


def action_lists(env) -> ActionLists:
    """The action lists of a ``LEDE-v0`` environment (wrapped or not), or an `ActionLists` as is."""
    if isinstance(env, ActionLists):
        return env
    base = env.unwrapped
    return ActionLists(base.exit_layers, base.config.spec_lengths)


class Agent:
    """Base class of the agents: SB3 ``predict`` plus the optional ``reset``/``observe`` hooks, ``save``/``load``.

    Subclasses implement `_act` (one observation -> ``[j, kidx]``) or override `predict`; ``name`` is a short
    id used in dataset ids and tables; `config` returns the JSON-safe constructor arguments (for ``save`` and
    dataset metadata).
    """

    name: ClassVar[str] = "agent"

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

    # ------------------------------------------------------------------ description and storage
    def config(self) -> dict:
        """JSON-safe description: ``{"kind": ..., **arguments}`` (the behaviour-spec format of
        `agents.baselines.make_behaviour`)."""
        return {"kind": self.name}

    def save(self, path: str | Path) -> Path:
        """Write `config` as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.config(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path, env=None, seed: int | None = None) -> "Agent":
        """Rebuild a saved baseline against ``env`` (see `agents.baselines.make_behaviour`)."""
        from agents.baselines import make_behaviour

        spec = json.loads(Path(path).read_text())
        return make_behaviour(spec, env, seed=seed)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "kind")
        return f"{type(self).__name__}({args})"
