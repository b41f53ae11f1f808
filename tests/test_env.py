"""LEDE-v0 on the tiny model: Gymnasium API, exactness, reward parts, live == replay, errors, rendering."""

import copy

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import lede_env  # noqa: F401  (registers the ids)
from lede_env.wrappers import FlattenAction, flatten_action, unflatten_action

from tests.conftest import TINY_EXITS as EXITS, TINY_MAX_NEW_TOKENS, TINY_PROBES, TINY_SPEC as SPEC


def make(setup, **kw):
    base = dict(model="tiny-random", prompts=setup["prompts"], profile=setup["profile"],
                max_new_tokens=TINY_MAX_NEW_TOKENS, exit_layers=EXITS, spec_lengths=SPEC, probe_layers=TINY_PROBES,
                chat_template=False, exit_heads="identity")
    base.update(kw)
    return gym.make("LEDE-v0", **base)


def replay(setup, **kw):
    kw.setdefault("spec_lengths", SPEC)
    return gym.make("LEDE-v0", backend="replay", traces=setup["traces"], profile=setup["profile"], **kw)


def run_episode(env, actions, prompt_index):
    obs, info = env.reset(seed=0, options={"prompt_index": prompt_index})
    observations, infos, rewards = [obs], [info], []
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        observations.append(obs)
        infos.append(info)
        rewards.append(r)
        if term or trunc:
            return observations, infos, rewards, term, trunc
    raise AssertionError("episode did not end")


def test_check_env_live_and_replay(tiny_setup):
    check_env(make(tiny_setup).unwrapped, skip_render_check=True)
    check_env(replay(tiny_setup).unwrapped, skip_render_check=True)


def test_live_is_exact_and_rewards_add_up(tiny_setup, tiny):
    model, tok = tiny
    env = make(tiny_setup)
    rng = np.random.default_rng(0)
    for i in range(3):
        actions = [env.action_space.sample() for _ in range(60)]
        obs, infos, rewards, term, trunc = run_episode(env, actions, i)
        prompt = infos[0]["prompt_ids"]
        import torch
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)[0, len(prompt):].tolist()
        assert infos[-1]["generated_ids"] == ref
        assert sum(x["tokens"] for x in infos[1:]) == len(ref) - 1
        for info, r in zip(infos[1:], rewards):
            assert r == pytest.approx(info["tokens"] - info["cost"] / info["c_ar"])
        assert term and not trunc
    assert rng is not None


def test_info_keys_are_the_same_at_reset_and_step(tiny_setup):
    env = make(tiny_setup)
    _, info0 = env.reset(seed=1)
    _, _, _, _, info1 = env.step(np.array([2, 3]))
    assert set(info0) == set(info1)
    assert info1["text"] and info1["exit_layer"] == EXITS[2] and info1["k"] == 3


def record_backend_steps(env) -> list:
    """Keep every `BackendStep` the env's backend returns (the backend's own output, before the features)."""
    base = env.unwrapped
    steps, step = [], base.backend.step

    def recording(exit_layer, k, stop=None):
        s = step(exit_layer, k, stop)
        steps.append(s)
        return s

    base.backend.step = recording
    return steps


@pytest.mark.parametrize("exits", [EXITS, (5, 2, 3)])
def test_live_and_replay_agree(tiny_setup, exits):
    """The live backend (the engine decoding) and the replay backend (the recorded traces) give the same
    steps, observations, rewards, infos and ends for the same prompts and actions. Compared field by field
    with float32 tolerance: the tiny model's probabilities are small (vocabulary 64), so a loose absolute
    tolerance would let a wrong row or column through. Also with a reordered subset of the recorded exits."""
    live, rep = make(tiny_setup, exit_layers=exits), replay(tiny_setup, text_in_info=True, exit_layers=exits)
    live_steps, rep_steps = record_backend_steps(live), record_backend_steps(rep)
    rng = np.random.default_rng(1)
    J, K = len(exits), len(SPEC)
    n_steps = drafted = accepted = 0
    for i in range(tiny_setup["n"]):
        actions = [np.array([rng.integers(J), rng.integers(K)]) for _ in range(60)]
        del live_steps[:], rep_steps[:]
        o1, i1, r1, *end1 = run_episode(live, actions, i)
        o2, i2, r2, *end2 = run_episode(rep, actions, i)
        assert len(live_steps) == len(rep_steps) == len(i1) - 1 == len(i2) - 1
        for a, b in zip(live_steps, rep_steps):
            assert (a.exit_layer, a.k, a.drafted, a.accepted, a.tokens, a.finished, a.truncated) == \
                (b.exit_layer, b.k, b.drafted, b.accepted, b.tokens, b.finished, b.truncated)
            assert a.wall_time > 0 and b.wall_time is None
            np.testing.assert_allclose([a.full_maxprob, a.full_entropy, a.draft_maxprob, *a.probe_cos],
                                       [b.full_maxprob, b.full_entropy, b.draft_maxprob, *b.probe_cos],
                                       rtol=2e-6, atol=1e-7)
            assert len(a.probe_cos) == len(b.probe_cos) == len(TINY_PROBES)
            assert (a.draft_maxprob > 0) == (a.drafted > 0)
            n_steps += 1
            drafted += a.drafted
            accepted += a.accepted
        for x, y in zip(i1, i2):
            assert x == y
        np.testing.assert_allclose(np.array(o1), np.array(o2), rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(r1, r2, rtol=1e-12)
        assert end1 == end2
    assert n_steps > 50 and 0 < accepted < drafted   # drafts were made, some accepted, some rejected


def test_bad_actions_and_arguments(tiny_setup):
    env = make(tiny_setup)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside MultiDiscrete"):
        env.step(np.array([len(EXITS), 0]))
    with pytest.raises(ValueError, match="outside MultiDiscrete"):
        env.step(np.array([0, -1]))
    with pytest.raises(ValueError, match="out of range"):
        make(tiny_setup, exit_layers=(1, 6))
    with pytest.raises(ValueError, match="cost_model"):
        make(tiny_setup, cost_model="guess")
    with pytest.raises(ValueError, match="replay"):
        gym.make("LEDE-v0", backend="replay")
    with pytest.raises(ValueError, match="not recorded"):
        replay(tiny_setup, exit_layers=(1, 6))
    with pytest.raises(ValueError, match="prompt_index"):
        env.reset(options={"prompt_index": 99})


def test_render_marks_drafts(tiny_setup):
    env = make(tiny_setup, render_mode="ansi")
    env.reset(seed=0, options={"prompt_index": 0})
    for _ in range(5):
        env.step(np.array([4, 3]))
    text = env.render()
    assert isinstance(text, str) and "accepted draft" in text


def test_flatten_wrapper_round_trip(tiny_setup):
    env = FlattenAction(replay(tiny_setup))
    J, K = len(EXITS), len(SPEC)
    assert env.action_space.n == J * K
    for a in range(J * K):
        assert flatten_action(unflatten_action(a, (J, K)), (J, K)) == a
    env.reset(seed=0)
    _, _, _, _, info = env.step(2 * K + 5)
    assert info["exit_layer"] == EXITS[2] and info["k"] == 5


def test_registration_without_import(tiny_setup):
    env = gym.make("lede_env:LEDE-v0", backend="replay", traces=tiny_setup["traces"], profile=tiny_setup["profile"],
                   spec_lengths=SPEC)
    assert env.unwrapped.observation_space.shape == (8 + 2 + len(EXITS),)
    assert gym.spec("LEDE-WallClock-v0").nondeterministic


def test_wallclock_env_prices_steps_with_measured_times(tiny_setup, tiny):
    """`LEDE-WallClock-v0`: each step's cost is its measured wall time, c_ar a measured plain step, both in info
    (with the prefill's time), and the reward is ``tokens - lam * wall_time / c_ar``; the output stays exact."""
    import torch

    model, _ = tiny
    lam = 0.7
    env = gym.make("LEDE-WallClock-v0", model="tiny-random", prompts=tiny_setup["prompts"],
                   max_new_tokens=TINY_MAX_NEW_TOKENS, exit_layers=EXITS, spec_lengths=SPEC, probe_layers=TINY_PROBES,
                   chat_template=False, exit_heads="identity", lam=lam)
    base = env.unwrapped
    assert base.config.cost_model == "wallclock" and env.spec.nondeterministic
    assert not hasattr(base, "profile")   # no latency profile is read
    steps = record_backend_steps(env)
    rng = np.random.default_rng(3)
    for prompt in range(2):
        obs, info = env.reset(seed=0, options={"prompt_index": prompt})
        c_ar = info["c_ar"]
        assert c_ar == base._c_ar and 0 < c_ar < 1
        assert info["cost"] == 0.0 and info["wall_time"] == 0.0 and info["prefill_time"] > 0
        prefill = info["prefill_time"]
        del steps[:]
        infos = [info]
        while True:
            obs, r, term, trunc, info = env.step(np.array([rng.integers(len(EXITS)), rng.integers(len(SPEC))]))
            s = steps[-1]
            infos.append(info)
            assert info["wall_time"] == s.wall_time > 0 and info["cost"] == info["wall_time"]
            assert info["prefill_time"] == prefill and info["c_ar"] == c_ar
            assert r == pytest.approx(info["tokens"] - lam * info["wall_time"] / c_ar, rel=1e-12)
            assert info["tokens"] == len(s.tokens) and env.observation_space.contains(obs)
            if term or trunc:
                break
        assert term and not trunc
        prompt_ids = infos[0]["prompt_ids"]
        ref = model.generate(torch.tensor([prompt_ids]), max_new_tokens=TINY_MAX_NEW_TOKENS,
                             do_sample=False)[0, len(prompt_ids):].tolist()
        assert info["generated_ids"] == ref
        assert len({x["wall_time"] for x in infos[1:]}) > 1   # measured, not a table lookup
    # LEDE-v0 keeps measured times out of info.
    _, info = make(tiny_setup).reset(seed=0)
    assert "wall_time" not in info and "prefill_time" not in info


def test_replay_rewards_and_info_by_hand(tiny_setup, tiny):
    """Each step's info and reward from the trace and the profile, computed here: outcome from
    ``Trace.outcome``, cost ``profile.step_cost(L, drafted)``, reward ``tokens - lam * cost / c_ar``, the budget
    feature, the text, fresh lists in every info. Speculation lengths out of order, so an index is not a length."""
    from lede_env.engine.profile import LatencyProfile
    from lede_env.traces import TraceSet

    _, tok = tiny
    spec, lam = (0, 3, 1, 6, 2), 0.5
    env = replay(tiny_setup, lam=lam, text_in_info=True, spec_lengths=spec)
    prof = LatencyProfile.load(tiny_setup["profile"])
    traces = TraceSet.load(tiny_setup["traces"])
    rng = np.random.default_rng(5)
    for prompt in range(tiny_setup["n"]):
        tr = traces.traces[prompt]
        obs, info = env.reset(seed=0, options={"prompt_index": prompt})
        assert info["prompt_index"] == prompt and info["prompt_ids"] == tr.prompt_ids.tolist()
        assert info["generated_ids"] == [int(tr.tokens[0])] and info["c_ar"] == prof.c_ar
        assert (info["tokens"], info["accepted"], info["drafted"], info["cost"], info["exit_layer"], info["k"]) == \
            (0, 0, 0, 0.0, -1, -1)
        assert obs[-1] == pytest.approx(1 / TINY_MAX_NEW_TOKENS)
        t, old_infos, snapshots = 0, [info], [copy.deepcopy(info)]
        while True:
            j, kidx = int(rng.integers(len(EXITS))), int(rng.integers(len(spec)))
            out = tr.outcome(t, j, spec[kidx])
            obs, r, term, trunc, info = env.step(np.array([j, kidx]))
            cost = prof.step_cost(EXITS[j], out.drafted)
            assert info["exit_layer"] == EXITS[j] and info["k"] == spec[kidx]
            assert (info["tokens"], info["accepted"], info["drafted"]) == (out.produced, out.accepted, out.drafted)
            assert info["cost"] == pytest.approx(cost, rel=1e-12) and info["c_ar"] == prof.c_ar
            assert r == pytest.approx(out.produced - lam * cost / prof.c_ar, rel=1e-12)
            t += out.produced
            assert info["generated_ids"] == tr.tokens[:t + 1].tolist()
            assert info["text"] == tok.decode(info["generated_ids"], skip_special_tokens=False)
            assert obs[-1] == pytest.approx((t + 1) / TINY_MAX_NEW_TOKENS)
            assert (term, trunc) == (out.finished, False)
            old_infos.append(info)
            snapshots.append(copy.deepcopy(info))
            if term:
                break
        assert t == tr.length - 1
        # An info never changes after it was returned, and changing one changes nothing else.
        assert old_infos == snapshots
        old_infos[-1]["generated_ids"].append(-1)
        old_infos[-1]["prompt_ids"].append(-1)
        assert env.unwrapped._generated == tr.tokens.tolist()
        assert env.unwrapped._prompt_ids == tr.prompt_ids.tolist()
        assert old_infos[0]["generated_ids"] == [int(tr.tokens[0])]


def test_live_and_replay_truncate_when_the_context_is_full(tiny_setup, tiny, tmp_path):
    """A full context window ends the episode as truncated, not terminated, in both backends (replay: a trace
    recorded with that window); the tokens are still greedy."""
    import torch

    from lede_env.record import record_traces_for

    model, _ = tiny
    _, traces = record_traces_for("tiny-random", tiny_setup["prompts"], str(tmp_path / "short.npz"), limit=1,
                                  max_new_tokens=TINY_MAX_NEW_TOKENS, heads="identity", exit_layers=EXITS,
                                  probe_layers=TINY_PROBES, chat_template=False, max_context=30, progress=False)
    live = make(tiny_setup, max_context=30)
    rep = gym.make("LEDE-v0", backend="replay", traces=str(traces), profile=tiny_setup["profile"], spec_lengths=SPEC)
    rng = np.random.default_rng(2)
    for _ in range(3):   # prompt 0 fills the window (prompt 1 would end at EOS first)
        actions = [np.array([rng.integers(len(EXITS)), rng.integers(len(SPEC))]) for _ in range(40)]
        _, i1, r1, term, trunc = run_episode(live, actions, 0)
        _, i2, r2, *end2 = run_episode(rep, actions, 0)
        assert trunc and not term and end2 == [term, trunc]
        prompt_ids = i1[0]["prompt_ids"]
        assert len(prompt_ids) + TINY_MAX_NEW_TOKENS > 30
        assert len(prompt_ids) + len(i1[-1]["generated_ids"]) == 30
        ref = model.generate(torch.tensor([prompt_ids]), max_new_tokens=40, do_sample=False)[0, len(prompt_ids):]
        assert i1[-1]["generated_ids"] == i2[-1]["generated_ids"] == ref.tolist()[:len(i1[-1]["generated_ids"])]
        assert [x["drafted"] for x in i1] == [x["drafted"] for x in i2]
        np.testing.assert_allclose(r1, r2, rtol=1e-12)


def _synthetic_replay_files(tmp_path, lengths):
    """Traces of the given lengths (a length-1 trace ends at its prefill) and a profile, without a model."""
    from lede_env.engine.profile import LatencyProfile, cpu_signature
    from lede_env.traces import Trace, TraceSet

    rng = np.random.default_rng(0)
    traces = []
    for i, T in enumerate(lengths):
        tokens = rng.integers(3, 50, size=T).astype(np.int64)
        traces.append(Trace(prompt_index=i, prompt_ids=np.arange(4, dtype=np.int64), tokens=tokens, exit_layers=(2, 4),
                            probe_layers=(3,), draft_tokens=np.tile(tokens[1:, None], (1, 2)),
                            draft_maxprob=np.full((T - 1, 2), 0.5, np.float32),
                            full_maxprob=np.full(T - 1, 0.5, np.float32), full_entropy=np.ones(T - 1, np.float32),
                            probe_cos=np.ones((T - 1, 1), np.float32), eos=False, max_new_tokens=max(lengths),
                            max_context=10_000))
    meta = {"model": "synthetic", "dtype": "float32", "exit_heads": "identity", "exit_layers": [2, 4],
            "probe_layers": [3], "max_new_tokens": max(lengths), "vocab_size": 50, "num_layers": 6,
            "prompts": "synthetic:train"}
    path = TraceSet(traces=tuple(traces), meta=meta).save(tmp_path / "traces.npz")
    prof = LatencyProfile(model="synthetic", dtype="float32", device="cpu", threads=1, path="eager", cpu=cpu_signature(),
                          exit_heads="identity", num_layers=6, draft_cost={2: 0.002, 4: 0.004},
                          verify_cost=tuple(0.01 + 0.001 * q for q in range(8)),
                          layer_cost=tuple(0.001 for _ in range(8)), head_cost=tuple(0.001 for _ in range(8)))
    return str(path), str(prof.save(tmp_path / "profile.json"))


def test_reset_skips_prompts_that_end_at_the_prefill(tmp_path):
    traces, profile = _synthetic_replay_files(tmp_path, [1, 1, 6, 1])
    env = gym.make("LEDE-v0", backend="replay", traces=traces, profile=profile, spec_lengths=(0, 1, 2))
    for seed in range(12):
        _, info = env.reset(seed=seed)
        assert info["prompt_index"] == 2   # the only prompt with a step to take, whichever was drawn
        _, _, term, _, _ = env.step(np.array([1, 2]))
        assert not term
    with pytest.raises(ValueError, match="ends at its first token"):
        env.reset(options={"prompt_index": 0})


def test_stop_rules_live_is_exact_and_replay_agrees(tiny_setup, tiny):
    """With stop rules (adaptive drafting inside a step) the live output is still the greedy output; replay gives
    the same accepted counts, tokens, observations and ends for the same actions, and the same drafted counts
    wherever the rule stopped at or before the first rejected draft (past it, and after the final token, the replay
    reads a proxy: `Trace.drafted_under`)."""
    from lede_env.traces import TraceSet

    ts = TraceSet.load(tiny_setup["traces"])
    p = np.concatenate([t.draft_maxprob.ravel() for t in ts.traces])
    H = np.concatenate([t.draft_entropy.ravel() for t in ts.traces])
    assert np.isfinite(H).all()    # recorded (trace format 2)
    q = lambda x, f: float(f"{np.quantile(x, f):.3g}")  # noqa: E731
    rules = ("none", f"p<{q(p, 0.5)}", f"p<{q(p, 0.2)}", f"prod<{q(p, 0.5) ** 2:.3g}", f"H>{q(H, 0.5)}")
    live, rep = make(tiny_setup, stop_rules=rules), replay(tiny_setup, stop_rules=rules)
    assert live.action_space.nvec.tolist() == [len(EXITS), len(SPEC), len(rules)]
    live_steps, rep_steps = record_backend_steps(live), record_backend_steps(rep)
    rng = np.random.default_rng(3)
    early = proxied = 0
    model, _ = tiny
    import torch

    for i in range(tiny_setup["n"]):
        actions = [np.array([rng.integers(len(EXITS)), rng.integers(3, len(SPEC)), rng.integers(len(rules))])
                   for _ in range(60)]
        del live_steps[:], rep_steps[:]
        o1, i1, r1, *end1 = run_episode(live, actions, i)
        o2, i2, r2, *end2 = run_episode(rep, actions, i)
        # the observations count verified drafts only: exact in replay too
        np.testing.assert_allclose(np.array(o1), np.array(o2), rtol=2e-6, atol=1e-7)
        prompt = i1[0]["prompt_ids"]
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=TINY_MAX_NEW_TOKENS,
                             do_sample=False)[0, len(prompt):].tolist()
        assert i1[-1]["generated_ids"] == ref == i2[-1]["generated_ids"]
        assert end1 == end2
        for a, b, x in zip(live_steps, rep_steps, i1[1:]):
            assert (a.accepted, a.tokens, a.finished, a.truncated) == (b.accepted, b.tokens, b.finished, b.truncated)
            assert x["stop_rule"] in rules
            early += x["stop_rule"] != "none" and a.drafted < a.k
            if (a.drafted <= a.accepted + 1 or b.drafted <= b.accepted + 1) and not a.finished:
                assert a.drafted == b.drafted            # decided on the committed prefix (before EOS): exact
            else:
                proxied += 1
    assert early > 10 and proxied > 0   # the rules stopped drafts early, some past the first rejected draft


def test_stop_rule_actions_out_of_range_are_refused(tiny_setup):
    env = replay(tiny_setup, stop_rules=("none", "p<0.5"))
    env.reset(seed=0)
    for bad in ([0, 0, 2], [0, 0, -1], [0, 0], [len(EXITS), 0, 0]):
        with pytest.raises(ValueError, match=r"stop-rule index in 0..1 \(stop rules \['none', 'p<0.5'\]\)"):
            env.step(np.array(bad))
    env.step(np.array([0, 1, 1]))


def test_live_and_replay_agree_with_eagle_heads(tiny_eagle_setup, tiny):
    """Eagle heads (a step's first draft reads the verified feature): the trace records those first drafts apart
    (they differ from the later drafts' at many rows, so replay reading the wrong ones would fail here); live output
    is plain greedy; live and replay give the same steps, observations, rewards and ends, with and without stop
    rules."""
    import torch

    from lede_env.traces import TraceSet

    setup = tiny_eagle_setup
    ts = TraceSet.load(setup["traces"])
    assert all(t.has_first for t in ts.traces)
    assert np.mean(np.concatenate([(t.first_tokens != t.draft_tokens).ravel() for t in ts.traces])) > 0.1
    model, _ = tiny
    for rules in (None, ("none", "p<0.3", "prod<0.2")):
        kw = {} if rules is None else {"stop_rules": rules}
        live = make(setup, exit_heads=setup["heads"], **kw)
        rep = replay(setup, text_in_info=True, **kw)
        live_steps, rep_steps = record_backend_steps(live), record_backend_steps(rep)
        rng = np.random.default_rng(5)
        nvec = live.action_space.nvec
        accepted = 0
        for i in range(setup["n"]):
            actions = [rng.integers(nvec) for _ in range(60)]
            del live_steps[:], rep_steps[:]
            o1, i1, r1, *end1 = run_episode(live, actions, i)
            o2, i2, r2, *end2 = run_episode(rep, actions, i)
            prompt = i1[0]["prompt_ids"]
            ref = model.generate(torch.tensor([prompt]), max_new_tokens=TINY_MAX_NEW_TOKENS,
                                 do_sample=False)[0, len(prompt):].tolist()
            assert i1[-1]["generated_ids"] == ref == i2[-1]["generated_ids"]
            for a, b in zip(live_steps, rep_steps):
                assert (a.accepted, a.tokens, a.finished, a.truncated) == (b.accepted, b.tokens, b.finished,
                                                                            b.truncated)
                if rules is None or a.drafted <= a.accepted + 1 and not a.finished:
                    assert a.drafted == b.drafted
                    np.testing.assert_allclose(a.draft_confidences, b.draft_confidences, rtol=2e-6, atol=1e-7)
                accepted += a.accepted
            np.testing.assert_allclose(np.array(o1), np.array(o2), rtol=2e-6, atol=1e-7)
            if rules is None:
                np.testing.assert_allclose(r1, r2, rtol=1e-12)
            assert end1 == end2
        assert accepted > 0


def test_live_env_samples_under_temperature_and_replay_refuses(tiny_setup):
    """temperature > 0: the live env decodes by speculative sampling (seeded by reset's seed, so an episode repeats);
    the output is no longer the greedy one; replay refuses the option; bad values are named."""
    greedy = make(tiny_setup)
    sampled = make(tiny_setup, temperature=1.5, top_p=0.9)
    assert sampled.unwrapped.backend.decoder.sampling.temperature == 1.5
    assert sampled.unwrapped.backend.decoder.sampling.top_p == 0.9
    actions = [np.array([1, 3])] * 60
    outs = []
    for env in (greedy, sampled, sampled):
        outs.append([run_episode(env, actions, i)[1][-1]["generated_ids"] for i in range(3)])
    assert outs[1] == outs[2]                     # the same seed at reset: the same sample
    assert outs[1] != outs[0]                     # and not the greedy continuation
    with pytest.raises(ValueError, match="replay backend is greedy"):
        replay(tiny_setup, temperature=0.6)
    with pytest.raises(ValueError, match="replay backend is greedy"):
        replay(tiny_setup, top_p=0.9)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        make(tiny_setup, temperature=-0.5)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        make(tiny_setup, temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        make(tiny_setup, temperature="hot")


def test_env_config_checks_the_device():
    from lede_env.env import EnvConfig

    with pytest.raises(ValueError, match="device must be a non-empty string"):
        EnvConfig(device="")
    assert EnvConfig(device="cuda:1").device == "cuda:1"    # checked against the machine when the model loads
