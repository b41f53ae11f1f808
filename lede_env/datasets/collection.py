"""Collection: ``recipe.episodes`` episodes of the recipe's environment, acted by a policy it is given, written
into a Minari dataset that appears under its id only when complete (`lede_env.datasets.publish`).

Episodes are run by the project's one episode loop, `lede_env.rollout.rollout` (with the agents' optional
``reset(info)`` / ``observe(info)`` hooks), and turned into `minari.data_collector.EpisodeBuffer` objects (plain
numpy, no jax), written in chunks with ``create_dataset_from_buffers`` / ``update_dataset_from_buffer``.

Ctrl-C. With Python's default SIGINT handler, ``KeyboardInterrupt`` is raised in whatever Python code runs at that
moment, and during a collection that is often a finalizer (h5py's and Minari's objects are closed by weakref
callbacks when the garbage collector runs): Python then prints ``Exception ignored in ... KeyboardInterrupt`` and
the collection goes on, or h5py is left holding its lock and the next write hangs. So for the duration of a
collection SIGINT only sets a flag (`_Interrupts`), and the collection loop raises ``KeyboardInterrupt`` itself, at
a point of its own choosing: after a step, between episodes, before a write and before publishing. The dataset
is never half-published: one Ctrl-C stops the collection with the complete dataset (when it came during the final
rename) or nothing under the id. A second Ctrl-C outside the writes raises at once (an escape hatch for a policy
or environment step that hangs).

Ray. With ``ray`` the episodes run on Ray workers (`lede_env.distributed.PromptPool`), a few per task, each worker
with its own environment and behaviour; the driver appends them in episode order, so the dataset holds what a
single-process collection writes. That needs a recipe whose episodes are independent (``behaviour_seeding =
"episode"``: the behaviour's ``restart(seed)`` before every episode).

Errors. An ``OSError`` while writing (a full disk, an HDF5 error) names the dataset's folder under the datasets
root, never the hidden temporary one it was written in.

Phase markers (for tests of the above, off by default): with ``LEDE_COLLECT_MARKERS=1`` in the environment the
collection writes ``EPISODE <n>`` (an episode starts), ``WRITE`` (a chunk of episodes is written) and ``PUBLISH``
(the dataset is complete and about to be moved into place: there it waits up to 2 s for a Ctrl-C) to stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from functools import partial

import gymnasium as gym
import numpy as np

from lede_env.datasets.ids import NAME_RE, source_of
from lede_env.datasets.metadata import FLOAT_KEYS, code_permalink, info_keys, lede_metadata, requirements
from lede_env.datasets.publish import (PARTIAL_PREFIX, check_writable, clean_stale, datasets_path, datasets_root,
                                       publish, temp_name)
from lede_env.datasets.recipe import Recipe
from lede_env.distributed import InProcess, PromptPool
from lede_env.rollout import Episode, default_max_steps, rollout

__all__ = ["collect", "episode_buffer"]

_CHUNK_EPISODES = 256          # episodes buffered in memory before they are appended to the temporary dataset
_MARKERS_ENV = "LEDE_COLLECT_MARKERS"
_TASK_EPISODES = 32            # at most this many episodes per Ray task


def _marker(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _user_paths(e: OSError, tmp, root, dataset_id: str) -> OSError:
    """``e`` with the hidden temporary root ``tmp`` in its message replaced by the datasets root ``root`` (so the
    path named is where the dataset goes); ``e`` itself when it names no such path."""
    text = str(e)
    fixed = text.replace(str(tmp / dataset_id), str(root / dataset_id)).replace(str(tmp), str(root))
    if fixed == text:
        return e
    err = type(e)(f"Cannot write the dataset {dataset_id}: {fixed}")
    err.errno = e.errno
    return err


class _Interrupts:
    """SIGINT as a flag while installed (module docstring). ``check()`` raises ``KeyboardInterrupt`` when one came;
    inside ``critical()`` even a second Ctrl-C waits for the end of the block. Installed only in the main thread
    and only over Python's default handler (a caller's own handler, or SIG_IGN, is left alone)."""

    def __init__(self) -> None:
        self.pending = False
        self._critical = 0
        self._old = None
        self.installed = False

    def __enter__(self) -> "_Interrupts":
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._old = signal.signal(signal.SIGINT, self._handle)
            self.installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self._old)
            self.installed = False

    def _handle(self, signum, frame) -> None:
        if self.pending and not self._critical:
            raise KeyboardInterrupt
        self.pending = True

    def check(self) -> None:
        if self.pending:
            raise KeyboardInterrupt

    @contextmanager
    def critical(self):
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1


def _report_failure(e: BaseException, dataset_id: str, done: int, episodes: int, final, bar) -> None:
    bar.close()
    what = "interrupted" if isinstance(e, KeyboardInterrupt) else f"failed ({type(e).__name__}: {e})"
    old = getattr(e, "old_data", None)
    if old is not None:
        kept = f"the dataset it was to replace is kept at {old}"
    elif final.exists():
        kept = f"the existing dataset at {final} was left as it was"
    else:
        kept = f"nothing was stored under {final}"
    print(f"Collection of {dataset_id} {what} after {done} of {episodes} episodes: {kept} "
          "(the partial data was removed).", file=sys.stderr)


def episode_buffer(ep: Episode, keys: tuple[str, ...]):
    """A `rollout` `Episode` as Minari's `EpisodeBuffer`: float32 observations, int64 ``[T, 2]`` actions (``[T, 3]`` with
    stop rules) and the
    info ``keys`` as arrays (float64 for costs and times, int64 otherwise)."""
    from minari.data_collector import EpisodeBuffer

    infos = {k: np.array([row[k] for row in ep.infos], dtype=np.float64 if k in FLOAT_KEYS else np.int64)
             for k in keys}
    return EpisodeBuffer(seed=None if ep.seed is None else int(ep.seed),
                         observations=ep.observations.astype(np.float32),
                         actions=np.asarray(ep.actions, dtype=np.int64).reshape(len(ep), -1),
                         rewards=ep.rewards.tolist(), terminations=ep.terminations.tolist(),
                         truncations=ep.truncations.tolist(), infos=infos)


class _Episodes:
    """Runs episode ``i`` of a collection on an environment and a behaviour built once (in this process, or in a Ray
    worker): its reset seed, and with per-episode behaviour seeding its restart. Returns the episode as Minari's
    buffer, the acting mixture component (-1: none) and the number of steps."""

    def __init__(self, env: gym.Env, agent, seeds: list[int], behaviour_seeds: list[int] | None, keys, max_steps,
                 on_step=None, markers: bool = False):
        self.env, self.agent, self.seeds, self.behaviour_seeds = env, agent, seeds, behaviour_seeds
        self.keys, self.max_steps, self.on_step, self.markers = keys, max_steps, on_step, markers

    @classmethod
    def build(cls, recipe: Recipe, agent_factory) -> "_Episodes":
        """A Ray worker's: the recipe's environment and ``agent_factory(env)``."""
        env = recipe.make_env()
        return cls(env, agent_factory(env), recipe.episode_seeds(), recipe.behaviour_seeds(), info_keys(env),
                   default_max_steps(env))

    def episodes(self, task: tuple[int, int]) -> list:
        """`episode` of ``first`` ... ``first + count - 1`` for ``task = (first, count)``: a Ray task's share (fewer
        round trips; one episode in this process)."""
        first, count = task
        return [self.episode(i) for i in range(first, first + count)]

    def episode(self, i: int):
        if self.markers:
            _marker(f"EPISODE {i}")
        if self.behaviour_seeds is not None:
            self.agent.restart(self.behaviour_seeds[i])
        ep = rollout(self.env, self.agent, seed=self.seeds[i], deterministic=False, info_keys=self.keys,
                     max_steps=self.max_steps, on_step=self.on_step)
        component = getattr(self.agent, "component", None)
        return episode_buffer(ep, self.keys), -1 if component is None else int(component), len(ep)


def _check_restart(recipe: Recipe, agent) -> None:
    if recipe.behaviour_seeding == "episode" and not callable(getattr(agent, "restart", None)):
        raise TypeError(f"The recipe restarts its behaviour in every episode (behaviour_seeding = 'episode'), but "
                        f"{agent!r} has no restart(seed) method (agents.base.Agent.restart): add one, or use "
                        "behaviour_seeding = 'stream'.")


def collect(recipe: Recipe, agent, env: gym.Env | None = None, name: str | None = None, overwrite: bool = False,
            progress: bool = True, ray: str | None = None, workers: int = 2, threads: int | None = None):
    """Collect ``recipe.episodes`` episodes acted by ``agent`` into a Minari dataset and return it
    (`minari.MinariDataset`). To collect a recipe with its own behaviour, use
    `agents.behaviour.collect_recipe` (it builds the agent, seeded with `Recipe.behaviour_seed`, and calls this).

    ``agent``: the behaviour policy: any object with the stable-baselines3
    ``predict(obs, state=None, episode_start=None, deterministic=True) -> (action, state)`` (called with
    ``deterministic=False``), or a function ``env -> policy`` (called once the dataset id is known to be free).
    Optional: ``reset(info)`` after each ``env.reset`` and ``observe(info)`` after each ``env.step``; ``name``
    and ``config()`` (JSON-safe) for the metadata; ``component`` (the index of the mixture component acting in this
    episode, read at the end of the episode). The dataset is as reproducible as the agent.
    ``env``: the recipe's environment if already made (``recipe.make_env()``; it is not closed), else one is made
    (after the dataset id is checked when the recipe alone fixes it: `Recipe.dataset_id_before_env`, so a live
    backend refuses an existing dataset before loading the model) and closed. ``name``: the behaviour part of the dataset id when the recipe sets neither ``name`` nor
    ``dataset_id`` (default: the behaviour's ``kind``).
    ``overwrite``: replace an existing dataset with the same id (otherwise refuse with ``FileExistsError``).
    ``progress``: a progress bar, and a final line saying where the dataset was stored.
    ``ray``: run the episodes on ``workers`` Ray workers (`lede_env.distributed.PromptPool`, a Ray address or
    ``"local"``), each with its own environment and behaviour, built once, and ``threads`` torch threads (None: torch
    left alone, right for a replay backend); the driver still makes one environment for the metadata (a live
    backend loads the model there too). Needs ``behaviour_seeding = "episode"`` and ``agent`` as a function
    ``env -> policy``; the dataset is the same, byte for byte in its data, as without Ray.
    The dataset appears under its id only when complete (module docstring of `lede_env.datasets`); on an
    interruption (Ctrl-C: one is enough, see this module's docstring) or error the partial data is removed, a
    message is printed to stderr and the exception propagates.
    """
    import minari
    from tqdm import tqdm

    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a lede_env.datasets.Recipe (Recipe.from_toml(path)), got {recipe!r}.")
    factory = not hasattr(agent, "predict") and callable(agent)
    if not factory and not callable(getattr(agent, "predict", None)):
        raise TypeError(f"agent must have a stable-baselines3 predict method, got {agent!r}.")
    if name is not None and (not isinstance(name, str) or not NAME_RE.fullmatch(name)):
        raise ValueError(f"name {name!r} may only hold letters, digits, '-' and '_'.")
    if ray is not None:
        if recipe.behaviour_seeding != "episode":
            raise ValueError("This recipe seeds its behaviour once for all episodes (behaviour_seeding = 'stream', the "
                             "default): its episodes must run in order, so they cannot be split over Ray workers. Add "
                             "behaviour_seeding = \"episode\" to the recipe (a different dataset: every episode then "
                             "restarts the behaviour with its own seed), or collect without --ray.")
        if not factory:
            raise TypeError("With ray, agent must be a function env -> policy (each worker builds its own).")
    root = datasets_root()
    markers = os.environ.get(_MARKERS_ENV) == "1"
    dataset_id = recipe.dataset_id_before_env(name)     # before a live environment loads the model
    final = None if dataset_id is None else check_writable(dataset_id, overwrite)
    own_env = env is None
    env = recipe.make_env() if own_env else env
    try:
        if dataset_id is None:
            dataset_id = recipe.resolve_dataset_id(env, name)
            final = check_writable(dataset_id, overwrite)
        agent_factory = agent if factory else None
        if factory:
            agent = agent(env)
            if not callable(getattr(agent, "predict", None)):
                raise TypeError(f"the agent factory must return a policy with a predict method, got {agent!r}.")
        _check_restart(recipe, agent)
        seeds = recipe.episode_seeds()
        keys = info_keys(env)
        max_steps = default_max_steps(env)
        algorithm = getattr(agent, "name", type(agent).__name__)
        if hasattr(agent, "config"):
            algorithm = f"{algorithm}: {json.dumps(agent.config())}"
        model, prompts, split = source_of(env)
        description = recipe.description or (
            f"{recipe.env_id} episodes ({env.unwrapped.config.backend} backend, {model}, prompts "
            f"{prompts}:{split or 'all'}) under the behaviour policy {algorithm}.")

        with _Interrupts() as interrupts:
            clean_stale(root)
            tmp = root / temp_name(PARTIAL_PREFIX)
            try:
                tmp.mkdir(parents=True)
            except OSError as e:
                raise type(e)(e.errno, f"Cannot write the dataset {dataset_id} under {root}: {e.strerror or e}"
                              ) from None
            done = steps = 0
            t0 = time.perf_counter()
            bar = tqdm(total=recipe.episodes, desc=f"collecting {dataset_id}", unit="ep", disable=not progress,
                       dynamic_ncols=True)
            pool = None
            try:
                dataset = None
                buffer: list = []
                components: list[int] = []
                arrived: dict[int, tuple] = {}       # finished episodes not yet appended (Ray: any order)
                if ray is None:
                    after_step = lambda i, info: interrupts.check()  # noqa: E731
                    runner = _Episodes(env, agent, seeds, recipe.behaviour_seeds(), keys, max_steps, after_step,
                                       markers)
                    pool = InProcess(lambda: runner)
                else:
                    pool = PromptPool(partial(_Episodes.build, recipe, agent_factory), workers=workers,
                                      address=ray, threads=threads)

                def on_result(i: int, result) -> None:
                    nonlocal dataset, buffer, components, done, steps
                    arrived[i] = result
                    steps += result[2]
                    bar.update(1)
                    bar.set_postfix(steps=steps, steps_per_s=f"{steps / (time.perf_counter() - t0):.0f}",
                                    refresh=False)
                    interrupts.check()
                    while done in arrived:           # the episodes in order, as far as they have arrived
                        buf, component, _ = arrived.pop(done)
                        buffer.append(buf)
                        components.append(component)
                        done += 1
                    if buffer and (len(buffer) >= _CHUNK_EPISODES or done == recipe.episodes):
                        interrupts.check()
                        if markers:
                            _marker("WRITE")
                        with interrupts.critical():
                            if dataset is None:
                                with datasets_path(tmp), warnings.catch_warnings():
                                    warnings.filterwarnings("ignore", message=".*author_email.*")
                                    dataset = minari.create_dataset_from_buffers(
                                        dataset_id, buffer, env=env, eval_env=env, algorithm_name=algorithm,
                                        author=recipe.author, author_email=recipe.author_email,
                                        code_permalink=recipe.code_permalink or code_permalink(),
                                        description=description, data_format="hdf5",
                                        requirements=requirements())
                                dataset.storage.update_metadata(lede_metadata(env, recipe, agent,
                                                                              buffer[0].infos["c_ar"][0]))
                            else:
                                dataset.update_dataset_from_buffer(buffer)
                            first = done - len(buffer)
                            dataset.storage.update_episode_metadata(
                                [{"behaviour_component": c} for c in components], range(first, done))
                        buffer, components = [], []

                # on Ray, tasks of a few episodes each: a replay episode takes milliseconds, a round trip one
                share = 1 if ray is None else max(1, min(_TASK_EPISODES, recipe.episodes // (8 * workers)))
                pool.map("episodes", [(first, min(share, recipe.episodes - first))
                                      for first in range(0, recipe.episodes, share)],
                         lambda task, results: [on_result(task[0] + j, r) for j, r in enumerate(results)],
                         keep=False)
                seconds = time.perf_counter() - t0
                interrupts.check()
                with interrupts.critical():
                    dataset.storage.update_metadata({"collection_seconds": round(seconds, 3),
                                                     "collection_steps_per_s": round(steps / seconds, 1)})
                    dataset = None   # let h5py close its files before the folder moves
                    bar.close()
                    interrupts.check()
                    if markers:
                        _marker("PUBLISH")
                        for _ in range(200):          # a test's Ctrl-C comes now, while publishing
                            if interrupts.pending:
                                break
                            time.sleep(0.01)
                    publish(tmp / dataset_id, root, dataset_id, overwrite,
                            f"LEDE gym datasets of {model} on the prompt set {prompts}:{split or 'all'}")
            except OSError as e:
                err = _user_paths(e, tmp, root, dataset_id)
                _report_failure(err, dataset_id, done, recipe.episodes, final, bar)
                if err is e:
                    raise
                raise err from None
            except BaseException as e:
                _report_failure(e, dataset_id, done, recipe.episodes, final, bar)
                raise
            finally:
                with interrupts.critical():
                    if pool is not None:
                        pool.close()
                    shutil.rmtree(tmp, ignore_errors=True)
            if own_env:
                env.close()
                own_env = False
            with datasets_path(root):
                dataset = minari.load_dataset(dataset_id)
            if progress:
                size = sum(f.stat().st_size for f in final.rglob("*") if f.is_file())
                print(f"Stored {dataset_id}: {dataset.total_episodes} episodes, {dataset.total_steps} steps, "
                      f"{size / 1e6:.2f} MB, {steps / seconds:.0f} steps/s, at {final}")
            if interrupts.pending:    # Ctrl-C during the final rename or after it: the dataset is complete
                print(f"Collection of {dataset_id} interrupted once stored: the complete dataset is at {final}.",
                      file=sys.stderr)
                raise KeyboardInterrupt
    finally:
        if own_env:
            env.close()
    return dataset
