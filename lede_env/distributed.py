"""Work split by prompt over Ray (`lede trace --ray [ADDRESS]`): one worker actor per model copy, loaded once, each
handed one prompt at a time; the driver merges the results by prompt index into the same artefact the
single-process path writes.

Ray gives the cluster, the actors and the retries; what is written here is only the split by prompt and the merge,
which no library does for these artefacts. Fault tolerance: the actors are created with ``max_restarts=-1`` and
``max_task_retries=-1``, so a worker process that dies mid-task is restarted (the model loaded again) and its task
run again; the driver keys every result by its prompt index and accepts each index once, so no prompt is lost or
duplicated. Ray is an optional extra (``pip install '.[ray]'``); this module imports it only when it is used.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

LOCAL = "local"      # `--ray` without an address: start a one-machine cluster


def require_ray():
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError("--ray needs Ray, an optional extra: pip install '.[ray]' (or pip install ray).") from None
    return ray


def init_ray(address: str = LOCAL, num_cpus: int | None = None):
    """Connect to the cluster at ``address`` (``"local"``: start a one-machine cluster with ``num_cpus`` CPUs) unless
    this process is connected already. Returns the ``ray`` module."""
    ray = require_ray()
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address == LOCAL:
            ray.init(num_cpus=num_cpus, **kw)
        else:
            ray.init(address=address, **kw)
    return ray


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


class PromptPool:
    """``workers`` Ray actors, each holding ``factory()`` (a model and what works on it, built once per worker), with
    ``threads`` torch threads (None: torch is left alone) and as many Ray CPUs (one when ``threads`` is None)."""

    def __init__(self, factory: Callable[[], Any], workers: int = 2, address: str = LOCAL, threads: int | None = 1):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}.")
        cpus = threads or 1
        ray = init_ray(address, num_cpus=workers * cpus if address == LOCAL else None)
        self._ray = ray
        actor = ray.remote(num_cpus=cpus, max_restarts=-1,
                           max_task_retries=-1)(_Worker)
        self.actors = [actor.remote(factory, threads) for _ in range(workers)]

    def call_one(self, method: str, *args):
        """``method(*args)`` on the first worker (what the driver needs to know of the model: its description)."""
        return self._ray.get(self.actors[0].call.remote(method, *args))

    def pids(self) -> list[int]:
        """The workers' process ids (the test kills one)."""
        return self._ray.get([a.pid.remote() for a in self.actors])

    def map(self, method: str, items: Iterable[int], on_result: Callable[[int, Any], None],
            on_submit: Callable[[int, int], None] | None = None) -> dict[int, Any]:
        """Call ``method(i)`` for every ``i`` of ``items``, one in flight per worker, and ``on_result(i, result)`` as
        each finishes (in the driver, in completion order); ``on_submit(i, worker)`` as each is handed to a worker
        (by its index in ``actors``). Returns ``{i: result}``; each ``i`` is accepted once."""
        ray = self._ray
        todo = list(dict.fromkeys(items))[::-1]
        running: dict[Any, tuple[int, Any]] = {}
        results: dict[int, Any] = {}

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
            value = ray.get(ref)
            if i not in results:
                results[i] = value
                on_result(i, value)
            submit(actor)
        return results

    def close(self) -> None:
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []
