"""`lede evaluate` (agents.evaluation): the speedup and the share of the oracle's gain against `lede_env.oracle`, the
files, saved agents, bad names, and the command end to end on the shipped traces. No model."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agents import RandomAgent, StaticAgent
from agents.base import KINDS
from agents.evaluation import evaluate, resolve_agents, resolve_prompt_sets
from agents.zoo import ZOO
from lede_env.cli import app
from lede_env.defaults import SHIPPED_TRACES, shipped_traces
from lede_env.oracle import aggregate_speedup, best_static, rollout_static, solve
from tests.agents.synthetic import EXITS, SPEC, make_env, synthetic_trace, write_replay_files

SHIPPED_TEST = SHIPPED_TRACES / "smollm2-135m_eagle+vocab_mixed-test.npz"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Test and training traces (deeper exits agree more often; one trace of a single token, which has no step) and
    the synthetic latency profile."""
    root = tmp_path_factory.mktemp("evaluation")
    rng = np.random.default_rng(7)
    test = [synthetic_trace(i, 1 if i == 2 else 20 + 7 * i, (0.3, 0.6, 0.85), rng) for i in range(6)]
    train = [synthetic_trace(i, 30, (0.95, 0.3, 0.3), rng) for i in range(6)]    # another best static
    return {"test": write_replay_files(root / "test", test), "train": write_replay_files(root / "train", train),
            "root": root}


def run_eval(files, agents, **kw):
    kw.setdefault("traces", [files["test"]["traces"]])
    kw.setdefault("train_traces", files["train"]["traces"])
    return evaluate(agents, kw.pop("prompt_sets", ["synthetic:test"]), progress=False,
                    env_kwargs={"profile": files["test"]["profile"], "spec_lengths": SPEC}, **kw)


def stepped(files):
    return [t for t in files["test"]["set"].traces if t.length > 1]


def table_of(files):
    return make_env(files["test"]).unwrapped.cost_table


def test_autoregressive_is_one_oracle_is_the_ceiling(files):
    res = run_eval(files, ["autoregressive", "random", "best-static", "oracle"])
    ar, oracle, static = (res.row(a, "synthetic:test") for a in ("autoregressive", "oracle", "best-static"))
    assert ar.speedup == 1.0 and ar.share == 0.0 and ar.speculative_steps == 0.0 and ar.mean_return == 0.0
    assert ar.tokens_per_step == 1.0 and np.isnan(ar.mean_exit_layer) and np.isnan(ar.mean_k)
    assert oracle.share == pytest.approx(1.0, abs=1e-12)
    ref = res.references["synthetic:test"]
    assert oracle.speedup == pytest.approx(ref.oracle_speedup, rel=1e-12)
    assert oracle.speedup >= ref.hindsight_static_speedup >= static.speedup * (1 - 1e-12)
    # The reference is the DP's optimum on the same traces, priced the same way (`aggregate_speedup`).
    table = table_of(files)
    solved = [solve(t, table, SPEC) for t in stepped(files)]
    assert ref.oracle_speedup == pytest.approx(aggregate_speedup(solved), rel=1e-12)
    assert ref.oracle_return == pytest.approx(sum(r.episode_return for r in solved), rel=1e-12)
    assert oracle.mean_return == pytest.approx(ref.oracle_return / len(solved), rel=1e-12)
    assert ref.episodes == ar.episodes == len(solved) == 5        # the single-token trace has no step: skipped
    assert ar.tokens == sum(t.length - 1 for t in stepped(files)) == ref.tokens
    # Every row: its share is its total return over the oracle's (lam = 1: the mean return times the episodes).
    for r in res.rows:
        assert r.share == pytest.approx(r.mean_return * r.episodes / ref.oracle_return, rel=1e-9, abs=1e-12)
        assert r.share == pytest.approx((1 - 1 / r.speedup) / (1 - 1 / ref.oracle_speedup), rel=1e-9, abs=1e-12)
        assert r.share <= 1.0 + 1e-12


def test_static_speedup_matches_rollout_static(files):
    table = table_of(files)
    res = run_eval(files, ["static-L4-k2", "static-L6-k4", "best-static"])
    for L, k in ((4, 2), (6, 4)):
        row = res.row(f"static-L{L}-k{k}", "synthetic:test")
        rolls = [rollout_static(t, table, EXITS.index(L), k) for t in stepped(files)]
        assert row.speedup == pytest.approx(aggregate_speedup(rolls), rel=1e-12)
        assert row.mean_return == pytest.approx(np.mean([r.episode_return for r in rolls]), rel=1e-12)
        assert row.steps == sum(r.steps for r in rolls)
        assert row.mean_exit_layer == L and row.mean_k == k and row.speculative_steps == 1.0
        counts = np.asarray(row.action_counts)
        assert counts.sum() == row.steps and counts[EXITS.index(L), SPEC.index(k)] == row.steps
    # best-static plays the setting fitted on the *training* traces.
    j, kidx, _ = best_static(files["train"]["set"].traces, table, SPEC)
    ref = res.references["synthetic:test"]
    assert ref.train_static == (EXITS[j], SPEC[kidx]) != ref.hindsight_static
    rolls = [rollout_static(t, table, j, SPEC[kidx]) for t in stepped(files)]
    assert res.row("best-static", "synthetic:test").speedup == pytest.approx(aggregate_speedup(rolls), rel=1e-12)
    assert ref.train_static_speedup == pytest.approx(aggregate_speedup(rolls), rel=1e-12)


def test_files_and_reproducible_rows(files, tmp_path):
    kw = dict(traces=[files["test"]["traces"], files["train"]["traces"]], prompt_sets=["a:test", "b:test"])
    agents = ["autoregressive", "random", "best-static", "oracle"]
    res = run_eval(files, agents, **kw)
    again = run_eval(files, agents, **kw)
    strip = lambda rows: json.dumps([{k: v for k, v in asdict(r).items() if k != "predict_us"}  # noqa: E731
                                     for r in rows])   # (NaN == NaN as text)
    assert strip(res.rows) == strip(again.rows)       # seeded random agent, prompts in order, profiled costs
    assert [(r.agent, r.prompt_set) for r in res.rows] == [(a, s) for s in ("a:test", "b:test") for a in agents]
    written = res.save(tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["actions-a-test.png", "actions-b-test.png", "results.csv", "results.json", "speedup.png"]
    assert set(written) == {"json", "csv", "speedup", "actions-a-test", "actions-b-test"}
    for png in (tmp_path / "out").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(doc["rows"]) == 8 and set(doc["references"]) == {"a:test", "b:test"}
    assert doc["rows"][0]["mean_exit_layer"] is None          # NaN (no speculative step) written as null
    assert doc["rows"][3]["share"] == pytest.approx(1.0) and "share" in doc["meta"]
    with (tmp_path / "out" / "results.csv").open() as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 8 and lines[0]["agent"] == "autoregressive" and float(lines[0]["speedup"]) == 1.0
    assert lines[0]["mean_k"] == "" and "action_counts" not in lines[0]
    assert float(lines[2]["speedup"]) == pytest.approx(res.rows[2].speedup, rel=1e-9)


def test_limit_takes_the_first_prompts(files):
    res = run_eval(files, ["autoregressive"], limit=2)
    row = res.row("autoregressive", "synthetic:test")
    assert row.episodes == 2 and row.tokens == sum(t.length - 1 for t in files["test"]["set"].traces[:2])
    assert run_eval(files, ["autoregressive"], limit=3).rows[0].episodes == 2     # the third has no step
    with pytest.raises(ValueError, match="limit must be an integer >= 1"):
        run_eval(files, ["autoregressive"], limit=0)


def test_saved_agents_get_the_environment_they_were_saved_for(files, tmp_path):
    plain = make_env(files["test"])                                   # no stop rules
    StaticAgent(plain, 4, 2).save(tmp_path / "my-static")
    short = make_env(files["test"], spec_lengths=(0, 1, 2), stop_rules=["none", "p<0.5"])
    RandomAgent(short, seed=3).save(tmp_path / "my-random")
    res = run_eval(files, [str(tmp_path / "my-static"), str(tmp_path / "my-random"), "static-L4-k2"])
    mine, zoo = res.row("my-static", "synthetic:test"), res.row("static-L4-k2", "synthetic:test")
    assert mine.kind == "static" and mine.source == str(tmp_path / "my-static")
    assert mine.speedup == zoo.speedup and mine.mean_return == zoo.mean_return and mine.steps == zoo.steps
    rnd = res.row("my-random", "synthetic:test")
    assert rnd.spec_lengths == (0, 1, 2) and np.asarray(rnd.action_counts).shape == (len(EXITS), 3)
    assert rnd.mean_k <= 2 and 0 < rnd.stop_rule_steps < 1
    # Saved for a subset of the exit layers: an environment with that subset.
    odd = make_env(files["test"], exit_layers=(2, 4))
    StaticAgent(odd, 4, 1).save(tmp_path / "odd")
    row = run_eval(files, [str(tmp_path / "odd")]).row("odd", "synthetic:test")
    assert row.exit_layers == (2, 4) and row.mean_exit_layer == 4
    # Saved for exit layers these traces do not have: the environment's error, naming them.
    config = tmp_path / "odd" / "config.json"
    saved = json.loads(config.read_text())
    saved["env"]["exit_layers"] = [2, 5]
    config.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"exit_layers \[5\] were not recorded"):
        run_eval(files, [str(tmp_path / "odd")])


def test_bad_agent_names_are_clear(files, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="Unknown agent 'nope'") as err:
        resolve_agents("autoregressive,nope")
    assert err.value.argument == "agents"
    for name in ZOO:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="static-L<L>-k<k>, e.g. static-L24-k3"):
        resolve_agents(["static"])
    with pytest.raises(ValueError, match="given twice"):
        resolve_agents("oracle,oracle")
    with pytest.raises(ValueError, match="No agents given"):
        resolve_agents(" , ")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no saved agent: it has no config.json"):
        resolve_agents([str(tmp_path / "empty")])
    with pytest.raises(FileNotFoundError, match="no such folder"):
        resolve_agents([str(tmp_path / "missing")])
    monkeypatch.delitem(KINDS, "autoregressive")       # a zoo name whose kind is not registered (yet)
    with pytest.raises(ValueError, match="'autoregressive' of the zoo is not implemented yet"):
        resolve_agents("all")
    with pytest.raises(ValueError, match="Unknown agent 'nope'"):
        run_eval(files, ["nope"])


def test_prompt_sets_and_trace_files(files, tmp_path):
    with pytest.raises(ValueError, match="1 trace files for 2 prompt sets") as err:
        resolve_prompt_sets("a:test,b:test", files["test"]["traces"])
    assert err.value.argument == "traces"
    with pytest.raises(FileNotFoundError, match="No trace file at") as err:
        resolve_prompt_sets("a:test", str(tmp_path / "none.npz"))
    assert err.value.argument == "traces"
    with pytest.raises(FileNotFoundError, match="No training trace file") as err:
        resolve_prompt_sets("a:test", files["test"]["traces"], str(tmp_path / "none.npz"))
    assert err.value.argument == "train_traces"
    with pytest.raises(ValueError, match="per split") as err:
        resolve_prompt_sets("mixed")
    assert err.value.argument == "prompts"
    # Without training traces the fitted agents refuse, saying why; the others run.
    (only,) = resolve_prompt_sets("my.jsonl", files["test"]["traces"])
    assert only.train_traces is None and "no shipped split" in only.train_note
    with pytest.raises(ValueError, match="Cannot build agent 'best-static' for my.jsonl: .*--train-traces"):
        run_eval(files, ["best-static"], prompt_sets=["my.jsonl"], train_traces=None)
    assert run_eval(files, ["oracle"], prompt_sets=["my.jsonl"], train_traces=None).rows[0].share == \
        pytest.approx(1.0, abs=1e-12)


def flat(res) -> str:
    return " ".join(res.output.replace("│", " ").split())


def test_lede_evaluate_on_the_shipped_traces(tmp_path):
    """End to end on the shipped mixed:test traces (the first 3 prompts), best static fitted on the shipped
    mixed:train traces (the command's default)."""
    train = shipped_traces("mixed:train")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["evaluate", "--agents", "autoregressive,best-static,oracle", "--prompts",
                                   "mixed:test", "--limit", "3", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    text = flat(res)
    assert "mixed:test: 3 prompts" in text and "share of oracle gain" in text
    assert "autoregressive 0.00 1.000x 0.000 1.00 0%" in text
    doc = json.loads((out / "results.json").read_text())
    rows = {r["agent"]: r for r in doc["rows"]}
    assert rows["autoregressive"]["speedup"] == 1.0 and rows["oracle"]["share"] == pytest.approx(1.0)
    assert rows["oracle"]["speedup"] >= rows["best-static"]["speedup"] and rows["oracle"]["episodes"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["actions-mixed-test.png", "results.csv", "results.json",
                                                     "speedup.png"]
    # Usage errors before any work: exit 2, the option named.
    bad = CliRunner().invoke(app, ["evaluate", "--agents", "autoregressive,nope", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--agents" in bad.output and "Unknown agent 'nope'" in flat(bad)
    bad = CliRunner().invoke(app, ["evaluate", "--agents", "oracle", "--prompts", "mixed:test,humaneval:test",
                                   "--traces", str(SHIPPED_TEST), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--traces" in bad.output
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    bad = CliRunner().invoke(app, ["evaluate", "--agents", "oracle", "--out", str(a_file)])
    assert bad.exit_code == 2 and "--out" in bad.output
    assert not (tmp_path / "x").exists()
    assert Path(doc["references"]["mixed:test"]["traces"]) == SHIPPED_TEST
    assert Path(doc["references"]["mixed:test"]["train_traces"]) == train


def test_gapped_lengths_references_and_oracle_share(files):
    """With lengths that are not 0..kmax the fitted best static's reference uses its *length* (not its index), and
    the oracle's reference covers the stop rules the agents may use (a stop rule can draft a length no fixed k
    offers): the oracle agent's share stays exactly 1."""
    for spec in ((0, 2, 4), (0, 4)):
        res = evaluate(["best-static", "oracle", "svip"], ["synthetic:test"], traces=[files["test"]["traces"]],
                       train_traces=files["train"]["traces"], progress=False,
                       env_kwargs={"profile": files["test"]["profile"], "spec_lengths": spec})
        ref = res.references["synthetic:test"]
        static, oracle = res.row("best-static", "synthetic:test"), res.row("oracle", "synthetic:test")
        assert ref.train_static_speedup == pytest.approx(static.speedup, rel=1e-12)
        assert oracle.share == pytest.approx(1.0, abs=1e-12) and oracle.speedup == pytest.approx(ref.oracle_speedup)
        assert res.row("svip", "synthetic:test").share <= 1.0 + 1e-12
