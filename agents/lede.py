"""The LEDE agent: a Q-network learned offline (`agents.train_lede`) that picks the exit layer first, then the
draft length at that layer (`agents.q_network.QNetwork`: a factored head ``Q(s, L)``, ``Q(s, L, k)``, or a flat one).
torch is imported when an agent is built, not with `agents`.

``predict`` returns the ``MultiDiscrete`` pair ``[j, kidx]`` for the environment. In an environment with stop rules
the second stage chooses the pair (length cap, stop rule) at the exit, ``kidx * S + s``, and ``predict`` returns
``[j, kidx, s]``: the draft length is then decided while drafting, from the draft's own confidence. The agent reads only the
observation (no hooks), so `stable_baselines3.common.evaluation.evaluate_policy` runs it as is.

The shipped default (``"lede-default"``, alias ``"lede"``: SmolLM2, default exit heads and lists) is one of
`agents.shipped.SHIPPED`; `agents.load("lede-default", env)` loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from agents.base import Agent, register

__all__ = ["LEDEAgent"]

WEIGHTS = "q_network.pt"
@register
class LEDEAgent(Agent):
    """Offline-learned LEDE policy: a Q-network (`agents.q_network.QNetwork`) read greedily in two stages (exit,
    then length).

    ``hidden`` and ``head`` describe the network; ``trained`` is a JSON-safe record of how it was trained (dataset
    id, algorithm, arguments, held-out speedup), kept in ``config.json``. Train one with ``lede train lede`` or
    `agents.train_lede.train`. ``predict(..., deterministic=False)`` is the same greedy choice: the policy has no
    noise of its own."""

    kind = "lede"

    def __init__(self, env, hidden: Sequence[int] = (256, 256), head: str = "factored", trained: dict | None = None):
        import torch

        from agents.q_network import QNetwork

        lists = self.bind(env)
        self.hidden, self.head = [int(h) for h in hidden], str(head)
        self.trained = dict(trained or {})
        J, *rest = lists.nvec
        self.nvec = lists.nvec
        self.network = QNetwork(len(self.spec.observation), J, int(np.prod(rest)), self.hidden, self.head)
        self.network.eval()
        self._torch = torch

    @property
    def name(self) -> str:
        return "lede" if self.head == "factored" else "lede-flat"

    def q_values(self, observation) -> np.ndarray:
        """Flat action values ``[n, J*K]`` (``j * K + kidx``; with stop rules ``[n, J*K*S]``) of one observation or
        a batch."""
        torch = self._torch
        obs = torch.as_tensor(np.atleast_2d(np.asarray(observation, dtype=np.float32)))
        with torch.no_grad():
            return self.network(obs).numpy()

    def _chooser(self):
        """The network's two-stage choice in numpy (`QNetwork.numpy_two_stage`), rebuilt when the weights change
        (training steps them in place: their version counters move)."""
        version = tuple(p._version for p in self.network.parameters())
        if getattr(self, "_choose_version", None) != version:
            self._choose, self._choose_version = self.network.numpy_two_stage(), version
        return self._choose

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        obs = np.asarray(observation, dtype=np.float32)
        j, a = self._chooser()(np.atleast_2d(obs))
        parts = [j, a] if len(self.nvec) == 2 else [j, a // self.nvec[2], a % self.nvec[2]]
        action = np.stack(parts, axis=-1).astype(np.int64)
        return (action[0] if obs.ndim == 1 else action), state

    def arguments(self) -> dict:
        return {"hidden": list(self.hidden), "head": self.head, "trained": self.trained}

    def save_weights(self, folder: Path) -> None:
        self._torch.save(self.network.state_dict(), folder / WEIGHTS)

    def load_weights(self, folder: Path) -> None:
        path = Path(folder) / WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"{folder} holds a LEDE agent's config but no {WEIGHTS}: save it again.")
        self.network.load_state_dict(self._torch.load(path, weights_only=True))
        self.network.eval()

    @classmethod
    def zoo(cls, env, ctx) -> "LEDEAgent":
        """The shipped default agent (``lede-default``) for ``env``."""
        from agents.base import load
        from agents.shipped import shipped_folder

        return load(shipped_folder("lede-default"), env)
