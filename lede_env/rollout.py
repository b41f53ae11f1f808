"""The one episode loop: `rollout(env, agent)` runs one episode of any Gymnasium environment with any agent
that has the stable-baselines3 ``predict(obs, state, episode_start, deterministic)`` signature, and returns
what happened as an `Episode`. Dataset collection, evaluation, the benchmarks and the tests all call it.

Optional agent hooks (DESIGN.md section 4), called when the agent has them:
  ``reset(info)``    after ``env.reset``, with the reset's info
  ``observe(info)``  after every ``env.step``, with the step's info
The recurrent ``state`` returned by ``predict`` is passed back on the next call; ``episode_start`` is
``[True]`` on the first call of an episode only.

This module knows no agent class and no model: it uses the Gymnasium API and ``predict`` only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np


@dataclass(frozen=True, eq=False)
class Episode:
    """One episode: ``T`` steps, ``T + 1`` observations and infos (row 0 from ``reset``).

    ``infos`` keeps, per row, the keys ``info_keys`` asked for (all keys when it was None).
    ``predict_seconds`` is the agent's own time in ``predict`` (and its hooks), summed over the episode."""

    seed: int | None
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    infos: list[dict[str, Any]] = field(repr=False)
    predict_seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def steps(self) -> int:
        return len(self.rewards)

    @property
    def episode_return(self) -> float:
        return float(np.sum(self.rewards))

    def info_array(self, key: str, dtype=None) -> np.ndarray:
        """``infos[i][key]`` for every row, as one array."""
        return np.array([row[key] for row in self.infos], dtype=dtype)


def default_max_steps(env: gym.Env) -> int | None:
    """A bound no LEDE episode can reach (each step produces at least one token), else None."""
    budget = getattr(env.unwrapped, "max_new_tokens", None)
    return None if budget is None else 4 * int(budget) + 16


def rollout(env: gym.Env, agent, *, seed: int | None = None, options: dict | None = None,
            deterministic: bool = True, info_keys: Sequence[str] | None = None, max_steps: int | None = None,
            on_step: Callable[[int, dict], None] | None = None) -> Episode:
    """Run one episode of ``env`` acted by ``agent`` and return it.

    Args:
        env: any Gymnasium environment (wrapped or not).
        agent: an object with ``predict(obs, state, episode_start, deterministic) -> (action, state)``;
            optionally ``reset(info)`` and ``observe(info)`` (module docstring).
        seed, options: passed to ``env.reset``.
        deterministic: passed to ``predict``.
        info_keys: the info keys to keep per row (default: all; a LEDE info holds the whole generated text, so
            long loops keep only what they need).
        max_steps: raise ``RuntimeError`` past this many steps (default: `default_max_steps`, a bound a
            working LEDE environment never reaches; None for an environment without ``max_new_tokens``).
        on_step: called as ``on_step(step_index, info)`` after every step (progress bars, logging).
    """
    if not callable(getattr(agent, "predict", None)):
        raise TypeError(f"The agent must have a stable-baselines3 predict(obs, state, episode_start, "
                        f"deterministic) method, got {agent!r}.")
    limit = max_steps if max_steps is not None else default_max_steps(env)
    keep = (lambda info: dict(info)) if info_keys is None else (lambda info: {k: info[k] for k in info_keys})
    reset_hook, observe_hook = getattr(agent, "reset", None), getattr(agent, "observe", None)
    reset_hook = reset_hook if callable(reset_hook) else None
    observe_hook = observe_hook if callable(observe_hook) else None

    obs, info = env.reset(seed=seed, options=options)
    clock = time.perf_counter
    t_agent = 0.0
    if reset_hook is not None:
        t0 = clock()
        reset_hook(info)
        t_agent += clock() - t0
    observations, actions, rewards, terms, truncs, infos = [obs], [], [], [], [], [keep(info)]
    state, start = None, True
    while True:
        t0 = clock()
        action, state = agent.predict(obs, state=state, episode_start=np.array([start]), deterministic=deterministic)
        t_agent += clock() - t0
        start = False
        obs, reward, term, trunc, info = env.step(action)
        if observe_hook is not None:
            t0 = clock()
            observe_hook(info)
            t_agent += clock() - t0
        observations.append(obs)
        actions.append(np.asarray(action))
        rewards.append(float(reward))
        terms.append(bool(term))
        truncs.append(bool(trunc))
        infos.append(keep(info))
        if on_step is not None:
            on_step(len(rewards) - 1, info)
        if term or trunc:
            break
        if limit is not None and len(rewards) >= limit:
            raise RuntimeError(f"An episode ran {limit} steps without ending: the environment or the agent is "
                               "broken (every LEDE step produces at least one token).")
    return Episode(seed=seed, observations=np.stack(observations), actions=np.stack(actions),
                   rewards=np.array(rewards, dtype=np.float64), terminations=np.array(terms, dtype=bool),
                   truncations=np.array(truncs, dtype=bool), infos=infos, predict_seconds=t_agent)
