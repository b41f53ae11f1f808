"""The hindsight oracle as an agent (replay backend only): the ceiling every agent is measured against.

Source: DESIGN.md section 2. The dynamic programme over a trace's positions (`lede_env.oracle.policy_table`) gives
the optimal action from every pending position, so the agent plays it from wherever the episode is: on the optimal
path, or off it after a random action (the epsilon-oracle behaviour of the datasets). With stop rules it covers the
three-component action space (the optimum is the same: `lede_env.oracle.solve`).

It needs the episode's trace and position, which the observation does not carry: `lede_env.rollout.rollout` calls
``reset(info)`` after ``env.reset`` and ``observe(info)`` after each ``env.step``; the position is
``len(info["generated_ids"]) - 1`` (the pending token) and the prompt ``info["prompt_index"]`` (the index of the
trace in the environment's trace set). Without those hooks (``evaluate_policy``) ``predict`` raises a clear error.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from agents.base import Agent, child_seed, register


def replay_traces(env):
    """The environment's traces as the agent sees them: one per prompt index, restricted to the environment's exit
    layers. Raises ``ValueError`` unless ``env`` is a replay environment (the documented ``config.backend`` and
    ``config.traces``)."""
    from lede_env.traces import TraceSet

    base = env.unwrapped
    if getattr(base.config, "backend", None) != "replay":
        raise ValueError("The oracle needs the replay backend (a trace per prompt): make the environment with "
                         "backend='replay', traces=...")
    exits = tuple(base.exit_layers)
    return [_restrict(tr, exits, i) for i, tr in enumerate(TraceSet.load(base.config.traces).traces)]


def _restrict(trace, exit_layers: tuple[int, ...], index: int):
    """The trace seen by an environment with ``exit_layers`` (a subset of the recorded ones) whose prompt ``index``
    it is: the oracle's exit columns must be the environment's."""
    if tuple(trace.exit_layers) == tuple(exit_layers) and trace.prompt_index == index:
        return trace
    cols = [trace.layer_index(L) for L in exit_layers]
    first = {f"first_{n}": getattr(trace, f"first_{n}")[:, cols] for n in ("tokens", "maxprob", "entropy")} \
        if trace.has_first else {}
    return replace(trace, prompt_index=index, exit_layers=tuple(exit_layers), draft_tokens=trace.draft_tokens[:, cols],
                   draft_maxprob=trace.draft_maxprob[:, cols], draft_entropy=trace.draft_entropy[:, cols], **first)


@register
class OracleAgent(Agent):
    """The hindsight-optimal policy of each trace; with ``epsilon > 0`` and ``deterministic=False``, a uniform random
    action with probability ``epsilon`` per step (the epsilon-oracle behaviour policy). Needs ``reset``/``observe``
    (module docstring). Single environment only."""

    kind = "oracle"

    def __init__(self, env, epsilon: float = 0.0, seed: int | None = None):
        from lede_env.oracle import check_lam

        if not 0.0 <= float(epsilon) <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}.")
        self.traces = replay_traces(env)
        self.bind(env)
        base = env.unwrapped
        check_lam(base.config.lam, optimise=True)
        if self.spec.cost_table is None:
            raise ValueError("The oracle needs the profiled cost table (cost_model='profile').")
        self.epsilon = float(epsilon)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._policies: dict[int, np.ndarray] = {}
        self.position: int | None = None
        self.policy: np.ndarray | None = None

    def policy_of(self, prompt_index: int) -> np.ndarray:
        """The optimal action at every pending position of prompt ``prompt_index`` (solved once, then cached)."""
        from lede_env.oracle import policy_table

        if prompt_index not in self._policies:
            if not 0 <= prompt_index < len(self.traces):
                raise KeyError(f"No trace for prompt_index {prompt_index}: the trace set has {len(self.traces)}.")
            self._policies[prompt_index] = policy_table(self.traces[prompt_index], self.spec.cost_table,
                                                        self.lists.spec_lengths, self.lists.stop_rules)
        return self._policies[prompt_index]

    def restart(self, seed=None) -> None:
        self.rng = np.random.default_rng(child_seed(seed))

    def reset(self, info: dict) -> None:
        self.policy = self.policy_of(int(info["prompt_index"]))
        self.position = len(info["generated_ids"]) - 1

    def observe(self, info: dict) -> None:
        self.position = len(info["generated_ids"]) - 1

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        obs = np.asarray(observation)
        if obs.ndim == 2 and len(obs) == 1:     # a vectorised env of one (stable-baselines3)
            action, state = self.predict(obs[0], state, episode_start, deterministic)
            return action[None], state
        if obs.ndim != 1:
            raise ValueError("OracleAgent drives a single environment: give one observation, not a batch.")
        if self.position is None:
            raise RuntimeError("OracleAgent needs the episode's prompt and position: run it with "
                               "lede_env.rollout.rollout, or call agent.reset(info) after env.reset and "
                               "agent.observe(info) after each env.step.")
        if not deterministic and self.epsilon > 0 and self.rng.random() < self.epsilon:
            return np.array([self.rng.integers(n) for n in self.lists.nvec], dtype=np.int64), state
        if not 0 <= self.position < len(self.policy):
            raise ValueError(f"No step starts at position {self.position} of this trace.")
        return self.policy[self.position].copy(), state

    def arguments(self) -> dict:
        return {"epsilon": self.epsilon, "seed": self.seed}
