"""UCB1 over (L, k) (agents.bandit) on replay environments over synthetic traces.

Synthetic costs (tests/agents/synthetic.py): a step at exit L that drafted d >= 1 tokens costs
``0.01 + d * (0.001 L + 0.0001 (8 - L))`` s, an autoregressive one ``c_ar = 0.01`` s.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

import lede_env  # noqa: F401  (registers the ids)
from agents import load
from agents.bandit import UCBAgent
from agents.zoo import build
from lede_env.rollout import rollout
from tests.agents.synthetic import EXITS, SPEC, make_env, synthetic_trace, write_replay_files

T = 40
R_MAX = 5 * 0.01 / (0.01 + 4 * 0.0026)      # 5 tokens at L2 with 4 drafts: the best (d + 1) * c_ar / cost


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Prompt 0: only exit 4 agrees with the full model; prompt 1: random."""
    rng = np.random.default_rng(0)
    agree = np.zeros((T - 1, len(EXITS)), dtype=bool)
    agree[:, 1] = True
    traces = [synthetic_trace(0, T, None, rng, agree=agree), synthetic_trace(1, T, (0.3, 0.6, 0.85), rng)]
    return write_replay_files(tmp_path_factory.mktemp("bandit"), traces)


def play(env, agent, i):
    ep = rollout(env, agent, options={"prompt_index": i}, info_keys=("tokens",))
    assert all(env.action_space.contains(a) for a in ep.actions)
    return [tuple(int(x) for x in a) for a in ep.actions]


def test_arms_and_reward_scale(files):
    agent = UCBAgent(make_env(files))
    assert agent.arms == ((0, 0),) + tuple((j, k) for j in range(3) for k in (1, 2, 3, 4))   # one AR arm
    assert agent.r_max == pytest.approx(R_MAX)
    step = {"tokens": 5, "c_ar": 0.01, "cost": 0.01 + 4 * 0.0026}
    assert agent.reward(step) == pytest.approx(1.0)
    assert agent.reward({"tokens": 1, "c_ar": 0.01, "cost": 0.01}) == pytest.approx(1 / R_MAX)
    assert agent.reward({"tokens": 1, "c_ar": 0.01, "cost": 0.01 + 4 * 0.0062}) == pytest.approx(
        0.01 / 0.0348 / R_MAX)


def test_each_arm_once_then_the_best_mean(files):
    env = make_env(files)
    agent = UCBAgent(env)
    acts = play(env, agent, 0)                          # only L4 agrees; the 13 first steps produce 23 < 39 tokens
    assert acts[:13] == list(agent.arms)
    # Every arm played once: equal bonuses, so the best mean: L4 with k drafts all accepted gives
    # (k + 1) * 0.01 / (0.01 + 0.0044 k) = 1.389, 1.596, 1.724, 1.812 (k = 1..4), above anything else.
    assert acts[13] == (1, 4)
    assert agent.counts[agent.arms.index((1, 4))] >= 2
    assert agent.sums[agent.arms.index((1, 4))] / agent.counts[agent.arms.index((1, 4))] == pytest.approx(
        5 * 0.01 / 0.0276 / R_MAX)


def test_the_index_by_hand(files):
    env = make_env(files, spec_lengths=(0, 4))
    agent = UCBAgent(env)
    assert agent.arms == ((0, 0), (0, 1), (1, 1), (2, 1))
    obs = np.zeros(env.observation_space.shape, np.float32)
    means = np.array([0.5, 0.2, 0.15, 0.6])
    agent.counts[:] = [5, 5, 5, 20]
    agent.sums[:] = means * agent.counts
    # n = 35: bonus sqrt(2 ln 35 / 5) = 1.192 for the arms played 5 times, sqrt(2 ln 35 / 20) = 0.596 for the last:
    # indices 1.692, 1.392, 1.342, 1.196: the autoregressive arm.
    assert agent.index() == pytest.approx(means + np.sqrt(2 * math.log(35) / agent.counts))
    assert agent.predict(obs)[0].tolist() == [0, 0]
    agent.counts[:] = 20
    agent.sums[:] = means * 20
    agent._choice = None
    assert agent.predict(obs)[0].tolist() == [2, 1]    # equal bonuses: the best mean
    agent.counts[2] = 0
    agent._choice = None
    assert agent.predict(obs)[0].tolist() == [1, 1]    # an unplayed arm first


def test_the_dominant_arm_takes_over_and_statistics_persist(files):
    env = make_env(files, spec_lengths=(0, 4))
    agent, twin = UCBAgent(env), UCBAgent(env)
    shares = []
    for ep in range(12):
        acts = play(env, agent, 0)
        assert play(env, twin, 0) == acts              # deterministic given the episode order
        agent.reset({})                                 # does not clear
        shares.append(Counter(acts)[(1, 1)] / len(acts))
    assert agent.plays == sum(agent.counts) > 12 * 10
    best = agent.arms[int(np.argmax(agent.counts))]
    assert best == (1, 1)                               # L4, k = 4: 5 tokens at 0.0276 s, reward 0.738
    assert shares[-1] > 0.5 and np.mean(shares[6:]) > np.mean(shares[:6])


def test_stop_rules_predict_only_save_load(files, tmp_path):
    from stable_baselines3.common.evaluation import evaluate_policy

    env = make_env(files, stop_rules="default")
    agent = UCBAgent(env)
    none = env.unwrapped.stop_rules.index("none")
    acts = play(env, agent, 1)
    assert all(a[2] == none for a in acts) and acts[:13] == [a + (none,) for a in agent.arms]
    n = agent.plays
    agent.observe({"exit_layer": 4, "k": 2, "stop_rule": "p<0.5", "tokens": 3, "cost": 0.02, "c_ar": 0.01})
    assert agent.plays == n                             # a step under another stop rule is no arm of this bandit
    plain = make_env(files)
    fresh = UCBAgent(plain)
    mean, _ = evaluate_policy(fresh, plain, n_eval_episodes=2, warn=False)   # predict only: the first arm
    assert np.isfinite(mean) and fresh.plays == 0
    assert fresh.predict(np.zeros(plain.observation_space.shape))[0].tolist() == [0, SPEC.index(0)]
    loaded = load(agent.save(tmp_path / "ucb"), env)
    assert isinstance(loaded, UCBAgent) and loaded.arguments() == {} and loaded.plays == 0
    assert play(env, loaded, 1) == play(env, UCBAgent(env), 1)
    assert isinstance(build("ucb", env), UCBAgent)
