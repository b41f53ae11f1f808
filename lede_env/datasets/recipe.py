"""Recipes: one small TOML file per dataset (under ``datasets/`` at the top of the repository) that fixes
everything the dataset depends on: the environment's arguments (``[env]``, passed to ``gym.make(env_id, **env)``),
the behaviour policy (``[behaviour]``, stored here without being interpreted: `agents.behaviour` turns it into an
agent), the number of episodes and the seed. The format is described in ``datasets/README.md``."""

from __future__ import annotations

import copy
import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np

from lede_env.datasets.ids import NAME_RE, check_dataset_id, dataset_id_for, dataset_id_from

__all__ = ["Recipe", "SEEDINGS"]

SEEDINGS = ("stream", "episode")     # Recipe.behaviour_seeding


@dataclass(frozen=True)
class Recipe:
    """Everything a dataset depends on. Build one directly (the CLI's flags) or with `Recipe.from_toml`.

    Fields: ``env`` (JSON-safe keyword arguments of ``gym.make(env_id, **env)``), ``behaviour`` (a JSON-safe
    table that describes the behaviour policy: stored, not interpreted here; `agents.behaviour` validates it and
    builds the agent), ``episodes``, ``seed``; ``dataset_id`` (default
    ``lede/<model>-<promptset>/<name>-v<version>``, with ``name`` defaulting to the behaviour's short name);
    ``env_id`` (``"LEDE-v0"``, or ``"LEDE-WallClock-v0"`` for measured costs); ``author``, ``author_email``,
    ``description``, ``code_permalink`` (default: the git commit of this checkout); ``behaviour_seeding``:
    ``"stream"`` (the default, what every recipe written before it had: the behaviour is seeded once, with
    `behaviour_seed`, and its generators and any statistics run on from one episode to the next, so the episodes can
    only be collected in order) or ``"episode"`` (before episode ``i`` the behaviour is restarted with
    ``behaviour_seeds()[i]``: every episode depends only on its own seeds, and `lede collect --ray` can split them
    over workers; the dataset differs from the stream one). Relative paths in ``env``
    (traces, profile) are relative to the working directory: run collections from the repository root.
    """

    env: dict
    behaviour: dict
    episodes: int
    seed: int = 0
    dataset_id: str | None = None
    name: str | None = None
    version: int = 0
    env_id: str = "LEDE-v0"
    author: str = "LEDE gym"
    author_email: str | None = None
    description: str | None = None
    code_permalink: str | None = None
    behaviour_seeding: str = "stream"
    source: str | None = field(default=None, compare=False)   # the TOML file it came from, if any

    def __post_init__(self) -> None:
        from lede_env.env import EnvConfig

        if not isinstance(self.env, dict):
            raise ValueError(f"Recipe env must be a table of gym.make arguments, got {self.env!r}.")
        try:
            env = json.loads(json.dumps(self.env))
        except (TypeError, ValueError) as e:
            raise ValueError(f"Recipe env must be JSON-safe (numbers, strings, lists, booleans): {e}"
                             ) from None
        object.__setattr__(self, "env", env)
        if self.env_id not in gym.registry:
            import lede_env  # noqa: F401  (registers the ids)
        if self.env_id not in gym.registry:
            raise ValueError(f"Unknown env_id {self.env_id!r}: use 'LEDE-v0' or 'LEDE-WallClock-v0'.")
        known = {f.name for f in dataclasses.fields(EnvConfig)} | {"render_mode"}
        unknown = sorted(set(env) - known)
        if unknown:
            raise ValueError(f"Recipe env has unknown arguments {unknown}; LEDE-v0 takes {sorted(known)}.")
        try:
            args = {k: v for k, v in env.items() if k != "render_mode"}
            config = EnvConfig(**{**gym.spec(self.env_id).kwargs, **args})
        except (TypeError, ValueError) as e:
            raise ValueError(f"Recipe env is invalid: {e}") from None
        object.__setattr__(self, "_env_config", config)      # not a field: built once, here
        object.__setattr__(self, "behaviour", self._checked_behaviour(self.behaviour))
        for name in ("episodes", "seed", "version"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"Recipe {name} must be an integer, got {value!r}.")
            object.__setattr__(self, name, int(value))
        if self.episodes < 1:
            raise ValueError(f"Recipe episodes must be >= 1, got {self.episodes}.")
        if self.seed < 0 or self.version < 0:
            raise ValueError("Recipe seed and version must be >= 0.")
        if self.name is not None and not NAME_RE.fullmatch(self.name):
            raise ValueError(f"Recipe name {self.name!r} may only hold letters, digits, '-' and '_'.")
        if self.dataset_id is not None:
            check_dataset_id(self.dataset_id)
        if self.behaviour_seeding not in SEEDINGS:
            raise ValueError(f"Recipe behaviour_seeding must be one of {SEEDINGS}, got {self.behaviour_seeding!r}.")
        for name in ("author", "author_email", "description", "code_permalink"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"Recipe {name} must be a string, got {value!r}.")

    @staticmethod
    def _checked_behaviour(behaviour) -> dict:
        if not isinstance(behaviour, dict):
            raise ValueError(f"Recipe behaviour must be a table (e.g. {{kind = 'random'}}), got {behaviour!r}.")
        try:
            return json.loads(json.dumps(behaviour))
        except (TypeError, ValueError) as e:
            raise ValueError(f"Recipe behaviour must be JSON-safe: {e}") from None

    @property
    def env_config(self):
        """The `lede_env.env.EnvConfig` of the recipe's environment (its registered defaults and ``env``), checked
        and built once, when the recipe was made; no environment is made."""
        return self._env_config

    def with_behaviour(self, behaviour: dict) -> "Recipe":
        """This recipe with another behaviour table (the environment's arguments are not checked again)."""
        new = copy.copy(self)
        object.__setattr__(new, "behaviour", self._checked_behaviour(behaviour))
        return new

    @classmethod
    def from_dict(cls, data: dict, source: str | None = None) -> "Recipe":
        known = {f.name for f in dataclasses.fields(cls)} - {"source"}
        unknown = sorted(set(data) - known)
        if unknown:
            where = f" in {source}" if source else ""
            raise ValueError(f"Unknown recipe keys {unknown}{where}; a recipe takes {sorted(known)}.")
        missing = [k for k in ("env", "behaviour", "episodes") if k not in data]
        if missing:
            raise ValueError(f"The recipe{f' {source}' if source else ''} lacks {missing}.")
        return cls(**data, source=source)

    @classmethod
    def from_toml(cls, path: str | Path) -> "Recipe":
        """Read a recipe: top-level keys are the fields, ``[env]`` and ``[behaviour]`` are tables (mixture
        components as ``[[behaviour.components]]``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No recipe at {path} (recipes live in datasets/, see "
                                    "datasets/README.md).")
        with open(path, "rb") as f:
            try:
                data = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"{path} is not valid TOML: {e}") from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict:
        """The recipe as stored in the dataset's metadata (JSON-safe)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def resolve_dataset_id(self, env: gym.Env, behaviour: str | None = None) -> str:
        """``dataset_id`` if set, else ``lede/<model>-<promptset>/<name>-v<version>`` for ``env``, where ``name``
        is the recipe's ``name``, else ``behaviour`` (the behaviour's short name), else the behaviour's kind."""
        if self.dataset_id:
            return self.dataset_id
        name = self.name or behaviour or str(self.behaviour.get("kind", "behaviour"))
        return dataset_id_for(env, name, self.version)

    def dataset_id_before_env(self, behaviour: str | None = None) -> str | None:
        """The dataset id when it follows from the recipe alone, before the environment is made (which loads the
        model for a live backend): ``dataset_id``, or the default id of a live backend; ``None`` for a replay
        backend without ``dataset_id`` (its id names what the traces say)."""
        if self.dataset_id:
            return self.dataset_id
        cfg = self.env_config
        if cfg.backend != "live":
            return None
        name = self.name or behaviour or str(self.behaviour.get("kind", "behaviour"))
        return dataset_id_from(cfg.model, cfg.prompts, name, self.version)

    def make_env(self) -> gym.Env:
        """``gym.make(env_id, **env)``."""
        return gym.make(self.env_id, **self.env)

    def episode_seeds(self) -> list[int]:
        """The reset seed of every episode (children of ``seed``)."""
        env_seeds = np.random.SeedSequence(self.seed).spawn(2)[0]
        return [int(s) for s in env_seeds.generate_state(self.episodes)]

    @property
    def behaviour_seed(self) -> int:
        """The seed of the behaviour policy's generators (a child of ``seed``, independent of the resets)."""
        return int(np.random.SeedSequence(self.seed).spawn(2)[1].generate_state(1)[0])

    def behaviour_seeds(self) -> list[int] | None:
        """With ``behaviour_seeding = "episode"``, the seed the behaviour restarts from before each episode
        (children of `behaviour_seed`); ``None`` with ``"stream"``."""
        if self.behaviour_seeding != "episode":
            return None
        return [int(s) for s in np.random.SeedSequence(self.behaviour_seed).generate_state(self.episodes)]
