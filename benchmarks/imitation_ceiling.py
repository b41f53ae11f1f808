"""How much of the oracle's gain could any policy reach with the observation's features? The imitation ceiling.

    python benchmarks/imitation_ceiling.py --dataset lede/smollm2-135m-mixed-train/lede-mix-v0

The LEDE agent's Q-network (`agents.q_network.QNetwork`, the same trunk and factored head) is trained by supervised
regression onto the oracle's hindsight advantages ``Q*(t, j, k) - max Q*(t)`` (`lede_env.oracle.q_table`; the
return-to-go, which all actions share, would swamp the differences between them) at every state of the dataset (states reached by its behaviours, so off the oracle's own path too), then played greedily on the test
traces. Its speedup is what the features can carry when the labels are perfect: an offline RL agent, which has to
learn the values from rewards, should not expect more. Three observations:

``env``        the environment's observation (what every agent sees);
``+peek``      plus the first draft's max probability at every exit for the pending position (``Trace.step_maxprob``):
               the draft's own confidence, known before the draft is paid for. Not costed: the ceiling of any feature
               of that kind (a costed peek runs an exit before deciding);
``+hindsight`` plus every exit's true acceptance run at the pending position (``Trace.run_length``, capped at the
               longest draft): a sanity check of the method, which should come near the oracle.

Prints one table per prompt set: the oracle, best static (fitted on the training traces), the shipped LEDE agent and
the three imitators, as speedup and share of the oracle's gain. Runs on one torch thread, a minute or two.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VARIANTS = ("env", "+peek", "+hindsight")


def extra_features(trace, variant: str, kmax: int) -> np.ndarray:
    """[T-1, J] features per pending position for ``variant`` (empty for ``env``)."""
    if variant == "env":
        return np.zeros((trace.length - 1, 0), np.float32)
    if variant == "+peek":
        return trace.step_maxprob().astype(np.float32)
    return (np.minimum(np.asarray(trace.run_length), kmax) / kmax).astype(np.float32)


class Imitator:
    """A regressed Q-network acting greedily (two-stage) on the observation plus ``variant``'s features, which it
    reads from the traces at the pending position (tracked through the ``reset``/``observe`` hooks)."""

    def __init__(self, net, traces, variant: str, kmax: int):
        self.net, self.variant, self.kmax = net, variant, kmax
        self.extra = [extra_features(tr, variant, kmax) for tr in traces]
        self.prompt, self.t = 0, 0

    def reset(self, info):
        self.prompt, self.t = int(info["prompt_index"]), 0

    def observe(self, info):
        self.t += int(info["tokens"])

    def predict(self, obs, state=None, episode_start=None, deterministic=True):
        import torch

        x = np.concatenate([np.asarray(obs, np.float32), self.extra[self.prompt][self.t]])
        with torch.no_grad():
            j, k = self.net.two_stage(torch.as_tensor(x[None]))
        return np.array([int(j[0]), int(k[0])], dtype=np.int64), state


def dataset_states(dataset_id: str):
    """The dataset's states: observations [N, D], prompt index and pending position per state, and its env."""
    import minari

    from agents.train_lede import make_dataset_env

    ds = minari.load_dataset(dataset_id)
    env = make_dataset_env(ds.storage.metadata)
    obs, prompts, pos = [], [], []
    for ep in ds.iterate_episodes():
        o = np.asarray(ep.observations, np.float32)[:-1]
        tokens = np.asarray(ep.infos["tokens"][1:], np.int64)
        obs.append(o)
        prompts.append(np.full(len(o), int(ep.infos["prompt_index"][0])))
        pos.append(np.concatenate([[0], np.cumsum(tokens)[:-1]]))
    return np.concatenate(obs), np.concatenate(prompts), np.concatenate(pos), env


def fit(x, y, hidden, updates: int, seed: int):
    import torch

    from agents.q_network import QNetwork

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    J, K = y.shape[1:]
    net = QNetwork(x.shape[1], J, K, hidden, "factored")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    X, Y = torch.as_tensor(x), torch.as_tensor(y.reshape(len(y), -1), dtype=torch.float32)
    for _ in range(updates):
        idx = torch.as_tensor(rng.integers(len(X), size=512))
        loss = torch.nn.functional.mse_loss(net(X[idx]), Y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return net


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="lede/smollm2-135m-mixed-train/lede-mix-v0")
    ap.add_argument("--prompts", default="mixed:test,humaneval:test")
    ap.add_argument("--updates", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import gymnasium as gym
    import torch

    import agents
    from agents.shipped import shipped_folder
    from agents.training import evaluate_agent
    from agents.zoo import ZooContext
    from lede_env.defaults import shipped_traces
    from lede_env.oracle import aggregate_speedup, q_table, solve
    from lede_env.traces import TraceSet

    torch.set_num_threads(1)
    obs, prompts, pos, env = dataset_states(a.dataset)
    base = env.unwrapped
    if base.stop_rules is not None:
        raise SystemExit(f"{a.dataset} was recorded with stop rules; the oracle's values here are over (exit, k): "
                         "give a dataset without them (lede-mix-v0).")
    ks = base.config.spec_lengths
    kmax = max(ks)
    train_traces = TraceSet.load(base.config.traces).traces
    q = {p: q_table(train_traces[p], base.cost_table, ks) for p in set(prompts.tolist())}
    labels = np.stack([q[p][t] for p, t in zip(prompts, pos)])
    labels = labels - labels.max(axis=(1, 2), keepdims=True)   # advantages: the return-to-go would swamp them
    print(f"{len(obs)} states of {a.dataset} over {len(q)} training prompts, {labels.shape[1]} x {labels.shape[2]} "
          "actions")
    nets = {}
    for variant in VARIANTS:
        extra = {p: extra_features(train_traces[p], variant, kmax) for p in q}
        x = np.concatenate([obs, np.stack([extra[p][t] for p, t in zip(prompts, pos)])], axis=1)
        nets[variant] = fit(x, labels, (256, 256), a.updates, a.seed)

    for name in a.prompts.split(","):
        path = str(shipped_traces(name))
        test_env = gym.make("LEDE-v0", backend="replay", traces=path)
        tb = test_env.unwrapped
        test = TraceSet.load(path).traces
        idx = [i for i, tr in enumerate(test) if tr.length > 1]
        oracle = aggregate_speedup(solve(test[i], tb.cost_table, ks) for i in idx)
        set_name = name.split(":")[0]
        ctx = ZooContext.from_traces(test_env, str(shipped_traces(f"{set_name}:train")))
        rows = [("oracle", oracle),
                (f"best static (train: {ctx.best_static.name})",
                 evaluate_agent(ctx.best_static, test_env, idx)["speedup"])]
        if (shipped_folder("lede-default") / "config.json").is_file():
            rows.append(("lede (shipped)", evaluate_agent(agents.load("lede-default", test_env), test_env,
                                                          idx)["speedup"]))
        for variant in VARIANTS:
            rows.append((f"imitator, {variant}", evaluate_agent(Imitator(nets[variant], test, variant, kmax), test_env,
                                                              idx)["speedup"]))
        print(f"\n{name} ({len(idx)} prompts)\n| policy | speedup | share of oracle gain |\n|---|---|---|")
        for label, s in rows:
            share = (1 - 1 / s) / (1 - 1 / oracle)
            print(f"| {label} | {s:.3f}x | {share:.3f} |")


if __name__ == "__main__":
    main()
