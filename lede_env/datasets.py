"""Offline datasets of ``LEDE-v0`` in Minari: recipes, collection, loading for training (DESIGN.md section 3).

Dataset ids follow Minari's convention ``lede/<model>-<promptset>/<behaviour>-v<N>``, for example
``lede/smollm2-135m-mixed-train/mixture-v0``. Datasets go to ``$MINARI_DATASETS_PATH`` (Minari's default
``~/.minari/datasets`` otherwise); ``minari list local`` and ``minari show <id>`` list and describe them.

Recipes
-------
A recipe (`Recipe`, one small TOML file under ``datasets/`` at the top of the repository) fixes everything a
dataset depends on: the environment's arguments (``[env]``, passed to ``gym.make(env_id, **env)``), the
behaviour policy (``[behaviour]``), the number of episodes and the seed. Collection is seeded (per-episode reset
seeds and the behaviour's generators are children of ``seed``: `Recipe.episode_seeds`, `Recipe.behaviour_seed`),
so a recipe rebuilds its dataset exactly with one command (``lede collect --recipe datasets/<recipe>.toml``),
except the measured costs of a wall-clock environment.

Layering: this module knows no agent. It stores the ``[behaviour]`` table as metadata without interpreting it,
and `collect` takes an already-built policy (any object with the stable-baselines3 ``predict``). Building the
behaviour agent of a recipe and collecting with it is `agents.behaviour` (``collect_from_recipe``,
``collect_recipe``), which is what ``lede collect`` runs.

What is stored
--------------
Per episode (Minari's layout): observations ``[T+1, D]`` float32, actions ``[T, 2]`` int64 (``MultiDiscrete``
indices ``[exit index, length index]``), rewards ``[T]`` float64, terminations, truncations, and ``infos``
(``[T+1]`` each, row 0 from ``reset``): ``prompt_index`` (index in the environment's prompt or trace set),
``tokens``, ``accepted``, ``drafted``, ``cost`` and ``c_ar``; wall-clock environments add ``wall_time`` and
``prefill_time``. The step's exit layer and ``k`` follow from the action and the action lists, the position
from the running sum of ``tokens``: Minari's HDF5 writer spends ~2.5 KB per array per episode, so derivable
keys are left out. Episode metadata: the reset ``seed`` and ``behaviour_component`` (the mixture component
that acted, -1 for other behaviours). The reward is recomputable for any ``lam``::

    r = tokens - lam * cost / c_ar        (infos rows 1..T; `recompute_rewards`, `OfflineData.rewards_for`)

Dataset metadata: Minari's standard fields (author, description, algorithm name = the behaviour policy, code
permalink, requirements, env and eval env specs) plus ``model``, ``dtype``, ``exit_heads``, ``prompt_set``,
``prompt_split``, ``backend``, ``traces`` (and its sha256), ``exit_layers``, ``spec_lengths``,
``observation_layout``, ``cost_model``, ``cost_table`` (profile costs), ``c_ar``, ``lam``, ``reward``,
``behaviour`` (the spec), ``seed``, ``recipe`` and the ``lede_version``.

Why ``minari.create_dataset_from_buffers`` and not ``minari.DataCollector``
-----------------------------------------------------------------------
``DataCollector`` needs the ``minari[create]`` extra, which pulls jax (~525 MB) just to append steps to
Python lists; and its ``create_dataset`` first creates the dataset folder under the id, then moves the files
into it one by one, so an interruption there leaves an empty or half-filled dataset under the id (and a killed
run leaves a visible ``tmp*`` folder in the datasets root). Building our own `minari.data_collector.EpisodeBuffer` per episode (plain
numpy, no jax) and writing them with ``create_dataset_from_buffers`` / ``update_dataset_from_buffer`` lets the
collector control atomicity: everything is written under a hidden temporary ``MINARI_DATASETS_PATH``
(``<root>/.lede-partial-<host>-<pid>-<hex>``, same file system, invisible to ``minari list``) and moved into
place with one ``os.rename`` at the end. An interrupted collection (Ctrl-C, exception, crash) therefore leaves
either the complete dataset or nothing under the id; temporary folders of dead processes are removed by the
next collection. It also lets the collector call the agents' ``reset(info)`` / ``observe(info)`` hooks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["Recipe", "collect", "check_writable", "load_offline_arrays", "OfflineData",
           "DatasetMismatchError", "recompute_rewards", "dataset_id_for", "check_compatible", "INFO_KEYS",
           "REWARD_DEFINITION"]

LEDE_DATASET_FORMAT = 1
INFO_KEYS = ("prompt_index", "tokens", "accepted", "drafted", "cost", "c_ar")
WALLCLOCK_INFO_KEYS = ("wall_time", "prefill_time")
_FLOAT_KEYS = {"cost", "c_ar", "wall_time", "prefill_time"}
REWARD_DEFINITION = ("r = tokens - lam * cost / c_ar, with tokens, cost (seconds, under the cost model) "
                     "and c_ar (cost of one plain autoregressive step) in infos rows 1..T; with lam = 1 the "
                     "return is the number of tokens saved versus autoregressive decoding.")
ACTION_DEFINITION = ("MultiDiscrete([J, K]): [index into exit_layers, index into spec_lengths] (k = 0: plain "
                     "autoregressive step); flat action j * K + kidx (lede_env.wrappers.FlattenAction).")
_PARTIAL_PREFIX = ".lede-partial-"
_TRASH_PREFIX = ".lede-trash-"
_CHUNK_EPISODES = 256          # episodes buffered in memory before they are appended to the temporary dataset
_NAME_RE = re.compile(r"[-_\w]+")


class DatasetMismatchError(ValueError):
    """A dataset does not fit the environment it is loaded for (action lists, observation layout, version)."""


# ================================================================================================= recipes
@dataclass(frozen=True)
class Recipe:
    """Everything a dataset depends on. Build one directly (the CLI's flags) or with `Recipe.from_toml`.

    Fields: ``env`` (JSON-safe keyword arguments of ``gym.make(env_id, **env)``), ``behaviour`` (a JSON-safe
    table that describes the behaviour policy: stored, not interpreted here; `agents.behaviour` validates it and
    builds the agent), ``episodes``, ``seed``; ``dataset_id`` (default
    ``lede/<model>-<promptset>/<name>-v<version>``, with ``name`` defaulting to the behaviour's short name);
    ``env_id`` (``"LEDE-v0"``, or ``"LEDE-WallClock-v0"`` for measured costs); ``author``, ``author_email``,
    ``description``, ``code_permalink`` (default: the git commit of this checkout). Relative paths in ``env``
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
            EnvConfig(**{**gym.spec(self.env_id).kwargs, **args})
        except (TypeError, ValueError) as e:
            raise ValueError(f"Recipe env is invalid: {e}") from None
        if not isinstance(self.behaviour, dict):
            raise ValueError(f"Recipe behaviour must be a table (e.g. {{kind = 'random'}}), got {self.behaviour!r}.")
        try:
            object.__setattr__(self, "behaviour", json.loads(json.dumps(self.behaviour)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"Recipe behaviour must be JSON-safe: {e}") from None
        for name in ("episodes", "seed", "version"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"Recipe {name} must be an integer, got {value!r}.")
            object.__setattr__(self, name, int(value))
        if self.episodes < 1:
            raise ValueError(f"Recipe episodes must be >= 1, got {self.episodes}.")
        if self.seed < 0 or self.version < 0:
            raise ValueError("Recipe seed and version must be >= 0.")
        if self.name is not None and not _NAME_RE.fullmatch(self.name):
            raise ValueError(f"Recipe name {self.name!r} may only hold letters, digits, '-' and '_'.")
        if self.dataset_id is not None:
            _check_dataset_id(self.dataset_id)
        for name in ("author", "author_email", "description", "code_permalink"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"Recipe {name} must be a string, got {value!r}.")

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


def _check_dataset_id(dataset_id: str) -> None:
    from minari.dataset.minari_dataset import DATASET_ID_RE

    m = DATASET_ID_RE.fullmatch(dataset_id)
    if not m or m.group("version") is None:
        raise ValueError(f"Malformed dataset id {dataset_id!r}: use Minari's form namespace/name-v<N>, e.g. "
                         "'lede/smollm2-135m-mixed-train/random-v0'.")


def _slug(text: str) -> str:
    return re.sub(r"[^-\w]+", "-", text).strip("-") or "x"


def _source_of(env: gym.Env) -> tuple[str, str, str | None]:
    """(model, prompt set, split) the environment's episodes come from (for replay: what the traces say)."""
    base = env.unwrapped
    if base.config.backend == "replay":
        model = str(base.trace_meta.get("model", base.config.model))
        prompts = str(base.trace_meta.get("prompts", "traces"))
    else:
        model, prompts = base.config.model, base.config.prompts
    model = Path(model).name if ("/" in model or os.sep in model) else model
    spec, split = prompts, None
    m = re.fullmatch(r"(.*):(train|test|all)", prompts)
    if m:
        spec, split = m.group(1), m.group(2)
    if spec.endswith(".jsonl") or "/" in spec:
        spec = Path(spec).stem
    return model, spec, split


def dataset_id_for(env: gym.Env, behaviour: str, version: int = 0) -> str:
    """``lede/<model>-<promptset>[-<split>]/<behaviour>-v<version>`` (characters Minari does not allow become
    ``-``)."""
    model, prompts, split = _source_of(env)
    source = _slug(f"{model}-{prompts}" + (f"-{split}" if split else ""))
    dataset_id = f"lede/{source}/{_slug(behaviour)}-v{int(version)}"
    _check_dataset_id(dataset_id)
    return dataset_id


# ================================================================================================= collection
def _datasets_root() -> Path:
    from minari.storage.datasets_root_dir import get_dataset_path

    return Path(get_dataset_path()).resolve()


@contextmanager
def _datasets_path(path: Path):
    """Point Minari at ``path`` for the duration (Minari reads ``MINARI_DATASETS_PATH`` at every call)."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temp_name(prefix: str) -> str:
    """``<prefix><host>-<pid>-<random>``: whose it is, so that only this machine's dead ones are cleaned."""
    return f"{prefix}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _clean_stale(root: Path) -> None:
    """Remove temporary folders left by this machine's collections whose process is gone (killed, crashed)."""
    for d in root.iterdir() if root.is_dir() else ():
        for prefix in (_PARTIAL_PREFIX, _TRASH_PREFIX):
            if d.is_dir() and d.name.startswith(prefix):
                try:
                    host, pid, _ = d.name[len(prefix):].rsplit("-", 2)
                    pid = int(pid)
                except ValueError:
                    continue
                if host == socket.gethostname() and pid != os.getpid() and not _pid_alive(pid):
                    shutil.rmtree(d, ignore_errors=True)


def _code_permalink() -> str:
    """A link to the code that collected the data: the git commit (GitHub URL when the remote is GitHub),
    marked ``+dirty`` when the checkout has uncommitted changes; the package version without git."""
    from lede_env import __version__

    here = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return f"lede-gym {__version__}"
    try:
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        dirty = False
    try:
        remote = git("config", "--get", "remote.origin.url")
    except (OSError, subprocess.SubprocessError):
        remote = ""
    m = re.match(r"(?:https://github\.com/|git@github\.com:)([^/]+/[^/]+?)(?:\.git)?$", remote)
    link = f"https://github.com/{m.group(1)}/tree/{sha}" if m else f"lede-gym {__version__} git {sha}"
    return link + (" (+uncommitted changes)" if dirty else "")


def _requirements() -> list[str]:
    from lede_env import __version__

    return [f"lede-gym=={__version__}", "gymnasium>=1.0,<2", "minari>=0.5,<0.6"]


def _sha256(path: str | Path) -> str | None:
    p = Path(path)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _lede_metadata(env: gym.Env, recipe: Recipe, agent, c_ar: float) -> dict:
    from lede_env import __version__

    base = env.unwrapped
    cfg = base.config
    model, prompts, split = _source_of(env)
    spec = env.spec
    meta: dict[str, Any] = {
        "lede_format": LEDE_DATASET_FORMAT,
        "lede_version": __version__,
        "env_id": spec.id if spec else recipe.env_id,
        "env_version": _env_version(spec.id if spec else recipe.env_id),
        "env_kwargs": recipe.env,
        "env_config": json.loads(json.dumps(dataclasses.asdict(cfg))),
        "model": model,
        "dtype": base.trace_meta.get("dtype", cfg.dtype) if cfg.backend == "replay" else cfg.dtype,
        "exit_heads": base.heads_kind,
        "num_layers": int(base.num_layers),
        "prompt_set": prompts,
        "prompt_split": split or "all",
        "prompts": base.trace_meta.get("prompts", cfg.prompts) if cfg.backend == "replay" else cfg.prompts,
        "backend": cfg.backend,
        "traces": cfg.traces,
        "traces_sha256": _sha256(cfg.traces) if cfg.traces else None,
        "max_new_tokens": int(base.max_new_tokens),
        "exit_layers": list(base.exit_layers),
        "spec_lengths": list(cfg.spec_lengths),
        "probe_layers": list(base.probe_layers),
        "action_definition": ACTION_DEFINITION,
        "observation_layout": base.layout.as_dict(),
        "cost_model": cfg.cost_model,
        "c_ar": float(c_ar),
        "lam": float(cfg.lam),
        "reward": REWARD_DEFINITION,
        "info_keys": list(_info_keys(env)),
        "behaviour": agent.config() if hasattr(agent, "config") else recipe.behaviour,
        "behaviour_spec": recipe.behaviour,
        "seed": recipe.seed,
        "recipe": recipe.to_dict(),
    }
    if cfg.cost_model == "profile":
        prof = base.profile
        meta["profile"] = prof.key
        meta["cost_table"] = prof.cost_table(base.exit_layers, max(cfg.spec_lengths)).tolist()
    return meta


def _env_version(env_id: str) -> int | None:
    return gym.envs.registration.parse_env_id(env_id)[2]


def _info_keys(env: gym.Env) -> tuple[str, ...]:
    wall = env.unwrapped.config.cost_model == "wallclock"
    return INFO_KEYS + (WALLCLOCK_INFO_KEYS if wall else ())


def _run_episode(env: gym.Env, agent, seed: int, keys: tuple[str, ...], max_steps: int):
    from minari.data_collector import EpisodeBuffer

    obs, info = env.reset(seed=seed)
    hook = getattr(agent, "reset", None)
    if callable(hook):
        hook(info)
    observe = getattr(agent, "observe", None)
    observations, actions, rewards, terms, truncs = [obs], [], [], [], []
    rows = [_info_row(info, keys)]
    component = getattr(agent, "component", None)
    start = True
    while True:
        action, _ = agent.predict(obs, state=None, episode_start=np.array([start]), deterministic=False)
        start = False
        action = np.asarray(action, dtype=np.int64).reshape(2)
        obs, reward, term, trunc, info = env.step(action)
        if callable(observe):
            observe(info)
        observations.append(obs)
        actions.append(action)
        rewards.append(float(reward))
        terms.append(bool(term))
        truncs.append(bool(trunc))
        rows.append(_info_row(info, keys))
        if term or trunc:
            break
        if len(actions) >= max_steps:
            raise RuntimeError(f"An episode ran {max_steps} steps without ending: the environment is broken.")
    infos = {k: np.array([r[k] for r in rows], dtype=np.float64 if k in _FLOAT_KEYS else np.int64)
             for k in keys}
    buffer = EpisodeBuffer(seed=int(seed), observations=np.stack(observations).astype(np.float32),
                           actions=np.stack(actions), rewards=rewards, terminations=terms, truncations=truncs,
                           infos=infos)
    return buffer, -1 if component is None else int(component)


def _info_row(info: dict, keys: tuple[str, ...]) -> dict:
    return {k: info[k] for k in keys}


def _publish(src: Path, root: Path, dataset_id: str, overwrite: bool, namespace_description: str) -> Path:
    """Move the finished dataset folder ``src`` to ``root/dataset_id`` with one rename (replacing an existing
    one only when ``overwrite``)."""
    from minari.dataset.minari_dataset import parse_dataset_id
    from minari.namespace import create_namespace, list_local_namespaces

    dst = root / dataset_id
    namespace = parse_dataset_id(dataset_id)[0]
    with _datasets_path(root):
        if namespace is not None and namespace not in list_local_namespaces():
            create_namespace(namespace, description=namespace_description)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        os.rename(src, dst)
        return dst
    if not overwrite:
        raise FileExistsError(f"A dataset {dataset_id} appeared at {dst} while collecting; nothing was "
                              "replaced (pass overwrite=True / --overwrite to replace it).")
    trash = root / _temp_name(_TRASH_PREFIX)
    os.rename(dst, trash)
    try:
        os.rename(src, dst)
    except BaseException:
        os.rename(trash, dst)
        raise
    shutil.rmtree(trash, ignore_errors=True)
    return dst


def check_writable(dataset_id: str, overwrite: bool = False) -> Path:
    """The folder the dataset ``dataset_id`` goes to; ``FileExistsError`` if it exists and not ``overwrite``."""
    final = _datasets_root() / dataset_id
    if final.exists() and not overwrite:
        raise FileExistsError(f"The dataset {dataset_id} already exists at {final}: pass overwrite=True "
                              "(lede collect --overwrite) to replace it, or bump the recipe's version.")
    return final


def collect(recipe: Recipe, agent, env: gym.Env | None = None, name: str | None = None, overwrite: bool = False,
            progress: bool = True):
    """Collect ``recipe.episodes`` episodes acted by ``agent`` into a Minari dataset and return it
    (`minari.MinariDataset`). To collect a recipe with its own behaviour, use
    `agents.behaviour.collect_recipe` (it builds the agent, seeded with `Recipe.behaviour_seed`, and calls this).

    ``agent``: the behaviour policy, already built: any object with the stable-baselines3
    ``predict(obs, state=None, episode_start=None, deterministic=True) -> (action, state)`` (called with
    ``deterministic=False``). Optional: ``reset(info)`` after each ``env.reset`` and ``observe(info)`` after each
    ``env.step``; ``name`` and ``config()`` (JSON-safe) for the metadata; ``component`` (the index of the mixture
    component acting in this episode, read after ``reset``). The dataset is as reproducible as the agent.
    ``env``: the recipe's environment if already made (``recipe.make_env()``; it is not closed), else one is made
    and closed. ``name``: the behaviour part of the dataset id when the recipe sets neither ``name`` nor
    ``dataset_id`` (default: the behaviour's ``kind``).
    ``overwrite``: replace an existing dataset with the same id (otherwise refuse with ``FileExistsError``).
    ``progress``: a progress bar, and a final line saying where the dataset was stored.
    The dataset appears under its id only when complete (module docstring); on an interruption or error the
    partial data is removed, a message is printed to stderr and the exception propagates.
    """
    import minari
    from tqdm import tqdm

    if not callable(getattr(agent, "predict", None)):
        raise TypeError(f"agent must have a stable-baselines3 predict method, got {agent!r}.")
    root = _datasets_root()
    own_env = env is None
    env = recipe.make_env() if own_env else env
    try:
        dataset_id = recipe.resolve_dataset_id(env, name)
        final = check_writable(dataset_id, overwrite)
        seeds = recipe.episode_seeds()
        keys = _info_keys(env)
        max_steps = 4 * env.unwrapped.max_new_tokens + 16
        algorithm = getattr(agent, "name", type(agent).__name__)
        if hasattr(agent, "config"):
            algorithm = f"{algorithm}: {json.dumps(agent.config())}"
        model, prompts, split = _source_of(env)
        description = recipe.description or (
            f"{recipe.env_id} episodes ({env.unwrapped.config.backend} backend, {model}, prompts "
            f"{prompts}:{split or 'all'}) under the behaviour policy {algorithm}.")

        _clean_stale(root)
        tmp = root / _temp_name(_PARTIAL_PREFIX)
        tmp.mkdir(parents=True)
        done = steps = 0
        t0 = time.perf_counter()
        bar = tqdm(total=recipe.episodes, desc=f"collecting {dataset_id}", unit="ep", disable=not progress,
                   dynamic_ncols=True)
        try:
            dataset = None
            buffer: list = []
            components: list[int] = []
            for i, seed in enumerate(seeds):
                ep, component = _run_episode(env, agent, seed, keys, max_steps)
                buffer.append(ep)
                components.append(component)
                done, steps = i + 1, steps + len(ep)
                bar.update(1)
                rate = steps / (time.perf_counter() - t0)
                bar.set_postfix(steps=steps, steps_per_s=f"{rate:.0f}", refresh=False)
                if len(buffer) >= _CHUNK_EPISODES or done == recipe.episodes:
                    if dataset is None:
                        with _datasets_path(tmp), warnings.catch_warnings():
                            warnings.filterwarnings("ignore", message=".*author_email.*")
                            dataset = minari.create_dataset_from_buffers(
                                dataset_id, buffer, env=env, eval_env=env, algorithm_name=algorithm,
                                author=recipe.author, author_email=recipe.author_email,
                                code_permalink=recipe.code_permalink or _code_permalink(),
                                description=description, data_format="hdf5", requirements=_requirements())
                        dataset.storage.update_metadata(_lede_metadata(env, recipe, agent,
                                                                       buffer[0].infos["c_ar"][0]))
                    else:
                        dataset.update_dataset_from_buffer(buffer)
                    first = done - len(buffer)
                    dataset.storage.update_episode_metadata(
                        [{"behaviour_component": c} for c in components], range(first, done))
                    buffer, components = [], []
            seconds = time.perf_counter() - t0
            dataset.storage.update_metadata({"collection_seconds": round(seconds, 3),
                                             "collection_steps_per_s": round(steps / seconds, 1)})
            bar.close()
            _publish(tmp / dataset_id, root, dataset_id, overwrite,
                     f"LEDE gym datasets of {model} on the prompt set {prompts}:{split or 'all'}")
        except BaseException as e:
            bar.close()
            what = "interrupted" if isinstance(e, KeyboardInterrupt) else f"failed ({type(e).__name__}: {e})"
            kept = (f"the existing dataset at {final} was left as it was" if final.exists()
                    else f"nothing was stored under {final}")
            print(f"Collection of {dataset_id} {what} after {done} of {recipe.episodes} episodes: {kept} "
                  "(the partial data was removed).", file=sys.stderr)
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if own_env:
            env.close()
    with _datasets_path(root):
        dataset = minari.load_dataset(dataset_id)
    if progress:
        size = sum(f.stat().st_size for f in final.rglob("*") if f.is_file())
        print(f"Stored {dataset_id}: {dataset.total_episodes} episodes, {dataset.total_steps} steps, "
              f"{size / 1e6:.2f} MB, {steps / seconds:.0f} steps/s, at {final}")
    return dataset


# ================================================================================================= loading
@dataclass(frozen=True, eq=False)
class OfflineData:
    """Flat transition arrays of a LEDE dataset, ready for offline RL (``N`` steps, ``D`` features).

    ``observations`` / ``next_observations`` float32 ``[N, D]``; ``actions`` int64 ``[N]`` flat actions
    (``j * K + kidx``, the `lede_env.wrappers.FlattenAction` encoding); ``multi_actions`` int64 ``[N, 2]``
    (the ``MultiDiscrete`` pair); ``rewards`` float64 ``[N]`` for ``lam``; ``terminals`` / ``timeouts`` bool
    ``[N]``
    (Minari's terminations / truncations); ``episode_ids`` int64 ``[N]``; the reward's parts ``tokens``
    (int64), ``cost`` and ``c_ar`` (float64) for `rewards_for`. ``exit_layers``, ``spec_lengths`` and ``nvec``
    describe the actions; ``metadata`` is the dataset's metadata.
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

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def nvec(self) -> tuple[int, int]:
        return len(self.exit_layers), len(self.spec_lengths)

    @property
    def n_actions(self) -> int:
        return len(self.exit_layers) * len(self.spec_lengths)

    @property
    def dones(self) -> np.ndarray:
        return self.terminals | self.timeouts

    def rewards_for(self, lam: float) -> np.ndarray:
        """Rewards under another ``lam``: ``tokens - lam * cost / c_ar``."""
        return self.tokens - float(lam) * self.cost / self.c_ar


def recompute_rewards(infos: dict, lam: float) -> np.ndarray:
    """An episode's rewards from its stored infos (rows 1..T): ``tokens - lam * cost / c_ar``."""
    return np.asarray(infos["tokens"][1:], dtype=np.float64) - float(lam) * np.asarray(
        infos["cost"][1:], dtype=np.float64) / np.asarray(infos["c_ar"][1:], dtype=np.float64)


def check_compatible(metadata: dict, env: gym.Env, dataset_id: str = "the dataset") -> None:
    """Raise `DatasetMismatchError` naming every difference between a LEDE dataset's metadata and ``env``:
    environment version, action lists (exit layers, speculation lengths), observation layout."""
    if metadata.get("lede_format") is None:
        raise DatasetMismatchError(f"{dataset_id} is not a LEDE gym dataset (its metadata has no "
                                   "'lede_format'); collect one with `lede collect`.")
    if metadata["lede_format"] != LEDE_DATASET_FORMAT:
        raise DatasetMismatchError(f"{dataset_id} has LEDE dataset format {metadata['lede_format']}, this "
                                   f"code reads {LEDE_DATASET_FORMAT}: collect it again with this version.")
    base = env.unwrapped
    problems = []
    env_id = base.spec.id if base.spec is not None else "LEDE-v0"
    if metadata.get("env_version") != _env_version(env_id):
        problems.append(f"environment version: dataset {metadata.get('env_id')} "
                        f"(v{metadata.get('env_version')}), environment {env_id} (v{_env_version(env_id)})")
    if list(metadata["exit_layers"]) != list(base.exit_layers):
        problems.append(f"exit_layers: dataset {list(metadata['exit_layers'])}, environment "
                        f"{list(base.exit_layers)}")
    if list(metadata["spec_lengths"]) != list(base.config.spec_lengths):
        problems.append(f"spec_lengths: dataset {list(metadata['spec_lengths'])}, environment "
                        f"{list(base.config.spec_lengths)}")
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
    K = len(base.config.spec_lengths)
    names = ("obs", "next", "act", "rew", "term", "trunc", "ep", "tok", "cost", "car")
    cols: dict[str, list] = {k: [] for k in names}
    for ep in dataset.iterate_episodes():
        obs = np.asarray(ep.observations, dtype=np.float32)
        cols["obs"].append(obs[:-1])
        cols["next"].append(obs[1:])
        cols["act"].append(np.asarray(ep.actions, dtype=np.int64).reshape(-1, 2))
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
               "act": np.zeros((0, 2), np.int64), "rew": np.zeros(0), "term": np.zeros(0, bool),
               "trunc": np.zeros(0, bool), "ep": np.zeros(0, np.int64), "tok": np.zeros(0, np.int64),
               "cost": np.zeros(0), "car": np.ones(0)}
    multi = cat["act"]
    rewards = cat["rew"]
    if lam != float(metadata["lam"]):
        rewards = cat["tok"] - lam * cat["cost"] / cat["car"]
    return OfflineData(dataset_id=dataset_id, observations=cat["obs"], actions=multi[:, 0] * K + multi[:, 1],
                       multi_actions=multi, rewards=rewards, next_observations=cat["next"],
                       terminals=cat["term"],
                       timeouts=cat["trunc"], episode_ids=cat["ep"], tokens=cat["tok"], cost=cat["cost"],
                       c_ar=cat["car"], lam=lam, exit_layers=tuple(base.exit_layers),
                       spec_lengths=tuple(base.config.spec_lengths), metadata=metadata)
