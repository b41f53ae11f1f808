"""Hugging Face assisted generation's policies (agents.hf) on replay environments over hand-set synthetic traces:
every expected number below is worked out by hand from the rule (module docstring of agents.hf)."""

from __future__ import annotations

import numpy as np
import pytest

import lede_env  # noqa: F401  (registers the ids)
from agents import load
from agents.baselines import BestStaticAgent
from agents.hf import HFDynamicAgent, HFHeuristicAgent, fit_confidence_threshold, roc_curve
from agents.zoo import ZooContext, build, needs_stop_rules
from lede_env.rollout import rollout
from tests.agents.synthetic import EXITS, make_env, synthetic_trace, write_replay_files

J = 1          # the exit column the tests drive: layer EXITS[1] = 4
LAYER = EXITS[J]


def hand_trace(index, agree_col, maxprob_col=None, seed=0):
    """A trace whose exit column J agrees with the full model as ``agree_col`` says (row t: the draft of token
    t + 1) with draft confidences ``maxprob_col``; the other columns are random."""
    rng = np.random.default_rng(seed)
    rows = len(agree_col)
    agree = rng.random((rows, len(EXITS))) < 0.5
    agree[:, J] = np.asarray(agree_col, bool)
    maxprob = rng.random((rows, len(EXITS)))
    if maxprob_col is not None:
        maxprob[:, J] = maxprob_col
    return synthetic_trace(index, rows + 1, (0.5,) * len(EXITS), rng, agree=agree, maxprob=maxprob)


def steps(ep, key):
    """``info[key]`` of every step (row 0 is the reset)."""
    return ep.info_array(key)[1:].tolist()


# Heuristic schedule, from num_assistant_tokens = 2 (lengths 0..4; the first ones are hand-picked to show the rule):
#   t=0  n=2 k=2 rows 0,1 agree       -> 2/2 accepted, n=4
#   t=3  n=4 k=4 rows 3 T, 4 F        -> 1/4,          n=3
#   t=5  n=3 k=3 rows 5,6,7 agree     -> 3/3,          n=5
#   t=9  n=5 k=4 (clipped) row 9 F    -> 0/4,          n=4
#   t=10 n=4 k=4 row 10 F             -> 0/4,          n=3
#   t=11 n=3 k=3 rows 11,12,13 agree  -> 3/3 (ends: 15 tokens), n=5
HEUR_AGREE = [1, 1, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0]
HEUR_DRAFTED = [2, 4, 3, 4, 4, 3]
HEUR_ACCEPTED = [2, 1, 3, 0, 0, 3]

# Dynamic threshold (cap 4, starts at p<0.4), exit column J:
#   t=0 p<0.4 conf .9 .3         -> stops at 2, rows 0 T 1 F: 1/2;  samples (.9,1) (.3,0)
#   t=2 p<0.4 conf .8 .7 .6 .55  -> 4 (cap), rows 2,3 T 4 F: 2/4;   samples (.8,1) (.7,1) (.6,0)   [5: no re-fit]
#   t=5 p<0.4 conf .55 .5 .45 .35-> 4 (cap), row 5 F: 0/4;          sample (.55,0) [6 samples: re-fit -> 0.7]
#   t=6 p<0.7 conf .5            -> stops at 1, row 6 T: 1/1;       sample (.5,1)  [7: re-fit -> 0.5]
#   t=8 p<0.5 conf .35           -> stops at 1, row 8 F: 0/1;       sample (.35,0)
DYN_AGREE = [1, 0, 1, 1, 0, 0, 1, 1, 0, 1, 1, 1, 1]
DYN_MAXPROB = [0.9, 0.3, 0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.35, 0.99, 0.99, 0.99, 0.99]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    traces = [hand_trace(0, HEUR_AGREE), hand_trace(1, DYN_AGREE, DYN_MAXPROB),
              hand_trace(2, np.random.default_rng(3).random(40) < 0.7, seed=2)]
    return write_replay_files(tmp_path_factory.mktemp("hf"), traces)


# ------------------------------------------------------------------------------------------ heuristic
def test_heuristic_counter_rule():
    """+2 after a verification that accepted every draft, else -1 with floor 1; no upper bound."""
    lists_env = {"exit_layers": (4,), "spec_lengths": (0, 1, 2, 3, 4), "stop_rules": None, "observation": ()}
    from agents.base import EnvSpec

    agent = HFHeuristicAgent(EnvSpec(**lists_env), 4)
    assert agent.num_assistant_tokens == 20 and agent.k == 4
    seq = []
    for acc, d in [(4, 4), (4, 4), (2, 4), (0, 1), (3, 3)]:
        agent.observe({"accepted": acc, "drafted": d})
        seq.append(agent.num_assistant_tokens)
    assert seq == [22, 24, 23, 22, 24]
    for _ in range(40):
        agent.observe({"accepted": 0, "drafted": 4})
    assert agent.num_assistant_tokens == 1 and agent.k == 1


def test_heuristic_episode_by_hand(files):
    for stop_rules in (None, "default"):   # 2-component env, and a 3-component one with the rule "none"
        env = make_env(files, stop_rules=stop_rules)
        agent = HFHeuristicAgent(env, LAYER, num_assistant_tokens=2)
        ep = rollout(env, agent, options={"prompt_index": 0})
        assert steps(ep, "drafted") == HEUR_DRAFTED and steps(ep, "accepted") == HEUR_ACCEPTED
        assert ep.actions[:, 1].tolist() == HEUR_DRAFTED            # lengths 0..4: index == length
        assert (ep.actions[:, 0] == J).all()
        if stop_rules:
            assert (ep.actions[:, 2] == env.unwrapped.stop_rules.index("none")).all()
        else:
            assert ep.actions.shape[1] == 2
        assert agent.num_assistant_tokens == 5


def test_heuristic_default_start_and_persistence(files):
    env = make_env(files)
    agent = build("hf-heuristic", env, ZooContext(best_static=BestStaticAgent(env, LAYER, 2), best_speculative=BestStaticAgent(env, LAYER, 2)))
    assert agent.arguments() == {"exit_layer": LAYER, "num_assistant_tokens": 20, "schedule": "heuristic"}
    assert not needs_stop_rules("hf-heuristic")
    ep = rollout(env, agent, options={"prompt_index": 0})
    assert steps(ep, "k")[0] == 4                                     # 20, clipped to the largest length
    # HF's "heuristic" keeps the counter across generate() calls (episodes); "heuristic_transient" restarts it.
    persistent = HFHeuristicAgent(env, LAYER, num_assistant_tokens=2)
    transient = HFHeuristicAgent(env, LAYER, num_assistant_tokens=2, schedule="heuristic_transient")
    for a in (persistent, transient):
        rollout(env, a, options={"prompt_index": 0})                  # ends with n = 5
    assert steps(rollout(env, persistent, options={"prompt_index": 0}), "k")[0] == 4
    ep = rollout(env, transient, options={"prompt_index": 0})
    assert steps(ep, "drafted") == HEUR_DRAFTED
    with pytest.raises(ValueError, match="schedule"):
        HFHeuristicAgent(env, LAYER, schedule="constant")
    with pytest.raises(ValueError, match="best fixed exit"):
        build("hf-heuristic", env)


# ------------------------------------------------------------------------------------------ dynamic threshold
def test_roc_curve_matches_a_hand_computed_case():
    # Sorted scores .9 .8 .7 .6 .55 .2 with labels 1 1 0 1 0 0: cumulative (fp, tp) = (0,1) (0,2) (1,2) (1,3)
    # (2,3) (3,3); (2,3) at .55 is collinear with its neighbours and dropped; the curve starts at (0,0) with inf.
    fpr, tpr, thr = roc_curve([1, 1, 0, 1, 0, 0], [0.9, 0.8, 0.7, 0.6, 0.55, 0.2])
    assert thr.tolist() == [np.inf, 0.9, 0.8, 0.7, 0.6, 0.2]
    assert fpr == pytest.approx([0, 0, 0, 1 / 3, 1 / 3, 1])
    assert tpr == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 1, 1])
    # fpr + 3 fnr = 3, 2, 1, 4/3, 1/3, 1: the threshold is 0.6 (fpr + fnr would pick 0.8).
    assert fit_confidence_threshold([1, 1, 0, 1, 0, 0], [0.9, 0.8, 0.7, 0.6, 0.55, 0.2]) == 0.6
    # Ties share one threshold; unsorted input is sorted.
    fpr, tpr, thr = roc_curve([0, 1, 1, 0], [0.5, 0.5, 0.9, 0.1], drop_intermediate=False)
    assert thr.tolist() == [np.inf, 0.9, 0.5, 0.1] and tpr.tolist() == [0, 0.5, 1, 1]
    assert fpr.tolist() == [0, 0, 0.5, 1]
    # HF re-fits only with more than 5 samples and both classes.
    assert fit_confidence_threshold([1, 0, 1, 1, 0], [0.9, 0.3, 0.8, 0.7, 0.6]) is None
    assert fit_confidence_threshold([1] * 8, [0.5] * 8) is None


def test_dynamic_bookkeeping():
    from agents.base import EnvSpec
    from lede_env.engine.stop_rules import DEFAULT_STOP_RULES

    spec = EnvSpec(exit_layers=(4,), spec_lengths=(0, 1, 2, 3, 4), stop_rules=DEFAULT_STOP_RULES, observation=())
    agent = HFDynamicAgent(spec, 4)
    agent.observe({"accepted": 1, "drafted": 3, "draft_maxprob": [0.9, 0.3]})     # 1 accepted, then the rejected
    agent.observe({"accepted": 2, "drafted": 2, "draft_maxprob": [0.8, 0.7]})     # all accepted: no 0
    assert agent.probs == pytest.approx([0.9, 0.3, 0.8, 0.7]) and agent.matches == [1, 0, 1, 1]
    agent.observe({"accepted": 0, "drafted": 0, "draft_maxprob": []})
    assert len(agent.probs) == 4 and agent.threshold == 0.4 and agent.stop_rule == "p<0.4"
    agent.reset({})
    assert agent.probs == [] and agent.matches == [] and agent.threshold == 0.4


def test_dynamic_episode_by_hand(files):
    env = make_env(files, stop_rules="default")
    rules = env.unwrapped.stop_rules
    agent = HFDynamicAgent(env, LAYER)
    assert agent.kidx == 4 and needs_stop_rules("hf-dynamic")          # cap 20, clipped to 4
    ep = rollout(env, agent, options={"prompt_index": 1})
    assert steps(ep, "drafted")[:5] == [2, 4, 4, 1, 1]
    assert steps(ep, "accepted")[:5] == [1, 2, 0, 1, 0]
    assert [rules[s] for s in ep.actions[:5, 2]] == ["p<0.4", "p<0.4", "p<0.4", "p<0.7", "p<0.5"]
    assert steps(ep, "stop_rule")[:5] == ["p<0.4", "p<0.4", "p<0.4", "p<0.7", "p<0.5"]
    assert agent.matches[:8] == [1, 0, 1, 1, 0, 0, 1, 0]
    assert agent.probs[:8] == pytest.approx([0.9, 0.3, 0.8, 0.7, 0.6, 0.55, 0.5, 0.35])
    # Per generate() call: a new episode starts again from 0.4 with no samples.
    ep = rollout(env, agent, options={"prompt_index": 1})
    assert steps(ep, "drafted")[:5] == [2, 4, 4, 1, 1]
    # Without the hooks (what evaluate_policy does) the threshold stays 0.4.
    obs, _ = env.reset(options={"prompt_index": 1})
    plain = HFDynamicAgent(env, LAYER)
    drafted = []
    for _ in range(4):
        action, _ = plain.predict(obs[None])
        assert rules[action[0, 2]] == "p<0.4"
        obs, _, term, trunc, info = env.step(action[0])
        drafted.append(info["drafted"])
    assert drafted == [2, 4, 4, 3]                                     # t=6: p<0.4 stops at .35 (row 8)
    with pytest.raises(ValueError, match="stop_rules='default'"):
        HFDynamicAgent(make_env(files), LAYER)


# ------------------------------------------------------------------------------------------ storage, SB3
@pytest.mark.parametrize("cls, kw", [(HFHeuristicAgent, {"num_assistant_tokens": 3, "schedule": "heuristic_transient"}),
                                     (HFDynamicAgent, {"assistant_confidence_threshold": 0.55})])
def test_save_load_round_trip(files, tmp_path, cls, kw):
    env = make_env(files, stop_rules="default")
    agent = cls(env, LAYER, **kw)
    loaded = load(agent.save(tmp_path / cls.kind), env)
    assert type(loaded) is cls and loaded.arguments() == agent.arguments()
    a = rollout(env, agent, options={"prompt_index": 2})
    b = rollout(env, loaded, options={"prompt_index": 2})
    assert a.actions.tolist() == b.actions.tolist() and a.episode_return == b.episode_return


def test_evaluate_policy_runs_without_hooks(files):
    evaluation = pytest.importorskip("stable_baselines3.common.evaluation")
    from stable_baselines3.common.monitor import Monitor

    for name in ("hf-heuristic", "hf-dynamic"):
        env = Monitor(make_env(files, stop_rules="default"))
        agent = build(name, env, ZooContext(best_static=BestStaticAgent(env, LAYER, 2), best_speculative=BestStaticAgent(env, LAYER, 2)))
        mean, _ = evaluation.evaluate_policy(agent, env, n_eval_episodes=2, warn=False)
        assert np.isfinite(mean)
