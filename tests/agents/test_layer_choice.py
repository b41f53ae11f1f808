"""DEL and SWIFT-style layer choice (agents.layer_choice) on replay environments over synthetic traces.

The synthetic profile (tests/agents/synthetic.py) prices a step at exit L that drafted d >= 1 tokens at
``0.01 + d * (0.001 L + 0.0001 (8 - L))`` seconds and an autoregressive step at ``c_ar = 0.01``: `cost` below, from
which every expected choice is worked out by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

import lede_env  # noqa: F401  (registers the ids)
from agents import EnvSpec, load
from agents.layer_choice import DELAgent, SwiftAgent, expected_tokens, verified_drafts
from agents.zoo import build, needs_stop_rules
from lede_env.rollout import rollout
from tests.agents.synthetic import EXITS, SPEC, make_env, synthetic_trace, write_replay_files

T = 40
C_AR = 0.01


def cost(L, d):
    return C_AR if d == 0 else 0.01 + d * (0.001 * L + 0.0001 * (8 - L))


def speed(a, L, k):
    """Expected tokens per unit cost, in units of c_ar, written out: (1 + a + ... + a**k) * c_ar / cost."""
    return sum(a ** i for i in range(k + 1)) * C_AR / cost(L, k)


def only(j):
    """Agreement pattern where exit column j always agrees with the full model and the others never do."""
    agree = np.zeros((T - 1, len(EXITS)), dtype=bool)
    agree[:, j] = True
    return agree


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Prompt 0: only exit 4 agrees; prompt 1: only exit 6 agrees; prompt 2: random (deeper agrees more)."""
    rng = np.random.default_rng(0)
    traces = [synthetic_trace(0, T, None, rng, agree=only(1)), synthetic_trace(1, T, None, rng, agree=only(2)),
              synthetic_trace(2, T, (0.3, 0.6, 0.85), rng)]
    return write_replay_files(tmp_path_factory.mktemp("layer_choice"), traces)


def play(env, agent, i):
    ep = rollout(env, agent, options={"prompt_index": i}, info_keys=("tokens",))
    assert all(env.action_space.contains(a) for a in ep.actions)
    return [tuple(int(x) for x in a) for a in ep.actions]


def info(L, drafted, accepted, tokens=None, k=None):
    return {"exit_layer": L, "k": drafted if k is None else k, "drafted": drafted, "accepted": accepted,
            "tokens": accepted + 1 if tokens is None else tokens, "stop_rule": "none", "draft_maxprob": []}


def test_expected_tokens_and_verified_drafts():
    assert expected_tokens(0.5, 3) == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    assert expected_tokens(1.0, 4) == 5 and expected_tokens(0.3, 0) == 1
    assert np.allclose(expected_tokens([0.0, 0.8], [[2], [1]]), [[1, 1 + 0.8 + 0.64], [1, 1.8]])
    assert verified_drafts(info(4, 3, 1)) == (1, 1)        # one accepted, then the rejected one
    assert verified_drafts(info(4, 3, 3)) == (3, 0)        # all accepted (bonus token)
    assert verified_drafts(info(4, 3, 2, tokens=2)) == (2, 0)   # ran into the end: no correction, no rejection seen
    assert verified_drafts(info(4, 0, 0)) == (0, 0)


# ------------------------------------------------------------------------------------------ DEL
def test_del_picks_the_best_tokens_per_cost_by_hand(files):
    env = make_env(files)
    agent = DELAgent(env, prior=[0.2, 0.8, 0.5])                    # a made-up state: alpha = prior, no data
    obs = np.zeros(env.observation_space.shape, np.float32)
    s = agent.scores()
    for j, L in enumerate(EXITS):
        for kidx, k in enumerate(SPEC):
            assert s[j, kidx] == pytest.approx(speed(agent.acceptance[j], L, k))
    # By hand: L4 at 0.8 gives 1.8/1.44 = 1.250 (k=1), 2.44/1.88 = 1.298 (k=2), 2.952/2.32 = 1.272 (k=3), 1.218
    # (k=4); L2 at 0.2 at best 1.2/1.26 = 0.952, L6 at 0.5 1.5/1.62 = 0.926, autoregressive 1.
    assert s[1, 2] == pytest.approx(2.44 / 1.88)
    assert agent.predict(obs)[0].tolist() == [1, 2]
    # A rejected first draft at L4: alpha_4 = (0 + 0.8 * 2) / (1 + 2) = 0.533: k=1 gives 1.533/1.44 = 1.065 > 1.
    agent.observe(info(4, 2, 0))
    assert agent.acceptance[1] == pytest.approx(1.6 / 3)
    assert agent.predict(obs)[0].tolist() == [1, 1]
    # Three accepted drafts at L2: alpha_2 = (3 + 0.4) / (3 + 2) = 0.68: k=2 gives 2.1424/1.52 = 1.410 (k=1 1.333,
    # k=3 1.380).
    agent.observe(info(2, 3, 3))
    assert agent.acceptance[0] == pytest.approx(0.68)
    assert agent.predict(obs)[0].tolist() == [0, 2]
    assert agent.predict(np.zeros((3, obs.size), np.float32))[0].tolist() == [[0, 2]] * 3
    agent.reset({})                                                 # per episode: back to the prior
    assert agent.acceptance.tolist() == [0.2, 0.8, 0.5] and agent.predict(obs)[0].tolist() == [1, 2]


def test_del_episode_moves_to_the_agreeing_layer_and_lengthens(files):
    env = make_env(files)
    agent = DELAgent(env)
    acts = play(env, agent, 0)                                      # only L4 agrees
    # Prior 0.5 everywhere: L2 k=1 (1.5/1.26 = 1.190) beats L4 k=1 (1.042); after one rejection alpha_2 = 1/3 still
    # gives 1.058; after two, 0.25 gives 0.992 < 1.042: L4.
    assert acts[:3] == [(0, 1), (0, 1), (1, 1)]
    assert all(j == 1 for j, _ in acts[2:])
    ks = [k for _, k in acts[2:]]
    assert ks == sorted(ks) and acts[-1] == (1, 4)                  # alpha_4 grows with every accepted draft
    assert agent.verified[0] == 2 and agent.matches[0] == 0 and agent.verified[2] == 0
    assert agent.matches[1] == agent.verified[1] > 0
    # A new episode starts from the prior again.
    assert play(env, agent, 0) == acts
    # The stand-in for shadow tokens only learns where it drafts: with only L6 agreeing, L6 keeps its prior 0.5
    # (k=1: 1.5/1.62 = 0.926 < 1), and after L2 and L4 fail the agent decodes autoregressively.
    acts = play(env, agent, 1)
    assert acts[:3] == [(0, 1), (0, 1), (1, 1)] and set(acts[3:]) == {(0, 0)}


def test_del_with_stop_rules_and_without_costs(files):
    env = make_env(files, stop_rules="default")
    agent = DELAgent(env)
    none = env.unwrapped.stop_rules.index("none")
    acts = play(env, agent, 2)
    assert all(a[2] == none for a in acts)
    spec = EnvSpec(exit_layers=EXITS, spec_lengths=SPEC, stop_rules=None, observation=("x",))
    with pytest.raises(ValueError, match="cost_model='profile'"):
        DELAgent(spec)
    with pytest.raises(ValueError, match="prior"):
        DELAgent(env, prior=[0.5, 0.5])
    with pytest.raises(ValueError, match="prior_weight"):
        DELAgent(env, prior_weight=0)


# ------------------------------------------------------------------------------------------ SWIFT
def test_swift_optimises_round_robin_then_accelerates(files):
    env = make_env(files)
    agent = SwiftAgent(env, min_verified=2)
    acts = play(env, agent, 1)                                      # only L6 agrees
    # Optimisation phase at k=1, shallowest first: L2, L4, L6, L2, L4, L6 (each then holds 2 verified tokens; L6's
    # matchness 1.0 > 0.93). Then L6 at matchness 1: (k+1) * 0.01 / cost is 1.235, 1.344, 1.399, 1.437 for k=1..4.
    assert acts[:6] == [(0, 1), (1, 1), (2, 1)] * 2
    assert set(acts[6:]) == {(2, 4)}
    assert not agent.optimising and agent.matchness().tolist() == [0.0, 0.0, 1.0]
    # The statistics persist across episodes: no second optimisation phase.
    agent.reset({})
    assert set(play(env, agent, 1)) == {(2, 4)}
    assert len(agent.windows[2]) == agent.window == 50


def test_swift_moves_to_the_layer_with_the_best_window(files):
    env = make_env(files)
    agent = SwiftAgent(env, min_verified=5)
    obs = np.zeros(env.observation_space.shape, np.float32)
    assert agent.predict(obs)[0].tolist() == [0, 1]                 # optimisation: the shallowest first
    for step in [info(2, 1, 1)] + [info(2, 1, 0)] * 4:             # L2: 1 match in 5
        agent.observe(step)
    for step in (info(6, 4, 3), info(6, 1, 0)):                      # L6: 3 in 5
        agent.observe(step)
    assert agent.optimising and agent.predict(obs)[0].tolist() == [1, 1]   # L4 still lacks data
    for step in (info(4, 4, 4), info(4, 4, 4), info(4, 1, 0), info(4, 1, 0)):   # L4: 8 in 10
        agent.observe(step)
    assert not agent.optimising
    assert agent.matchness() == pytest.approx([0.2, 0.8, 0.6])
    # By hand: L4 at 0.8 gives 1.250, 1.298, 1.272, 1.218 for k=1..4; L6 at 0.6 at best 1.6/1.62 = 0.988; L2 at 0.2
    # 1.2/1.26 = 0.952.
    assert agent.predict(obs)[0].tolist() == [1, 2]
    # L4 degrades: 30 rejections make its window 8 in 40 = 0.2 (k=1: 1.2/1.44 = 0.833); L6 now has the best window.
    for _ in range(30):
        agent.observe(info(4, 1, 0))
    assert agent.matchness()[1] == pytest.approx(0.2)
    assert agent.predict(obs)[0].tolist() == [2, 1]
    assert np.isneginf(agent.scores()[:, 0]).all()                   # SWIFT always drafts: never k = 0
    for _ in range(60):
        agent.observe(info(2, 1, 1))
    assert len(agent.windows[0]) == 50 and agent.matchness()[0] == 1.0


def test_swift_drafts_with_the_confidence_stop(files):
    env = make_env(files, stop_rules="default")
    agent = SwiftAgent(env, min_verified=2)
    rules = env.unwrapped.stop_rules
    assert agent.stop_rule == "p<0.8"
    acts = play(env, agent, 1)
    assert all(a[1:] == (SPEC.index(4), rules.index("p<0.8")) for a in acts)   # cap min(25, 4) = 4, p < 0.8
    assert [a[0] for a in acts[:3]] == [0, 1, 2] and acts[-1][0] == 2
    # Stop rules without a "p<T" rule: no confidence stop, k from the matchness under "none".
    plain = SwiftAgent(make_env(files, stop_rules=("none", "H>1")), min_verified=2)
    assert plain.stop_rule == "none"
    assert play(make_env(files, stop_rules=("none", "H>1")), plain, 1)[6:8] == [(2, 4, 0)] * 2
    assert needs_stop_rules("swift") and not needs_stop_rules("del")


# ------------------------------------------------------------------------------------------ both
def test_predict_only_save_load_and_zoo(files, tmp_path):
    from stable_baselines3.common.evaluation import evaluate_policy

    env = make_env(files)
    for agent in (DELAgent(env), SwiftAgent(env)):
        mean, _ = evaluate_policy(agent, env, n_eval_episodes=2, warn=False)   # predict only: the prior choice
        assert np.isfinite(mean)
    assert DELAgent(env).predict(np.zeros(env.observation_space.shape))[0].tolist() == [0, 1]
    for agent in (DELAgent(env, prior=[0.2, 0.8, 0.5], prior_weight=3.0), DELAgent(env, prior=0.4),
                  SwiftAgent(env, window=20, min_verified=3, max_score=0.9, stop_threshold=0.7, max_step_draft=3)):
        play(env, agent, 2)
        loaded = load(agent.save(tmp_path / agent.kind), env)
        assert type(loaded) is type(agent) and loaded.arguments() == agent.arguments()
        fresh = type(agent)(env, **agent.arguments())              # statistics are not saved: a fresh agent
        assert play(env, loaded, 2) == play(env, fresh, 2)
    assert DELAgent(env, prior=0.4).arguments() == {"prior": 0.4, "prior_weight": 2.0}
    assert isinstance(build("del", env), DELAgent) and isinstance(build("swift", env), SwiftAgent)
    assert build("swift", env).arguments() == {"window": 50, "stop_threshold": 0.8, "max_step_draft": 25,
                                               "max_score": 0.93, "min_verified": 10}
