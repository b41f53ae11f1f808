"""The reward of `LEDE-v0`, in one place (DESIGN.md section 2): the environment, the oracle and the dataset
loader all call `step_reward`.

    r = tokens - lam * cost / c_ar

``tokens``: the tokens a step produced; ``cost``: its cost (seconds, under the cost model); ``c_ar``: the cost of
one plain autoregressive step under the same cost model. With ``lam = 1`` an episode's return is the number of
tokens saved versus autoregressive decoding, and its speedup is ``N / (N - return)``.
Pure Python and numpy: works on scalars and arrays alike.
"""

from __future__ import annotations


def step_reward(tokens, cost, c_ar, lam: float = 1.0):
    """``tokens - lam * cost / c_ar`` (scalars or numpy arrays)."""
    return tokens - lam * cost / c_ar

