"""Predictive value of observation features and candidate features for the next step's acceptance (prints a table;
not a test; replay only, no model).

For every position ``t`` a step starts from in a replay episode (the behaviour: uniformly random actions, so that
every kind of last step is seen), the target at exit layer ``L`` is whether a step's first draft from there would be
accepted (`Trace.first_agree`). Each feature's value is the area under the ROC curve (AUC) for that target: 0.5 is
no information, 1.0 (or 0.0) a perfect ranking. Features:

* the observation's own features, read at the step's start (``obs:<name>``);
* candidates the observation does not hold, computed from the trace at the same position:
  - ``prev_agree_L``: whether the first draft at the same exit agreed one position back (what drafting every exit in
    the shadow of the verification would tell, at the price of every exit's head per step);
  - ``ngram_match``: the length (capped at 8) of the longest suffix of the context ending at the pending token that
    occurred earlier in the prompt or the generation (the prompt-lookup signal; free: it reads tokens only);
  - ``draft_maxprob_now``: the first draft's own confidence, known only once the draft is paid for (a reference).

    .venv/bin/python benchmarks/feature_auc.py [--traces mixed:test,humaneval:test] [--exits 1,4,12] [--episodes 3]
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) statistic, ties given their mean rank."""
    score, label = np.asarray(score, float), np.asarray(label, bool)
    n1, n0 = int(label.sum()), int((~label).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    mean_rank = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, counts)
    return float((ranks[label].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def ngram_match(context: list[int], cap: int = 8) -> int:
    """Length of the longest suffix of ``context`` (at most ``cap``) that also occurs earlier in it."""
    n = len(context)
    best = 0
    for m in range(1, min(cap, n - 1) + 1):
        suffix = context[n - m:]
        if any(context[i:i + m] == suffix for i in range(0, n - m)):
            best = m
        else:
            break
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", default="mixed:test,humaneval:test")
    ap.add_argument("--exits", default="1,4,12")
    ap.add_argument("--episodes", type=int, default=3, help="random-behaviour episodes per prompt")
    args = ap.parse_args()
    import lede_env  # noqa: F401
    from lede_env.defaults import shipped_traces
    from lede_env.traces import TraceSet

    exits = [int(x) for x in args.exits.split(",")]
    for spec in args.traces.split(","):
        path = shipped_traces(spec)
        ts = TraceSet.load(path)
        env = gym.make("LEDE-v0", backend="replay", traces=str(path), exit_layers=tuple(ts.traces[0].exit_layers))
        base = env.unwrapped
        names = base.layout.names
        cols = {L: ts.traces[0].layer_index(L) for L in exits}
        rows: list[tuple[np.ndarray, int, int]] = []   # (obs, prompt, t)
        rng = np.random.default_rng(0)
        for i in range(len(ts)):
            if ts.traces[i].length < 2:
                continue
            for e in range(args.episodes):
                obs, info = env.reset(seed=e, options={"prompt_index": i})
                done = False
                while not done:
                    t = base.backend.t   # the replay position: pending g_t (a benchmark reads it; agents cannot)
                    rows.append((obs, i, t))
                    obs, _, term, trunc, info = env.step(rng.integers(env.action_space.nvec))
                    done = term or trunc
        obs = np.stack([r[0] for r in rows])
        print(f"\n{spec}: {len(rows)} step starts, {len(ts)} prompts; AUC for 'the first draft at L is accepted'")
        print(f"{'feature':>24} " + " ".join(f"{'L' + str(L):>7}" for L in exits))
        targets = {L: np.array([ts.traces[i].first_agree[t, cols[L]] for _, i, t in rows]) for L in exits}
        print(f"{'(base rate)':>24} " + " ".join(f"{targets[L].mean():7.3f}" for L in exits))
        for f, name in enumerate(names):
            if np.ptp(obs[:, f]) == 0:
                continue
            print(f"{'obs:' + name:>24} " + " ".join(f"{auc(obs[:, f], targets[L]):7.3f}" for L in exits))
        prev = {L: np.array([ts.traces[i].first_agree[t - 1, cols[L]] if t > 0 else False for _, i, t in rows])
                for L in exits}
        print(f"{'prev_agree_L':>24} " + " ".join(f"{auc(prev[L], targets[L]):7.3f}" for L in exits))
        ng = np.array([ngram_match(ts.traces[i].prompt_ids.tolist() + ts.traces[i].tokens[:t + 1].tolist())
                       for _, i, t in rows])
        print(f"{'ngram_match':>24} " + " ".join(f"{auc(ng, targets[L]):7.3f}" for L in exits))
        now = {L: np.array([ts.traces[i].step_maxprob()[t, cols[L]] for _, i, t in rows]) for L in exits}
        print(f"{'draft_maxprob_now':>24} " + " ".join(f"{auc(now[L], targets[L]):7.3f}" for L in exits))


if __name__ == "__main__":
    main()
