"""Loading a LEDE dataset for training: flat transition arrays (`OfflineData`, `load_offline_arrays`) after a check
that the dataset fits the environment (`check_compatible`), and rewards recomputed for any ``lam``
(`recompute_rewards`, `OfflineData.rewards_for`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from lede_env.datasets.metadata import LEDE_DATASET_FORMAT, env_version
from lede_env.reward import step_reward

__all__ = ["DatasetMismatchError", "OfflineData", "recompute_rewards", "check_compatible", "load_offline_arrays"]


class DatasetMismatchError(ValueError):
    """A dataset does not fit the environment it is loaded for (action lists, observation layout, version)."""


@dataclass(frozen=True, eq=False)
class OfflineData:
    """Flat transition arrays of a LEDE dataset, ready for offline RL (``N`` steps, ``D`` features).

    ``observations`` / ``next_observations`` float32 ``[N, D]``; ``actions`` int64 ``[N]`` flat actions
    (``j * K + kidx``, or ``(j * K + kidx) * S + s`` with stop rules: the `lede_env.wrappers.FlattenAction`
    encoding); ``multi_actions`` int64 ``[N, 2]`` (the ``MultiDiscrete`` pair; ``[N, 3]`` with stop rules); ``rewards`` float64 ``[N]`` for ``lam``; ``terminals`` / ``timeouts`` bool
    ``[N]``
    (Minari's terminations / truncations); ``episode_ids`` int64 ``[N]``; the reward's parts ``tokens``
    (int64), ``cost`` and ``c_ar`` (float64) for `rewards_for`. ``exit_layers``, ``spec_lengths``,
    ``stop_rules`` (None without) and ``nvec`` describe the actions; ``metadata`` is the dataset's metadata.
    """

    dataset_id: str
    observations: np.ndarray
    actions: np.ndarray
    multi_actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    episode_ids: np.ndarray
    tokens: np.ndarray
    cost: np.ndarray
    c_ar: np.ndarray
    lam: float
    exit_layers: tuple[int, ...]
    spec_lengths: tuple[int, ...]
    metadata: dict
    stop_rules: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def nvec(self) -> tuple[int, ...]:
        base = (len(self.exit_layers), len(self.spec_lengths))
        return base if self.stop_rules is None else base + (len(self.stop_rules),)

    @property
    def n_actions(self) -> int:
        return int(np.prod(self.nvec))

    @property
    def dones(self) -> np.ndarray:
        return self.terminals | self.timeouts

    def rewards_for(self, lam: float) -> np.ndarray:
        """Rewards under another ``lam``: ``tokens - lam * cost / c_ar``."""
        return step_reward(self.tokens, self.cost, self.c_ar, float(lam))


def recompute_rewards(infos: dict, lam: float) -> np.ndarray:
    """An episode's rewards from its stored infos (rows 1..T): ``tokens - lam * cost / c_ar``."""
    return step_reward(np.asarray(infos["tokens"][1:], dtype=np.float64), np.asarray(infos["cost"][1:], dtype=np.float64),
                       np.asarray(infos["c_ar"][1:], dtype=np.float64), float(lam))


def check_compatible(metadata: dict, env: gym.Env, dataset_id: str = "the dataset") -> None:
    """Raise `DatasetMismatchError` naming every difference between a LEDE dataset's metadata and ``env``:
    environment version, action lists (exit layers, speculation lengths, stop rules), observation layout."""
    if metadata.get("lede_format") is None:
        raise DatasetMismatchError(f"{dataset_id} is not a LEDE gym dataset (its metadata has no "
                                   "'lede_format'); collect one with `lede collect`.")
    if metadata["lede_format"] != LEDE_DATASET_FORMAT:
        raise DatasetMismatchError(f"{dataset_id} has LEDE dataset format {metadata['lede_format']}, this "
                                   f"code reads {LEDE_DATASET_FORMAT}: collect it again with this version.")
    base = env.unwrapped
    problems = []
    env_id = base.spec.id if base.spec is not None else "LEDE-v0"
    if metadata.get("env_version") != env_version(env_id):
        problems.append(f"environment version: dataset {metadata.get('env_id')} "
                        f"(v{metadata.get('env_version')}), environment {env_id} (v{env_version(env_id)})")
    if list(metadata["exit_layers"]) != list(base.exit_layers):
        problems.append(f"exit_layers: dataset {list(metadata['exit_layers'])}, environment "
                        f"{list(base.exit_layers)}")
    if list(metadata["spec_lengths"]) != list(base.config.spec_lengths):
        problems.append(f"spec_lengths: dataset {list(metadata['spec_lengths'])}, environment "
                        f"{list(base.config.spec_lengths)}")
    rules = None if base.stop_rules is None else list(base.stop_rules)
    if metadata.get("stop_rules") != rules:
        problems.append(f"stop_rules: dataset {metadata.get('stop_rules')}, environment {rules}")
    ours, theirs = base.layout.as_dict(), metadata["observation_layout"]
    if ours != theirs:
        diff = [f"{k} {theirs.get(k)} vs {ours.get(k)}" for k in sorted(set(ours) | set(theirs))
                if k != "names" and ours.get(k) != theirs.get(k)]
        if not diff:
            diff = [f"feature names {theirs.get('names')} vs {ours.get('names')}"]
        problems.append("observation layout (dataset vs environment): " + "; ".join(diff))
    if problems:
        listing = "\n  - ".join(problems)
        raise DatasetMismatchError(f"{dataset_id} does not match this environment:\n  - {listing}\nMake "
                                   "the environment with the dataset's arguments (metadata 'env_kwargs') or "
                                   "collect a dataset for this environment.")


def load_offline_arrays(dataset, env: gym.Env, lam: float | None = None) -> OfflineData:
    """Flat arrays (`OfflineData`) of a LEDE Minari dataset (an id or a `minari.MinariDataset`) for training
    an agent on ``env`` (wrapped or not). Checks first that the dataset's environment version, action lists
    and observation layout match ``env`` (`check_compatible`; `DatasetMismatchError` names each mismatch).

    ``lam``: the reward weight of the returned ``rewards`` (default: ``env``'s). When it differs from the
    dataset's, the rewards are recomputed from the stored parts (``tokens - lam * cost / c_ar``); otherwise
    they are the stored rewards.
    """
    import minari

    if isinstance(dataset, (str, os.PathLike)):
        dataset = minari.load_dataset(str(dataset))
    metadata = dataset.storage.metadata
    dataset_id = metadata["dataset_id"]
    check_compatible(metadata, env, dataset_id)
    base = env.unwrapped
    lam = float(base.config.lam if lam is None else lam)
    nvec = tuple(int(n) for n in base.action_space.nvec)
    names = ("obs", "next", "act", "rew", "term", "trunc", "ep", "tok", "cost", "car")
    cols: dict[str, list] = {k: [] for k in names}
    for ep in dataset.iterate_episodes():
        obs = np.asarray(ep.observations, dtype=np.float32)
        cols["obs"].append(obs[:-1])
        cols["next"].append(obs[1:])
        cols["act"].append(np.asarray(ep.actions, dtype=np.int64).reshape(-1, len(nvec)))
        cols["rew"].append(np.asarray(ep.rewards, dtype=np.float64))
        cols["term"].append(np.asarray(ep.terminations, dtype=bool))
        cols["trunc"].append(np.asarray(ep.truncations, dtype=bool))
        cols["ep"].append(np.full(len(ep), ep.id, dtype=np.int64))
        cols["tok"].append(np.asarray(ep.infos["tokens"][1:], dtype=np.int64))
        cols["cost"].append(np.asarray(ep.infos["cost"][1:], dtype=np.float64))
        cols["car"].append(np.asarray(ep.infos["c_ar"][1:], dtype=np.float64))
    D = base.observation_space.shape[0]
    cat = {k: (np.concatenate(v) if v else None) for k, v in cols.items()}
    if cat["obs"] is None:
        cat = {"obs": np.zeros((0, D), np.float32), "next": np.zeros((0, D), np.float32),
               "act": np.zeros((0, len(nvec)), np.int64), "rew": np.zeros(0), "term": np.zeros(0, bool),
               "trunc": np.zeros(0, bool), "ep": np.zeros(0, np.int64), "tok": np.zeros(0, np.int64),
               "cost": np.zeros(0), "car": np.ones(0)}
    multi = cat["act"]
    rewards = cat["rew"]
    if lam != float(metadata["lam"]):
        rewards = step_reward(cat["tok"], cat["cost"], cat["car"], lam)
    flat = np.ravel_multi_index(tuple(multi.T), nvec).astype(np.int64) if len(multi) else np.zeros(0, np.int64)
    return OfflineData(dataset_id=dataset_id, observations=cat["obs"], actions=flat,
                       multi_actions=multi, rewards=rewards, next_observations=cat["next"],
                       terminals=cat["term"],
                       timeouts=cat["trunc"], episode_ids=cat["ep"], tokens=cat["tok"], cost=cat["cost"],
                       c_ar=cat["car"], lam=lam, exit_layers=tuple(base.exit_layers),
                       spec_lengths=tuple(base.config.spec_lengths), metadata=metadata,
                       stop_rules=None if base.stop_rules is None else tuple(base.stop_rules))
