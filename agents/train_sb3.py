"""Train a stable-baselines3 agent online on the replay backend: PPO and A2C on the ``MultiDiscrete`` action, DQN
and sb3-contrib's QR-DQN on the flattened one (`lede_env.wrappers.FlattenAction`). What ``lede train ppo`` runs.

    lede train ppo --traces mixed:train --timesteps 100000 --out artifacts/agents/ppo

    from agents.train_sb3 import Args, train
    train(Args(algo="ppo", traces="mixed:train", timesteps=100_000, out="artifacts/agents/ppo"))

One file, one `Args` dataclass. The environment is ``gym.make("LEDE-v0", backend="replay", traces=...)`` with its
resets drawn from the traces' first prompts; the last ``heldout`` prompts are kept for the periodic evaluation
(`agents.training.evaluate_agent`, every ``eval_every`` timesteps, greedy). Every evaluation writes a checkpoint
(``<out>.checkpoints/timestep-<n>/``, a complete saved agent); the best one by held-out speedup becomes ``<out>``, written
once training ends, atomically (an interrupted run leaves its checkpoints and no half-written agent). SB3's
defaults are kept except where a LEDE episode needs otherwise (``HYPERPARAMETERS``); ``--lam`` sets the reward.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["Args", "train", "HYPERPARAMETERS"]

# Short LEDE episodes (about 100 steps): updates every few episodes, DQN learning from the first episodes on.
HYPERPARAMETERS = {
    "ppo": {"n_steps": 512, "batch_size": 128, "gamma": 0.9, "ent_coef": 0.01},
    "a2c": {"n_steps": 16, "gamma": 0.9, "ent_coef": 0.01},
    "dqn": {"learning_starts": 1000, "buffer_size": 100_000, "gamma": 0.9, "exploration_fraction": 0.3,
            "target_update_interval": 1000, "train_freq": 4},
    "qrdqn": {"learning_starts": 1000, "buffer_size": 100_000, "gamma": 0.9, "exploration_fraction": 0.3,
              "target_update_interval": 1000, "train_freq": 4},
}


@dataclass(frozen=True)
class Args:
    """Arguments of one training run (validated on construction)."""

    algo: str = "ppo"                      # ppo | a2c | dqn | qrdqn
    traces: str = "mixed:train"             # a trace file, or a prompt set's shipped traces
    out: str = "artifacts/agents/ppo"
    timesteps: int = 100_000
    heldout: int = 6                        # the traces' last prompts, kept out of training for the evaluation
    eval_every: int = 10_000                # timesteps between held-out evaluations (0: only at the end)
    lam: float = 1.0
    env_kwargs: dict = field(default_factory=dict)   # more arguments of gym.make (profile, exit_layers, ...)
    seed: int = 0
    threads: int = 1
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        from agents.sb3 import ALGOS

        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}, got {self.algo!r}.")
        for name in ("timesteps", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.eval_every < 0 or self.heldout < 0:
            raise ValueError(f"eval_every and heldout must be >= 0, got {self.eval_every}, {self.heldout}.")
        if not (self.lam >= 0 and math.isfinite(self.lam)):
            raise ValueError(f"lam must be a finite number >= 0, got {self.lam}.")
        reserved = {"backend", "traces", "lam", "prompt_indices"} & set(self.env_kwargs)
        if reserved:
            raise ValueError(f"env_kwargs cannot set {sorted(reserved)}: they are arguments of their own.")


def train(args: Args) -> Path:
    """Train an SB3 agent as ``args`` says and save it to ``args.out`` (module docstring); returns the folder."""
    import gymnasium as gym
    import torch
    from stable_baselines3.common.callbacks import BaseCallback

    import lede_env  # noqa: F401  (registers LEDE-v0)
    from agents.sb3 import FLAT, SB3Agent, algo_class
    from agents.training import HeldOutCheckpoints, check_out_folder, resolve_traces, split_prompts
    from lede_env.wrappers import FlattenAction

    out = check_out_folder(args.out, args.overwrite)
    torch.set_num_threads(args.threads)
    traces = resolve_traces(args.traces)
    eval_env = gym.make("LEDE-v0", backend="replay", traces=traces, lam=args.lam, **args.env_kwargs)
    pool, heldout = split_prompts(eval_env.unwrapped.backend.num_prompts, args.heldout)
    env = gym.make("LEDE-v0", backend="replay", traces=traces, lam=args.lam, prompt_indices=pool, **args.env_kwargs)
    if not heldout:
        heldout = pool
    train_env = FlattenAction(env) if args.algo in FLAT else env
    model = algo_class(args.algo)("MlpPolicy", train_env, seed=args.seed, device="cpu", verbose=0,
                                  **HYPERPARAMETERS[args.algo])
    agent = SB3Agent(env, args.algo, model=model)
    checkpoints = HeldOutCheckpoints(out, eval_env, heldout, "timesteps")

    class Evaluations(BaseCallback):
        def _on_step(self) -> bool:
            if args.eval_every and self.num_timesteps % args.eval_every == 0:
                checkpoints.evaluate(agent, self.num_timesteps)
            return True

    model.learn(total_timesteps=args.timesteps, callback=Evaluations(), progress_bar=args.progress)
    if not checkpoints.history or checkpoints.history[-1]["timesteps"] != model.num_timesteps:
        checkpoints.evaluate(agent, model.num_timesteps)
    final = checkpoints.finish(env, {"traces": traces, "algo": args.algo,
                                     "train_prompts": list(env.unwrapped.config.prompt_indices or []),
                                     "args": json.loads(json.dumps(asdict(args)))},
                               {"args": asdict(args), "hyperparameters": HYPERPARAMETERS[args.algo]})
    best = checkpoints.best
    if args.progress:
        print(f"Saved the {args.algo} agent (step {best['timesteps']}: held-out speedup {best['speedup']:.3f}x on "
              f"{len(heldout)} prompts) to {final}")
    env.close()
    eval_env.close()
    return final
