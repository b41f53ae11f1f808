"""Work split over Ray (`lede trace/collect/evaluate/bench --ray [ADDRESS]`): one worker actor per model copy, built
once, each handed one item (a prompt, a few episodes, one agent on one prompt set) at a time; the driver merges
the results by item into the same artefact the single-process path writes.

Ray gives the cluster, the actors and the retries; what is written here is only the split and the merge, which no
library does for these artefacts. Fault tolerance: the actors are created with ``max_restarts`` and
``max_task_retries`` of `RETRIES`, so a worker process that dies mid-task (killed, out of memory) is restarted, its
object rebuilt (the model loaded again) and its task run again; the driver keys every result by its item and
accepts each once, so none is lost or duplicated. A task that kills its worker every time stops the run after
`RETRIES` attempts with an error, instead of looping. A worker whose object cannot be built (exit heads missing a
layer, say), or whose task raises, raises that error in the driver.

On several machines every node must see the same paths (model directory, exit heads, traces, profiles): a shared
filesystem, or the same install everywhere. Ray is an optional extra (``pip install '.[ray]'``); this module imports
it only when it is used.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

LOCAL = "local"      # `--ray` without an address: start a one-machine cluster
RETRIES = 3          # restarts of a worker, and attempts of a task whose worker died


def require_ray():
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError("--ray needs Ray, an optional extra: pip install '.[ray]' (or pip install ray).") from None
    return ray


def init_ray(address: str = LOCAL, num_cpus: int | None = None) -> bool:
    """Connect to the cluster at ``address`` (``"local"``: start a new one-machine cluster with ``num_cpus`` CPUs,
    never joining one that runs already) unless this process is connected. Returns whether it connected now."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address == LOCAL:
        ray.init(address="local", num_cpus=num_cpus, **kw)
    else:
        ray.init(address=address, **kw)
    return True


class _Worker:
    """The actor: builds its object once with ``factory()`` and calls its methods by name."""

    def __init__(self, factory: Callable[[], Any], threads: int | None):
        if threads is not None:      # work without a model (replay evaluation) leaves torch unimported
            import torch

            torch.set_num_threads(threads)
        self.obj = factory()

    def call(self, method: str, *args):
        return getattr(self.obj, method)(*args)

    def pid(self) -> int:
        return os.getpid()


class InProcess:
    """`PromptPool`'s interface over one object built here, in this process: the single-process path of the same
    code."""

    def __init__(self, factory: Callable[[], Any]):
        self.obj = factory()

    def call_one(self, method: str, *args):
        return getattr(self.obj, method)(*args)

    def map(self, method: str, items: Iterable[Any], on_result: Callable[[Any, Any], None],
            keep: bool = True) -> dict[int, Any]:
        results: dict[int, Any] = {}
        for i in dict.fromkeys(items):
            value = getattr(self.obj, method)(i)
            if keep:
                results[i] = value
            on_result(i, value)
        return results

    def close(self) -> None:
        pass


class PromptPool:
    """``workers`` Ray actors, each holding ``factory()`` (a model and what works on it, built once per worker), with
    ``threads`` torch threads (None: torch is left alone) and as many Ray CPUs (one when ``threads`` is None).
    Refuses a cluster with fewer CPUs than that (the actors that do not fit would never start). `close` kills the
    actors and shuts Ray down if the pool started it."""

    def __init__(self, factory: Callable[[], Any], workers: int = 2, address: str = LOCAL, threads: int | None = 1):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}.")
        cpus = threads or 1
        self._started = init_ray(address, num_cpus=workers * cpus if address == LOCAL else None)
        ray = self._ray = require_ray()
        have = ray.cluster_resources().get("CPU", 0)
        if have < workers * cpus:
            self.close()
            raise ValueError(f"The Ray cluster has {have:g} CPUs; {workers} workers x {cpus} CPUs need "
                             f"{workers * cpus}: use fewer --workers or --worker-threads, or a bigger cluster.")
        self._factory = ray.put(factory)         # kept alive here: restarted workers rebuild from it
        actor = ray.remote(num_cpus=cpus, max_restarts=RETRIES, max_task_retries=RETRIES)(_Worker)
        self.actors = [actor.remote(self._factory, threads) for _ in range(workers)]

    def _get(self, ref):
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:      # the task raised: the same error here
            raise e.cause if isinstance(e.cause, Exception) else e from None
        except ray.exceptions.ActorDiedError as e:
            msg = (getattr(e, "error_msg", "") or str(e)).strip().splitlines()
            if getattr(e, "_actor_init_failed", False):
                raise ValueError(f"A Ray worker could not start: {msg[-1] if msg else e}") from None
            raise RuntimeError(f"A Ray worker died {RETRIES + 1} times on the same task; the last time: "
                               f"{msg[-1] if msg else e}") from None

    def call_one(self, method: str, *args):
        """``method(*args)`` on the first worker (what the driver needs to know of the model: its description)."""
        return self._get(self.actors[0].call.remote(method, *args))

    def pids(self) -> list[int]:
        """The workers' process ids (the test kills one)."""
        return [self._get(a.pid.remote()) for a in self.actors]

    def map(self, method: str, items: Iterable[Any], on_result: Callable[[Any, Any], None],
            on_submit: Callable[[int, int], None] | None = None, keep: bool = True) -> dict[int, Any]:
        """Call ``method(i)`` for every ``i`` of ``items``, one in flight per worker, and ``on_result(i, result)`` as
        each finishes (in the driver, in completion order); ``on_submit(i, worker)`` as each is handed to a worker
        (by its index in ``actors``). Returns ``{i: result}`` (empty with ``keep=False``: ``on_result`` keeps what it
        needs); each ``i`` is accepted once."""
        ray = self._ray
        todo = list(dict.fromkeys(items))[::-1]
        running: dict[Any, tuple[int, Any]] = {}
        results: dict[int, Any] = {}
        seen: set[int] = set()

        def submit(actor) -> None:
            if todo:
                i = todo.pop()
                running[actor.call.remote(method, i)] = (i, actor)
                if on_submit is not None:
                    on_submit(i, self.actors.index(actor))

        for a in self.actors:
            submit(a)
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            i, actor = running.pop(ref)
            value = self._get(ref)
            if i not in seen:
                seen.add(i)
                if keep:
                    results[i] = value
                on_result(i, value)
            submit(actor)
        return results

    def close(self) -> None:
        for a in getattr(self, "actors", []):
            self._ray.kill(a)
        self.actors = []
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
            self._started = False
