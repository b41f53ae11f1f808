"""Train the LEDE agent offline from a Minari dataset: double DQN or discrete CQL on a factored (or flat) Q-network.
What ``lede train lede`` runs.

    lede train lede --dataset lede/smollm2-135m-mixed-train/lede-mix-v0 --algo cql --out artifacts/agents/lede-cql

    from agents.train_lede import Args, train
    train(Args(dataset="lede/smollm2-135m-mixed-train/lede-mix-v0", algo="cql", out="artifacts/agents/lede-cql"))

One file, one `Args` dataclass, in the manner of CleanRL. Why plain torch and not torchrl's ``DiscreteCQLLoss``:
the dataset fits in memory as arrays (a few hundred thousand transitions; `lede_env.datasets.load_offline_arrays`
reads them, since torchrl's Minari loader returns zeros for these datasets), the factored head's two-stage argmax
must drive the double-DQN target, and the losses are a few lines each (below), so a replay buffer and loss
modules would add a dependency pinned to exact versions without removing any code. Sampling is uniform
minibatches from those arrays.

Losses, for a batch ``(s, a, r, s', done)`` with ``done`` the *terminations* (a truncated episode is bootstrapped):
  target      ``y = r + gamma * (1 - done) * Q_target(s', a*)``, ``a* = argmax_a Q(s', a)`` (double DQN: the online
              network picks by its two-stage choice, the target network values it);
  ``dqn``     Huber loss of ``Q(s, a)`` against ``y``;
  ``cql``     the same plus ``alpha * mean(logsumexp_a Q(s, a) - Q(s, a))``, discrete CQL (Kumar et al. 2020),
              which keeps the values of actions the data never took from being overestimated.
The target network follows the online one by Polyak averaging (``tau``).

Every ``eval_every`` updates the greedy agent runs on the held-out training prompts (the prompts of the dataset's
traces that its resets never drew, ``prompt_indices``; `agents.training.evaluate_agent`) and the speedup under the profile is
logged; the checkpoint with the best held-out speedup is the saved agent. Checkpoints go to
``<out>.checkpoints/update-<n>/``, each a complete saved agent (`agents.base.Agent.save` is atomic), and ``<out>``
itself is written only when training ends, atomically: an interrupted run leaves its complete checkpoints and no
half-written agent. ``<out>/training.json`` records the arguments, the evaluations and the timings.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["Args", "ALGOS", "train", "td_target", "make_dataset_env", "heldout_prompts"]

ALGOS = ("dqn", "cql")


@dataclass(frozen=True)
class Args:
    """Arguments of one training run (validated on construction)."""

    dataset: str                           # Minari dataset id (`lede collect`)
    out: str = "artifacts/agents/lede-cql"  # the saved agent's folder
    algo: str = "cql"                       # "dqn" (double DQN) or "cql" (double DQN + discrete CQL)
    head: str = "factored"                  # "factored" (Q(s, L), Q(s, L, k)) or "flat" (Q over J x K)
    hidden: tuple[int, ...] = (256, 256)
    updates: int = 20_000
    batch_size: int = 256
    lr: float = 3e-4
    gamma: float = 0.9
    tau: float = 0.005                      # Polyak rate of the target network
    cql_alpha: float = 0.5
    lam: float | None = None                # reward weight (default: the dataset's)
    eval_every: int = 2_000                 # updates between held-out evaluations (0: only at the end)
    seed: int = 0
    threads: int = 1
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        from agents.q_network import HEADS

        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}, got {self.algo!r}.")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}.")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must be positive layer sizes, got {list(self.hidden)}.")
        for name in ("updates", "batch_size", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 (0: evaluate at the end only), got {self.eval_every}.")
        if not 0 <= self.gamma < 1:
            raise ValueError(f"gamma must be in [0, 1), got {self.gamma}.")
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}.")
        if self.cql_alpha < 0:
            raise ValueError(f"cql_alpha must be >= 0, got {self.cql_alpha}.")
        if self.lam is not None and not self.lam >= 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}.")


def make_dataset_env(metadata: dict, **overrides):
    """The environment a dataset was recorded in (its metadata's ``env_id`` and ``env_kwargs``), with
    ``overrides``. A relative ``traces`` path that is not found from here is looked up in the repository (the
    recipes name the shipped traces so); the file must be the one the dataset recorded (its sha256)."""
    import gymnasium as gym

    import lede_env  # noqa: F401  (registers the ids)

    from lede_env.datasets.metadata import file_sha256
    from lede_env.paths import PACKAGE_DATA

    kwargs = dict(metadata["env_kwargs"], **overrides)
    traces = kwargs.get("traces")
    if traces and not Path(traces).is_file():   # a recipe's path relative to the repository: the shipped traces
        shipped = PACKAGE_DATA.parent.parent / traces
        if not shipped.is_file():
            raise FileNotFoundError(f"The dataset {metadata.get('dataset_id')} was collected on the traces {traces}, "
                                    "which are not here: run from the folder its recipe's paths are relative to (the "
                                    "repository root), or record them again with `lede trace`.")
        kwargs["traces"] = str(shipped)
    want = metadata.get("traces_sha256")
    if traces and want and file_sha256(kwargs["traces"]) != want:
        raise ValueError(f"{kwargs['traces']} is not the trace file the dataset {metadata.get('dataset_id')} was "
                         "collected on (its sha256 differs): collect the dataset again on these traces.")
    return gym.make(metadata.get("env_id", "LEDE-v0"), **kwargs)


def heldout_prompts(env) -> list[int]:
    """The prompts of ``env``'s trace file that its resets never draw (``prompt_indices`` leaves them out)."""
    base = env.unwrapped
    n = base.backend.num_prompts
    pool = base.config.prompt_indices
    return [] if pool is None else [i for i in range(n) if i not in set(pool)]


def td_target(net, target, r, s2, notdone, gamma: float):
    """Double-DQN target ``r + gamma * notdone * Q_target(s', a*)``, ``a*`` the online network's two-stage choice at
    ``s'`` (exit, then the second stage at it), as a flat index ``j * A + a``."""

    j2, a2 = net.two_stage(s2)
    A = target.K
    value = target(s2).gather(1, (j2 * A + a2)[:, None])[:, 0]
    return r + gamma * notdone * value


def train(args: Args) -> Path:
    """Train a LEDE agent as ``args`` says and save it to ``args.out`` (module docstring); returns the folder."""
    import minari
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from agents.lede import LEDEAgent
    from agents.training import HeldOutCheckpoints, check_out_folder
    from lede_env.datasets import load_offline_arrays

    out = check_out_folder(args.out, args.overwrite)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    try:
        dataset = minari.load_dataset(args.dataset)
    except FileNotFoundError:
        raise FileNotFoundError(f"No dataset {args.dataset!r} under $MINARI_DATASETS_PATH (default ~/.minari/datasets): "
                                "collect it first with `lede collect --recipe datasets/<recipe>.toml` (`minari list "
                                "local` lists what is there).") from None
    metadata = dataset.storage.metadata
    env = make_dataset_env(metadata)
    data = load_offline_arrays(dataset, env, lam=args.lam)
    if len(data) < args.batch_size:
        raise ValueError(f"{args.dataset} has {len(data)} transitions, fewer than one batch ({args.batch_size}).")
    heldout = heldout_prompts(env)
    eval_env = make_dataset_env(metadata, prompt_indices=None) if heldout else env
    if not heldout:
        heldout = list(range(env.unwrapped.backend.num_prompts))
        print(f"Note: {args.dataset} was collected on every prompt of its traces; the evaluations run on those "
              "training prompts (collect with prompt_indices to hold some out).")

    agent = LEDEAgent(env, hidden=args.hidden, head=args.head)
    net = agent.network
    net.train()
    target = LEDEAgent(env, hidden=args.hidden, head=args.head).network
    target.load_state_dict(net.state_dict())
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)

    obs = torch.as_tensor(data.observations)
    nxt = torch.as_tensor(data.next_observations)
    act = torch.as_tensor(data.actions)
    rew = torch.as_tensor(data.rewards, dtype=torch.float32)
    notdone = torch.as_tensor(~data.terminals, dtype=torch.float32)

    checkpoints = HeldOutCheckpoints(out, eval_env, heldout, "updates")

    def evaluate(update: int) -> dict:
        net.eval()
        result = checkpoints.evaluate(agent, update)
        net.train()
        return result

    bar = tqdm(range(1, args.updates + 1), desc=f"lede {args.algo} ({args.head})", unit="upd",
               disable=not args.progress, dynamic_ncols=True)
    loss_ema = None
    for update in bar:
        idx = torch.as_tensor(rng.integers(len(data), size=args.batch_size))
        s, a, r, s2, nd = obs[idx], act[idx], rew[idx], nxt[idx], notdone[idx]
        with torch.no_grad():
            y = td_target(net, target, r, s2, nd, args.gamma)
        q = net(s)
        q_sa = q.gather(1, a[:, None])[:, 0]
        loss = F.smooth_l1_loss(q_sa, y)
        if args.algo == "cql":
            loss = loss + args.cql_alpha * (torch.logsumexp(q, dim=1) - q_sa).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p, pt in zip(net.parameters(), target.parameters()):
                pt.mul_(1 - args.tau).add_(p, alpha=args.tau)
        value = float(loss.detach())
        loss_ema = value if loss_ema is None else 0.98 * loss_ema + 0.02 * value
        if (args.eval_every and update % args.eval_every == 0) or update == args.updates:
            result = evaluate(update)
            bar.set_postfix(loss=f"{loss_ema:.3f}", heldout=f"{result['speedup']:.3f}x",
                            best=f"{checkpoints.best['speedup']:.3f}x", refresh=False)
        elif update % 100 == 0:
            bar.set_postfix(loss=f"{loss_ema:.3f}", best=f"{checkpoints.best['speedup']:.3f}x", refresh=False)
    bar.close()

    final = checkpoints.finish(env, {"dataset": args.dataset, "algo": args.algo,
                                     "args": json.loads(json.dumps(asdict(args)))},
                               {"args": asdict(args), "transitions": len(data)})
    best = checkpoints.best
    if args.progress:
        print(f"Saved the LEDE agent ({args.algo}, {args.head} head, update {best['updates']}: held-out speedup "
              f"{best['speedup']:.3f}x on {len(heldout)} prompts) to {final}")
    env.close()
    if eval_env is not env:
        eval_env.close()
    return final
