"""Published stop rules (agents.stopping) on replay environments over hand-set synthetic traces: every expected
number below is worked out by hand from the rule (class docstrings of agents.stopping)."""

from __future__ import annotations

import numpy as np
import pytest

import lede_env  # noqa: F401  (registers the ids)
from agents import load
from agents.base import EnvSpec
from agents.baselines import BestStaticAgent
from agents.stopping import DraftVerifyAgent, KangarooAgent, SpecDecPPAgent, SVIPAgent
from agents.zoo import ZooContext, build, needs_stop_rules
from lede_env.engine.stop_rules import DEFAULT_STOP_RULES
from lede_env.rollout import rollout
from tests.agents.synthetic import EXITS, make_env, synthetic_trace, write_replay_files

J = 1          # the exit column of the best-exit agents: layer EXITS[1] = 4
LAYER = EXITS[J]
ROWS = 24


def hand_trace(index, j, agree_col=None, maxprob_col=None, entropy_col=None, seed=0):
    """A trace of ROWS + 1 tokens whose exit column ``j`` has the given agreement (default: never agrees, so that
    every step starts one row later), draft max probabilities and entropies (padded with 0.99 / 0.01 confidence);
    the other columns are random."""
    rng = np.random.default_rng(seed)
    agree = rng.random((ROWS, len(EXITS))) < 0.5
    maxprob = rng.random((ROWS, len(EXITS)))
    entropy = rng.random((ROWS, len(EXITS))) * 3
    agree[:, j] = False
    maxprob[:, j] = 0.99
    entropy[:, j] = 0.01
    for arr, col in ((agree, agree_col), (maxprob, maxprob_col), (entropy, entropy_col)):
        if col is not None:
            arr[:len(col), j] = col
    return synthetic_trace(index, ROWS + 1, (0.5,) * len(EXITS), rng, agree=agree, maxprob=maxprob, entropy=entropy)


def steps(ep, key):
    """``info[key]`` of every step (row 0 is the reset)."""
    return ep.info_array(key)[1:].tolist()


# Draft & Verify, p<0.8, never accepted (one row per step), cap 4:
#   t=0 .9 .85 .7 -> 3;  t=1 .85 .7 -> 2;  t=2 .7 -> 1;  t=3 .95 .9 .9 .9 -> 4 (cap);  t=4 .9 .9 .9 .5 -> 4
DV_MAXPROB = [0.9, 0.85, 0.7, 0.95, 0.9, 0.9, 0.9, 0.5]
# SpecDec++, prod<0.7: t=0 .95 .855 .727 .581 -> 4;  t=1 .9 .765 .612 -> 3;  t=2 .85 .68 -> 2;  t=3 .8 .48 -> 2;
#   t=4 .6 -> 1;  t=5 .99.. -> 4
SDPP_MAXPROB = [0.95, 0.9, 0.85, 0.8, 0.6]
# SVIP: H>0.5 (default list): t=0 .2 .55 -> 2;  t=1 .55 -> 1;  t=2 .3 .7 -> 2;  t=3 .7 -> 1;  t=4 -> 4
#       H>0.6 (exact):        t=0 .2 .55 .3 .7 -> 4;  t=1 .55 .3 .7 -> 3;  t=2 .3 .7 -> 2;  t=3 .7 -> 1;  t=4 -> 4
SVIP_ENTROPY = [0.2, 0.55, 0.3, 0.7]
# Kangaroo at the shallowest exit (column 0), p<0.6, cap 6 (lengths 0..7):
#   t=0 rows 0-5 .9 .7 .65 .61 .62 .95 agree -> 6 drafted (cap), 6 accepted;  t=7 .8 .55 -> 2, row 7 agrees -> 1;
#   t=9 .3 -> 1, 0;  t=10 .99.. -> 6, 0
KANG_MAXPROB = [0.9, 0.7, 0.65, 0.61, 0.62, 0.95, 0.5, 0.8, 0.55, 0.3]
KANG_AGREE = [1, 1, 1, 1, 1, 1, 0, 1, 0, 0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    traces = [hand_trace(0, J, maxprob_col=DV_MAXPROB), hand_trace(1, J, maxprob_col=[0.83] * ROWS),
              hand_trace(2, J, maxprob_col=SDPP_MAXPROB), hand_trace(3, J, entropy_col=SVIP_ENTROPY),
              hand_trace(4, 0, agree_col=KANG_AGREE, maxprob_col=KANG_MAXPROB)]
    return write_replay_files(tmp_path_factory.mktemp("stopping"), traces)


def ctx_for(env):
    return ZooContext(best_static=BestStaticAgent(env, LAYER, 2), best_speculative=BestStaticAgent(env, LAYER, 2))


def rules_of(env, ep):
    return [env.unwrapped.stop_rules[s] for s in ep.actions[:, 2]]


# ------------------------------------------------------------------------------------------ Draft & Verify
def test_draft_verify_update_rule():
    spec = EnvSpec(exit_layers=(4,), spec_lengths=(0, 1, 2, 3, 4), stop_rules=DEFAULT_STOP_RULES, observation=())
    agent = DraftVerifyAgent(spec, 4)
    assert agent.cap == 4 and agent.threshold == 0.8 and agent.stop_rule == "p<0.8"
    gammas, alphas = [], []
    for acc, d in [(4, 4), (4, 4), (4, 4), (4, 4), (2, 2), (0, 3), (0, 0)]:
        agent.observe({"accepted": acc, "drafted": d})
        gammas.append(agent.threshold)
        alphas.append(agent.matchness)
    # alpha_hat < 0.9: +0.01 smoothed by 0.9 -> +0.001; alpha_hat >= 0.9 at the cap: unchanged; below the cap: -0.001.
    # Nothing drafted (the last one): no update.
    assert alphas == pytest.approx([0.5, 0.75, 0.875, 0.9375, 0.96875, 0.484375, 0.484375])
    assert gammas == pytest.approx([0.801, 0.802, 0.803, 0.803, 0.802, 0.803, 0.803])
    agent.reset({})
    assert agent.threshold == 0.8 and agent.matchness == 0.0
    # The snapped rule follows gamma: 0.8235 -> p<0.8, after two rejections 0.8255 -> p<0.85.
    agent = DraftVerifyAgent(spec, 4, th_stop_draft=0.8235)
    assert agent.stop_rule == "p<0.8"
    for _ in range(2):
        agent.observe({"accepted": 0, "drafted": 4})
    assert agent.threshold == pytest.approx(0.8255) and agent.stop_rule == "p<0.85"


def test_draft_verify_episodes_by_hand(files):
    env = make_env(files, stop_rules="default")
    agent = build("draft-verify", env, ctx_for(env))
    assert agent.arguments() == {"exit_layer": LAYER, "th_stop_draft": 0.8, "max_step_draft": 8,
                                 "target_matchness": 0.9, "epsilon": 0.01, "beta1": 0.5, "beta2": 0.9,
                                 "update_every": 1}
    assert agent.cap == 4 and DraftVerifyAgent(make_env(files, stop_rules="default", spec_lengths=range(8)),
                                               LAYER).cap == 7
    ep = rollout(env, agent, options={"prompt_index": 0})
    assert steps(ep, "drafted")[:5] == [3, 2, 1, 4, 4] and steps(ep, "accepted")[:5] == [0] * 5
    assert set(rules_of(env, ep)) == {"p<0.8"} and (ep.actions[:, :2] == [J, 4]).all()
    # The adaptation inside an episode: every draft rejected raises gamma 0.001 a step; confidences 0.83 stop at
    # once under p<0.85 but not under p<0.8.
    agent = DraftVerifyAgent(env, LAYER, th_stop_draft=0.8235)
    ep = rollout(env, agent, options={"prompt_index": 1})
    assert rules_of(env, ep)[:3] == ["p<0.8", "p<0.8", "p<0.85"] and steps(ep, "drafted")[:3] == [4, 4, 1]
    with pytest.raises(ValueError, match="stop_rules='default'"):
        DraftVerifyAgent(make_env(files), LAYER)


# ------------------------------------------------------------------------------------------ SpecDec++
def test_specdecpp_cumulative_product(files):
    env = make_env(files, stop_rules="default")
    agent = build("specdec++", env, ctx_for(env))
    assert agent.stop_rule == "prod<0.7" and agent.cap == 4
    assert agent.arguments() == {"exit_layer": LAYER, "stop_threshold": 0.3, "max_candidates": 20}
    ep = rollout(env, agent, options={"prompt_index": 2})
    assert steps(ep, "drafted")[:6] == [4, 3, 2, 2, 1, 4]
    assert set(rules_of(env, ep)) == {"prod<0.7"}
    assert SpecDecPPAgent(env, LAYER, stop_threshold=0.5).stop_rule == "prod<0.5"
    with pytest.raises(ValueError, match="add it to stop_rules"):
        SpecDecPPAgent(make_env(files, stop_rules=("none", "p<0.5")), LAYER)


# ------------------------------------------------------------------------------------------ SVIP
def test_svip_entropy_bound(files):
    env = make_env(files, stop_rules="default")
    agent = build("svip", env, ctx_for(env))
    assert agent.entropy_bound == pytest.approx(0.6)            # sqrt(0.15 H) > 0.3  <=>  H > 0.09 / 0.15
    assert agent.stop_rule == "H>0.6" and agent.cap == 4          # the default list holds SVIP's bound
    assert agent.arguments() == {"exit_layer": LAYER, "gamma": 0.15, "h": 0.3, "max_draft": 40}
    ep = rollout(env, agent, options={"prompt_index": 3})
    assert steps(ep, "drafted")[:5] == [4, 3, 2, 1, 4]
    coarse = make_env(files, stop_rules=("none", "H>0.5", "H>1"))   # without it: the nearest entropy rule
    agent = SVIPAgent(coarse, LAYER)
    assert agent.stop_rule == "H>0.5"
    assert steps(rollout(coarse, agent, options={"prompt_index": 3}), "drafted")[:5] == [2, 1, 2, 1, 4]


# ------------------------------------------------------------------------------------------ Kangaroo
def test_kangaroo_shallow_exit_and_confidence_stop(files):
    env = make_env(files, stop_rules="default", spec_lengths=range(8))
    agent = build("kangaroo", env)                                # needs no training traces
    assert agent.arguments() == {"exit_layer": min(EXITS), "threshold": 0.6, "steps": 6}
    assert agent.stop_rule == "p<0.6" and agent.cap == 6
    ep = rollout(env, agent, options={"prompt_index": 4})
    assert steps(ep, "drafted")[:4] == [6, 2, 1, 6] and steps(ep, "accepted")[:4] == [6, 1, 0, 0]
    assert (ep.actions[:, :2] == [0, 6]).all() and set(rules_of(env, ep)) == {"p<0.6"}
    assert KangarooAgent(make_env(files, stop_rules="default")).cap == 4      # lengths 0..4
    assert KangarooAgent(env, exit_layer=6).j == 2


# ------------------------------------------------------------------------------------------ all of them
@pytest.mark.parametrize("cls, kw", [(DraftVerifyAgent, {"exit_layer": 6, "th_stop_draft": 0.6, "beta2": 0.8}),
                                     (SpecDecPPAgent, {"exit_layer": 2, "stop_threshold": 0.5}),
                                     (SVIPAgent, {"exit_layer": 4, "gamma": 0.5, "h": 1.0}),
                                     (KangarooAgent, {"threshold": 0.35, "steps": 3})])
def test_save_load_round_trip(files, tmp_path, cls, kw):
    env = make_env(files, stop_rules="default")
    agent = cls(env, **kw)
    loaded = load(agent.save(tmp_path / "agent"), env)
    assert type(loaded) is cls and loaded.arguments() == agent.arguments()
    for i in range(5):
        a, b = (rollout(env, x, options={"prompt_index": i}) for x in (agent, loaded))
        assert a.actions.tolist() == b.actions.tolist() and a.episode_return == b.episode_return


def test_zoo_needs_stop_rules_and_training_traces(files):
    plain = make_env(files)
    for name in ("draft-verify", "specdec++", "svip", "kangaroo"):
        assert needs_stop_rules(name)
        with pytest.raises(ValueError, match="stop_rules="):
            build(name, plain, ctx_for(plain))
    env = make_env(files, stop_rules="default")
    for name in ("draft-verify", "specdec++", "svip"):
        with pytest.raises(ValueError, match="best fixed exit"):
            build(name, env)


def test_evaluate_policy_runs_without_hooks(files):
    evaluation = pytest.importorskip("stable_baselines3.common.evaluation")
    from stable_baselines3.common.monitor import Monitor

    for name in ("draft-verify", "specdec++", "svip", "kangaroo"):
        env = Monitor(make_env(files, stop_rules="default"))
        agent = build(name, env, ctx_for(env))
        mean, _ = evaluation.evaluate_policy(agent, env, n_eval_episodes=2, warn=False)
        assert np.isfinite(mean)
