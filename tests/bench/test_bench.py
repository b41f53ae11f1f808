"""`lede bench` on the tiny model: the table, JSON, markdown and plots are written, every method's output is exact
against plain greedy, the figures follow their definitions, and bad options are refused."""

import json

import pytest

from lede_env.bench import BenchConfig, run_bench
from lede_env.bench.methods import HFGenerate, PlainGreedy, Run
from lede_env.bench.report import summarise

from tests.conftest import TINY_EXITS, TINY_MAX_NEW_TOKENS, TINY_PROBES, TINY_SPEC


def tiny_env(setup) -> dict:
    return dict(profile=setup["profile"], exit_layers=list(TINY_EXITS), spec_lengths=list(TINY_SPEC),
                probe_layers=list(TINY_PROBES), chat_template=False, exit_heads="identity")


def tiny_config(setup, **kw) -> BenchConfig:
    base = dict(prompts=(setup["prompts"],), agents=("best-static", "static-L3-k2", "draft-verify", "specdec++"),
                limit=3, max_new_tokens=TINY_MAX_NEW_TOKENS, repeats=2, warmup=1, hf_exit=3, hf_length=2,
                model="tiny-random", traces=(setup["traces"],), train_traces=(setup["traces"],), threads=1,
                env=tiny_env(setup))
    base.update(kw)
    return BenchConfig(**base)


@pytest.fixture(scope="module")
def saved_lede(tiny_setup, tmp_path_factory):
    """An (untrained) LEDE agent saved for the tiny environment without stop rules: a saved agent's own lists."""
    import gymnasium as gym

    from agents.lede import LEDEAgent

    env = gym.make("LEDE-v0", backend="replay", traces=tiny_setup["traces"], profile=tiny_setup["profile"],
                   spec_lengths=list(TINY_SPEC))
    folder = tmp_path_factory.mktemp("agents") / "tiny-lede"
    LEDEAgent(env, hidden=(8,)).save(folder)
    return str(folder)


@pytest.fixture(scope="module")
def bench(tiny_setup, saved_lede, tmp_path_factory):
    config = tiny_config(tiny_setup, agents=tiny_config(tiny_setup).agents + (saved_lede,))
    result = run_bench(config, progress=False)
    folder = tmp_path_factory.mktemp("bench")
    return result, result.save(folder), folder


def test_bench_writes_table_json_markdown_and_plots(bench):
    result, written, folder = bench
    for key in ("json", "markdown", "speedup", "tokens_per_step", "clock_vs_profile"):
        assert written[key].is_file() and written[key].stat().st_size > 0, key
    for key in ("speedup", "tokens_per_step", "clock_vs_profile"):
        assert written[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(written["json"].read_text())
    rows = doc["sets"][0]["rows"]
    names = [r["method"] for r in rows]
    assert names[:2] == ["plain greedy (engine)", "model.generate"]
    assert sum(n.startswith("HF early exit L3 ") for n in names) == 3
    assert {"best-static", "static-L3-k2", "draft-verify", "specdec++", "tiny-lede"} <= set(names)
    md = written["markdown"].read_text()
    assert all(f"| {n} |" in md for n in names)
    from rich.console import Console

    console = Console(record=True, width=250)
    for t in result.tables():
        console.print(t)
    text = console.export_text()
    assert "plain greedy (engine)" in text and "tiny-lede" in text and "clock/profile" in text


def test_every_method_is_exact_and_figures_follow_their_definitions(bench):
    result, _, _ = bench
    s = result.sets[0]
    assert len(s.rows) == 2 + 3 + 5
    for r in s.rows:
        assert r.exact == r.prompts == 3, r.method          # identical ids to plain greedy, every prompt and round
        assert r.rounds == 2 and len(r.per_prompt) == 3
        assert r.spread[0] <= r.speedup <= r.spread[1] or r.prompts < 3
    plain, gen = s.row("plain greedy (engine)"), s.row("model.generate")
    assert plain.speedup == 1.0 and plain.tokens_per_pass == pytest.approx(1.0) and plain.modelled == 1.0
    assert gen.tokens_per_pass == pytest.approx(1.0)       # one full pass per token: the hook counts them
    assert plain.mean_exit is None and gen.mean_k is None and plain.predict_us is None
    static = s.row("static-L3-k2")
    assert static.mean_exit == 3.0 and static.mean_k <= 2.0 and static.tokens_per_pass > 1.0
    assert static.predict_us is not None and static.predict_us > 0
    assert static.modelled is not None and static.modelled > 0
    assert 0.0 < static.acceptance <= 1.0 and plain.acceptance is None
    hf = [r for r in s.rows if r.method.startswith("HF early exit")]
    assert all(r.mean_exit == 3.0 for r in hf), [(r.method, r.mean_exit, r.mean_k, r.tokens_per_pass) for r in hf]
    assert s.row("HF early exit L3 constant (n=2)").mean_k == pytest.approx(2.0, abs=0.35)
    assert any(r.tokens_per_pass > 1.0 for r in hf)
    assert s.oracle is not None and len(s.oracle) == 3 and all(x >= 1.0 for x in s.oracle)
    assert result.meta["config"]["repeats"] == 2


def test_summarise_is_median_over_prompts_of_median_over_rounds():
    class M:
        def __init__(self, name, family="engine"):
            self.name, self.family = name, family

    def run(t, seconds, passes=4):
        return Run(tokens=list(range(t)), seconds=seconds, passes=passes, drafted=3 if passes < t else 0)

    plain = [[run(4, 1.0), run(4, 1.0), run(4, 1.0)], [run(4, 2.0), run(4, 2.0), run(4, 2.0)]]
    fast = [[run(4, 0.5, 2), run(4, 0.25, 2), run(4, 1.0, 2)], [run(4, 1.0, 2), run(4, 1.0, 2), run(4, 4.0, 2)]]
    s = summarise("x", [M("plain"), M("fast", "agent")], {"plain": plain, "fast": fast}, None, c_ar=1.0, greedy=True)
    r = s.row("fast")
    assert r.per_prompt == (2.0, 2.0)          # medians of (2, 4, 1) and (2, 2, 0.5)
    assert r.speedup == 2.0
    assert r.round_range == (0.75, 3.0)         # round medians: med(2, 2), med(4, 2), med(1, 0.5)
    assert r.aggregate == pytest.approx((24 / 7.75) / (24 / 9.0))
    assert r.tokens_per_pass == pytest.approx(2.0)
    assert r.exact == 2
    assert r.acceptance == pytest.approx(2 / 3)      # (4 tokens - 2 passes) accepted of 3 drafted, every run
    assert s.row("plain").acceptance is None        # nothing drafted


def test_bad_options_are_refused(tiny_setup):
    with pytest.raises(ValueError, match="repeats must be an integer >= 1"):
        tiny_config(tiny_setup, repeats=0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        tiny_config(tiny_setup, temperature=-1.0)
    with pytest.raises(ValueError, match="env may not set"):
        tiny_config(tiny_setup, env={"backend": "replay"})
    with pytest.raises(ValueError, match="2 traces files for 1 prompt sets"):
        tiny_config(tiny_setup, traces=("a.npz", "b.npz"))
    with pytest.raises(ValueError, match="hf_exit"):
        run_bench(tiny_config(tiny_setup, hf_exit=6), progress=False)
    with pytest.raises(ValueError, match="no training split"):
        run_bench(tiny_config(tiny_setup, hf_exit=None), progress=False)
    with pytest.raises(ValueError, match="Unknown agent"):
        run_bench(tiny_config(tiny_setup, agents=("no-such-agent",)), progress=False)


def test_hf_methods_match_plain_greedy_and_count_passes(tiny):
    model, _ = tiny
    from lede_env.engine.decoder import SelfSpeculativeDecoder

    prompts = [[1, 5, 9, 13], [1, 7, 7, 20, 3]]
    plain = PlainGreedy(SelfSpeculativeDecoder(model, eos_token_id=[2]), prompts, 24, c_ar=1.0)
    for i in range(2):
        ref = plain.run(i)
        assert ref.passes == len(ref.tokens)   # autoregressive: one pass per token, the prefill's included
        for m in (HFGenerate(model, prompts, 24, eos_token_id=2),
                  HFGenerate(model, prompts, 24, early_exit=2, schedule="constant", num_assistant_tokens=3,
                             eos_token_id=2),
                  HFGenerate(model, prompts, 24, early_exit=4, schedule="heuristic", num_assistant_tokens=2,
                             eos_token_id=2),
                  HFGenerate(model, prompts, 24, early_exit=4, schedule="dynamic", eos_token_id=2)):
            out = m.run(i)
            assert out.tokens == ref.tokens, m.name
            assert 1 <= out.passes <= len(out.tokens)
    with pytest.raises(ValueError, match="out of range"):
        HFGenerate(model, prompts, 8, early_exit=6)
    with pytest.raises(ValueError, match="schedule must be one of"):
        HFGenerate(model, prompts, 8, early_exit=2, schedule="fast")
