"""The agent zoo by name: `build` makes any agent of the zoo for an environment, with its published defaults.

    from agents.zoo import ZOO, build, ZooContext
    ctx = ZooContext.from_traces(env, "lede_env/data/traces/...mixed-train.npz")   # training traces
    agent = build("hf-heuristic", env, ctx)

Every name is a registered kind (`agents.base.KINDS`); its class's ``zoo(env, ctx)`` classmethod builds it. The
context holds what some agents are fitted on: the training traces and, found on them, the best static setting
(`agents.baselines.BestStaticAgent.fit`): best static plays it, and the single-exit heuristics (Hugging Face's,
Draft & Verify, SpecDec++, SVIP) draft at its exit layer, "the best fixed exit".
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.base import Agent, agent_class

__all__ = ["ZOO", "ZooContext", "build", "needs_stop_rules"]

# The order of the tables: references, the published heuristics, the ceiling.
ZOO: tuple[str, ...] = ("autoregressive", "random", "best-static", "hf-heuristic", "hf-dynamic", "draft-verify",
                        "specdec++", "svip", "kangaroo", "del", "swift", "ucb", "oracle")


@dataclass(frozen=True)
class ZooContext:
    """What the zoo's fitted agents need, fitted on the training traces: the best static agent (which may be plain
    autoregressive decoding, ``k = 0``) and the best *speculative* static setting (``k >= 1``), whose exit is "the
    best fixed exit" the single-exit heuristics draft at. ``None`` when no training traces were given: agents that
    need them then refuse with a clear error."""

    best_static: Agent | None = None
    best_speculative: Agent | None = None
    train_traces: str | None = None

    @classmethod
    def from_traces(cls, env, train_traces) -> "ZooContext":
        """Fit best static on ``train_traces`` (a path or a `lede_env.traces.TraceSet` of a training split)."""
        from agents.baselines import BestStaticAgent
        from lede_env.traces import TraceSet

        ts = TraceSet.load(train_traces) if not isinstance(train_traces, TraceSet) else train_traces
        name = str(train_traces) if not isinstance(train_traces, TraceSet) else "traces"
        return cls(best_static=BestStaticAgent.fit(env, ts, fitted_on=name),
                   best_speculative=BestStaticAgent.fit(env, ts, fitted_on=name, speculative=True),
                   train_traces=name)

    @property
    def best_exit(self) -> int:
        """The exit layer of the best speculative static setting ("the best fixed exit")."""
        if self.best_speculative is None:
            raise ValueError("This agent drafts at the best fixed exit, found on training traces: give them "
                             "(ZooContext.from_traces(env, traces), or `lede evaluate --train-traces`).")
        return self.best_speculative.exit_layer


def build(name: str, env, ctx: ZooContext | None = None) -> Agent:
    """The zoo agent ``name`` (one of `ZOO`, or any registered kind) for ``env``."""
    return agent_class(name).zoo(env, ctx or ZooContext())


def needs_stop_rules(name: str) -> bool:
    """Whether the agent ``name`` decides its draft length with a stop rule (the environment must offer them)."""
    return bool(getattr(agent_class(name), "uses_stop_rules", False))
