"""stable-baselines3 agents in the zoo's interface: a trained SB3 model (PPO, A2C on the ``MultiDiscrete`` action; DQN,
sb3-contrib's QR-DQN on the flattened one) behind `agents.base.Agent`, so that `agents.load`, `lede evaluate` and
`lede_env.rollout.rollout` run it like any other agent. Trained by `agents.train_sb3` (``lede train ppo``).

The model is stored beside ``config.json`` as SB3's own ``model.zip`` (``model.save``); ``predict`` calls the
model's ``predict`` and, for the flat-action algorithms, turns ``j * K + kidx`` back into ``[j, kidx]``
(`lede_env.wrappers.unflatten_action`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agents.base import Agent, register

__all__ = ["SB3Agent", "ALGOS", "FLAT", "algo_class"]

ALGOS = ("ppo", "a2c", "dqn", "qrdqn")
FLAT = ("dqn", "qrdqn")          # trained on `lede_env.wrappers.FlattenAction`'s Discrete(J * K)
MODEL = "model.zip"


def algo_class(algo: str):
    """The SB3 class of ``algo`` (one of `ALGOS`)."""
    if algo not in ALGOS:
        raise ValueError(f"algo must be one of {ALGOS}, got {algo!r}.")
    if algo == "qrdqn":
        from sb3_contrib import QRDQN

        return QRDQN
    import stable_baselines3 as sb3

    return {"ppo": sb3.PPO, "a2c": sb3.A2C, "dqn": sb3.DQN}[algo]


@register
class SB3Agent(Agent):
    """A stable-baselines3 model acting in ``LEDE-v0``. ``model``: the trained model (None when rebuilt by
    `agents.load`, which reads ``model.zip``); ``trained``: a JSON-safe record of its training."""

    kind = "sb3"

    def __init__(self, env, algo: str, model=None, trained: dict | None = None):
        lists = self.bind(env)
        algo_class(algo)
        self.algo, self.model, self.trained = str(algo), model, dict(trained or {})
        self.nvec = lists.nvec

    @property
    def name(self) -> str:
        return self.algo

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        if self.model is None:
            raise RuntimeError("This SB3 agent has no model: train one (lede train) or load a saved one.")
        from lede_env.wrappers import unflatten_action

        action, state = self.model.predict(np.asarray(observation, dtype=np.float32), state=state,
                                           episode_start=episode_start, deterministic=deterministic)
        if self.algo in FLAT:
            action = np.asarray(action)
            if action.ndim == 0:
                return unflatten_action(int(action), self.nvec), state
            return np.stack([unflatten_action(int(a), self.nvec) for a in action.reshape(-1)]), state
        return np.asarray(action, dtype=np.int64), state

    def arguments(self) -> dict:
        return {"algo": self.algo, "trained": self.trained}

    def save_weights(self, folder: Path) -> None:
        if self.model is None:
            raise RuntimeError("This SB3 agent has no model to save.")
        self.model.save(Path(folder) / MODEL)

    def load_weights(self, folder: Path) -> None:
        path = Path(folder) / MODEL
        if not path.is_file():
            raise FileNotFoundError(f"{folder} holds an SB3 agent's config but no {MODEL}: save it again.")
        self.model = algo_class(self.algo).load(path, device="cpu")
