"""What the trainers share (`agents.train_lede`, `agents.train_sb3`): the held-out evaluation, the output folders,
the training traces by name."""

from __future__ import annotations

from pathlib import Path

__all__ = ["evaluate_agent", "check_out_folder", "checkpoints_folder", "resolve_traces", "split_prompts",
           "HeldOutCheckpoints"]


def evaluate_agent(agent, env, prompts) -> dict:
    """Run ``agent`` greedily once on each prompt index of ``prompts`` in ``env`` (replay, profiled costs) and return
    ``{"speedup", "mean_return", "episodes"}``; the speedup is token-weighted (``sum N * c_ar / sum cost``, the
    convention of `lede_env.oracle` and `lede evaluate`)."""
    from lede_env.rollout import rollout

    tokens = cost = ret = 0.0
    for i in prompts:
        ep = rollout(env, agent, options={"prompt_index": int(i)}, info_keys=("tokens", "cost"))
        tokens += float(ep.info_array("tokens")[1:].sum())
        cost += float(ep.info_array("cost")[1:].sum())
        ret += ep.episode_return
    c_ar = float(env.unwrapped.c_ar)
    return {"speedup": tokens * c_ar / cost if cost > 0 else float("nan"),
            "mean_return": ret / max(len(prompts), 1), "episodes": len(prompts)}


def check_out_folder(out: str | Path, overwrite: bool) -> Path:
    """The folder a trainer saves its agent to: refused when it or its checkpoints folder exists (unless
    ``overwrite``, which removes the old checkpoints) or when it is not a saved agent."""
    from agents.base import CONFIG

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: pass --overwrite (overwrite=True) to replace it, or choose another "
                              "--out.")
    if out.exists() and not (out / CONFIG).is_file() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a saved agent: choose another --out.")
    ckpt = checkpoints_folder(out)
    if ckpt.exists():
        if not overwrite:
            raise FileExistsError(f"{ckpt} holds the checkpoints of an earlier run: pass --overwrite (overwrite=True) "
                                  "to replace them, or choose another --out.")
        import shutil

        shutil.rmtree(ckpt)
    return out


def checkpoints_folder(out: str | Path) -> Path:
    """Where a run's checkpoints go: ``<out>.checkpoints/`` beside the agent (each one a complete saved agent)."""
    out = Path(out)
    return out.with_name(out.name + ".checkpoints")


def resolve_traces(traces: str) -> str:
    """A trace file's path, or a prompt set's shipped traces by name (``"mixed:train"``:
    `lede_env.defaults.shipped_traces`)."""
    if Path(traces).suffix == ".npz" or Path(traces).exists():
        return str(traces)
    from lede_env.defaults import shipped_traces

    return str(shipped_traces(traces))


def split_prompts(n: int, heldout: int) -> tuple[list[int], list[int]]:
    """``(training prompts, held-out prompts)`` of ``n``: the last ``heldout`` are held out."""
    if not 0 <= heldout < n:
        raise ValueError(f"heldout must be in [0, {n - 1}] for traces of {n} prompts, got {heldout}.")
    return list(range(n - heldout)), list(range(n - heldout, n))


class HeldOutCheckpoints:
    """A training run's periodic evaluations: each one scores the agent on the held-out prompts
    (`evaluate_agent`), saves it as a checkpoint (``<out>.checkpoints/<unit>-<n>/``) and remembers the best;
    `finish` saves the best checkpoint as ``<out>`` with the run's log (``training.json``), atomically."""

    def __init__(self, out: str | Path, env, prompts, unit: str):
        import time

        self.out, self.env, self.prompts, self.unit = Path(out), env, list(prompts), unit
        self.history: list[dict] = []
        self.best: dict = {"speedup": float("-inf")}
        self._clock = time.perf_counter
        self.t0 = self._clock()

    @property
    def seconds(self) -> float:
        return round(self._clock() - self.t0, 2)

    def evaluate(self, agent, step: int) -> dict:
        """Score ``agent`` at ``step`` (updates or timesteps), checkpoint it and return the result."""
        result = dict(evaluate_agent(agent, self.env, self.prompts), **{self.unit: int(step)}, seconds=self.seconds)
        self.history.append(result)
        folder = agent.save(checkpoints_folder(self.out) / f"{self.unit.rstrip('s')}-{int(step)}")
        if result["speedup"] > self.best["speedup"] or "folder" not in self.best:   # NaN scores: the latest
            self.best = dict(result, folder=str(folder))
        return result

    def finish(self, env, trained: dict, log: dict) -> Path:
        """Save the best checkpoint, with ``trained`` (plus its step and held-out speedup) recorded in its config, as
        ``<out>``; ``log`` (plus the evaluations, the choice and the time) goes to ``<out>/training.json``."""
        import json

        from agents.base import load

        if not self.history:
            raise RuntimeError("No evaluation was made: nothing to choose from.")
        chosen = load(self.best["folder"], env)
        chosen.trained = dict(trained, **{self.unit: self.best[self.unit]}, heldout_prompts=self.prompts,
                              heldout_speedup=round(self.best["speedup"], 4))
        log = dict(log, evaluations=self.history, chosen=self.best, seconds=self.seconds)
        return chosen.save(self.out, extra={"training.json": json.dumps(log, indent=1, default=str)})
