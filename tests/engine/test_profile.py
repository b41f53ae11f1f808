"""Latency profiles (`lede_env.engine.profile`, `measure`): the modelled step cost, the CPU a profile records and
the warning when a profile from another CPU prices rewards."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import pytest

import lede_env  # noqa: F401  (registers the ids)
from lede_env.engine.profile import LatencyProfile, StaleProfileWarning, cpu_signature, find_profile
from tests.conftest import TINY_SPEC


def synthetic(cpu: str) -> LatencyProfile:
    N = 6
    layer = tuple(0.001 * (1 + 0.1 * q) for q in range(8))
    head = tuple(0.002 + 0.0001 * q for q in range(8))
    return LatencyProfile(model="synthetic", dtype="float32", device="cpu", threads=1, path="fast",
                          exit_heads="identity", num_layers=N, draft_cost={2: 0.004, 4: 0.006},
                          verify_cost=tuple(N * layer[q] + head[q] + 0.0005 for q in range(8)), layer_cost=layer,
                          head_cost=head, cpu=cpu)


def test_step_cost_is_the_documented_formula():
    p = synthetic(cpu_signature())
    N, L, d = 6, 4, 3
    expected = d * 0.006 + L * p.layer_cost[0] + (N - L) * p.layer_cost[d] + p.head_cost[d] + p.overhead
    assert p.step_cost(L, d) == pytest.approx(expected)
    assert p.step_cost(L, 0) == p.c_ar == p.verify_cost[0]
    assert p.overhead == pytest.approx(0.0005)
    with pytest.raises(ValueError, match="no draft cost for exit layer 3"):
        p.step_cost(3, 1)
    with pytest.raises(ValueError, match="up to 8 positions"):
        p.step_cost(2, 8)


def test_measured_profile_records_this_cpu(tiny_setup):
    data = json.loads(open(tiny_setup["profile"]).read())
    assert data["cpu"] == cpu_signature() != ""
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleProfileWarning)
        assert LatencyProfile.load(tiny_setup["profile"]).cpu == cpu_signature()


def test_profile_from_another_cpu_warns_and_names_lede_profile(tmp_path):
    path = synthetic("Some Other CPU; 64 cores; L3 1 GB; avx512").save(tmp_path / "other.json")
    with pytest.warns(StaleProfileWarning, match="another CPU.*Some Other CPU.*lede profile"):
        LatencyProfile.load(path)


def test_env_priced_by_a_stale_profile_warns(tiny_setup, tmp_path):
    data = json.loads(open(tiny_setup["profile"]).read())
    data["cpu"] = "Another CPU; 8 cores; L3 8M; avx2"
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(data))
    with pytest.warns(StaleProfileWarning, match="lede profile"):
        gym.make("LEDE-v0", backend="replay", traces=tiny_setup["traces"], profile=str(stale),
                 spec_lengths=TINY_SPEC)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleProfileWarning)
        gym.make("LEDE-v0", backend="replay", traces=tiny_setup["traces"], profile=tiny_setup["profile"],
                 spec_lengths=TINY_SPEC)


def test_shipped_profiles_say_which_cpu_measured_them():
    """The shipped profiles carry the CPU they were measured on; on any other CPU, loading them warns."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = find_profile("smollm2-135m", "float32", "cpu", 2, "fast", "eagle+vocab")
    assert p.cpu and p.cpu != "unknown"
    assert (p.cpu == cpu_signature()) == (not any(issubclass(w.category, StaleProfileWarning) for w in caught))


def test_profile_records_its_build_and_a_live_env_on_another_build_warns(tiny_setup, tmp_path):
    """A profile stores which build of the layer stack measured it; a live environment running another build
    (the AVX-512, portable and torch builds of one path differ several-fold) warns and names `lede profile`."""
    from lede_env.engine.decoder import SelfSpeculativeDecoder
    from lede_env.models import load_model

    data = json.loads(open(tiny_setup["profile"]).read())
    model, _ = load_model("tiny-random")
    assert data["build"] == SelfSpeculativeDecoder(model).stack.build != "unknown"
    data["build"] = "some-other-build"
    other = tmp_path / "other-build.json"
    other.write_text(json.dumps(data))
    kw = dict(model="tiny-random", prompts=tiny_setup["prompts"], exit_heads="identity", chat_template=False,
              spec_lengths=TINY_SPEC, exit_layers=(1, 2), max_new_tokens=8)
    with pytest.warns(StaleProfileWarning, match="'some-other-build' build.*lede profile"):
        gym.make("LEDE-v0", profile=str(other), **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleProfileWarning)
        gym.make("LEDE-v0", profile=tiny_setup["profile"], **kw)


def test_components_are_timed_interleaved():
    """Each round times every component once, in turn (a drifting machine shifts them alike), and the medians are
    per component."""
    from lede_env.engine.measure import interleaved_medians

    calls = []
    timers = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    syncs = []
    out = interleaved_medians(timers, repeats=4, sync=lambda: syncs.append(1))
    assert calls == ["a", "b", "c"] * 4
    assert set(out) == {"a", "b", "c"} and all(v >= 0 for v in out.values())
    assert len(syncs) == 2 * 12                      # before and after every timed call


def test_a_missing_profile_names_the_command_that_measures_it(tmp_path, monkeypatch):
    """The command in the message is one `lede profile` accepts: its --heads takes identity, default or a folder,
    never the heads' label."""
    from lede_env.engine import profile as profile_module

    monkeypatch.setattr(profile_module, "artifacts_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match=r"--threads 7 --path fast --heads default` \(about a minute\)"):
        profile_module.find_profile("smollm2-135m", threads=7, path="fast", exit_heads="eagle+vocab")
    with pytest.raises(FileNotFoundError, match=r"--heads identity`"):
        profile_module.find_profile("tiny-random", threads=7, path="fast", exit_heads="identity")
    with pytest.raises(FileNotFoundError, match=r"--heads <the folder of the kl heads>`"):
        profile_module.find_profile("smollm2-135m", threads=7, path="fast", exit_heads="kl")
