"""`lede_env.distributed` and `lede trace --ray`: on a local two-worker Ray cluster with the tiny model, the trace file
equals the single-process one byte for byte, and a worker killed mid-task is restarted and its prompt recorded once."""

import functools
import json
import os
import signal

import minari
import numpy as np
import pytest

ray = pytest.importorskip("ray")

from lede_env.distributed import PromptPool, init_ray  # noqa: E402
from lede_env.record import _TraceWorker, prepare_recording, record_traces_for  # noqa: E402
from lede_env.traces import TraceSet  # noqa: E402

TEXTS = [f"prompt number {i} says {'abc ' * (i + 1)}" for i in range(6)]
KW = dict(model="tiny-random", max_new_tokens=48, heads="identity", exit_layers=(1, 3, 5), probe_layers=(2, 4),
          chat_template=False)


def test_a_pool_that_started_ray_shuts_it_down():
    """First in the module, before the shared cluster: a pool that starts Ray leaves no cluster behind."""
    assert not ray.is_initialized()
    pool = PromptPool(functools.partial(dict, a=1), workers=1, threads=None)
    assert ray.is_initialized() and pool.call_one("get", "a") == 1
    pool.close()
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def cluster():
    init_ray("local", num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in TEXTS))
    return str(path)


def test_trace_over_ray_equals_the_single_process_file_byte_for_byte(cluster, tmp_path, prompts):
    _, single = record_traces_for(prompts=prompts, out=tmp_path / "single.npz", progress=False, **KW)
    rec = prepare_recording(prompts=prompts, out=tmp_path / "ray.npz", **KW)
    ts, path = rec.run(progress=False, ray="local", workers=2)
    assert path.read_bytes() == single.read_bytes()
    assert len(ts) == len(TEXTS) and not (tmp_path / "ray.npz.partial").exists()


def test_a_killed_worker_is_retried_and_no_prompt_is_lost_or_duplicated(cluster, tmp_path, prompts):
    reference = TraceSet.load(record_traces_for(prompts=prompts, out=tmp_path / "ref.npz", progress=False, **KW)[1])
    rec = prepare_recording(prompts=prompts, out=tmp_path / "unused.npz", **KW)
    factory = functools.partial(_TraceWorker, rec.args, rec.exit_layers, rec.probe_layers, TEXTS)
    pool = PromptPool(factory, workers=2)
    before = pool.pids()
    seen, killed = [], []

    def on_submit(i, worker):
        if i == 2:                           # handed to a worker, not finished: kill it before it can answer
            os.kill(before[worker], signal.SIGKILL)
            killed.append(worker)

    try:
        results = pool.map("record", range(len(TEXTS)), lambda i, tr: seen.append(i), on_submit)
        after = pool.pids()
    finally:
        pool.close()
    w = killed[0]
    assert sorted(seen) == list(range(len(TEXTS))) and len(seen) == len(set(seen))   # none lost, none twice
    assert after[w] != before[w] and after[1 - w] == before[1 - w]                  # the killed one restarted
    for i, tr in results.items():
        ref = reference.traces[i]
        assert tr.prompt_index == i and np.array_equal(tr.tokens, ref.tokens)
        for name, arr in ref.arrays().items():
            assert np.array_equal(tr.arrays()[name], arr, equal_nan=True), (i, name)


def test_pool_refuses_no_workers(cluster):
    with pytest.raises(ValueError, match="workers must be >= 1"):
        PromptPool(lambda: None, workers=0)


def test_lede_trace_takes_a_bare_ray_flag(cluster, tmp_path, prompts):
    from typer.testing import CliRunner

    from lede_env.cli import app

    args = ["trace", "--model", "tiny-random", "--no-chat-template", "--heads", "identity", "--prompts", prompts,
            "--max-new-tokens", "12", "--exit-layers", "1,3,5", "--probe-layers", "2,4", "--threads", "1"]
    one = CliRunner().invoke(app, args + ["--out", str(tmp_path / "one.npz")])
    many = CliRunner().invoke(app, args + ["--out", str(tmp_path / "ray.npz"), "--ray", "--workers", "2"])
    assert one.exit_code == 0 and many.exit_code == 0, many.output
    assert (tmp_path / "ray.npz").read_bytes() == (tmp_path / "one.npz").read_bytes()


def test_evaluate_over_ray_gives_the_single_process_rows(cluster):
    from dataclasses import asdict

    from agents.evaluation import evaluate

    names = ["random", "ucb", "best-static", "specdec++", "lede", "oracle"]      # stateful ones included
    one = evaluate(names, ["mixed:test", "humaneval:test"], limit=5, progress=False)
    many = evaluate(names, ["mixed:test", "humaneval:test"], limit=5, progress=False, ray="local", workers=2)
    assert [r.agent for r in many.rows] == [r.agent for r in one.rows]
    for a, b in zip(one.rows, many.rows):
        a, b = asdict(a), asdict(b)
        a.pop("predict_us"), b.pop("predict_us")
        assert a == b


def test_collect_over_ray_writes_the_single_process_data(cluster, tiny_setup, tmp_path, monkeypatch):
    """`lede collect --ray` with an episode-seeded recipe: the dataset holds the same arrays, episode by episode, as
    the single-process collection (the episodes arrive in any order and are written in chunks of 3 here)."""
    from typer.testing import CliRunner

    from lede_env.cli import app
    from lede_env.datasets import collection
    from tests.test_datasets import assert_same_data, dataset_arrays, replay_recipe

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setattr(collection, "_CHUNK_EPISODES", 3)
    behaviour = """
        [behaviour]
        kind = "mixture"
        [[behaviour.components]]
        kind = "random"
        [[behaviour.components]]
        kind = "oracle"
        epsilon = 0.3
        [[behaviour.components]]
        kind = "zoo"
        name = "hf-heuristic"
    """
    datasets = {}
    for version, ray_args in ((0, []), (1, ["--ray", "--workers", "2"])):
        head = f"episodes = 11\nseed = 5\nversion = {version}\nbehaviour_seeding = \"episode\"\n"
        path = replay_recipe(tmp_path / f"r{version}.toml", tiny_setup, head, behaviour)
        result = CliRunner().invoke(app, ["collect", "--recipe", str(path)] + ray_args)
        assert result.exit_code == 0, result.output
        datasets[version] = minari.load_dataset(f"lede/tiny-random-prompts/mixture-v{version}")
    assert datasets[1].total_episodes == 11
    assert_same_data(dataset_arrays(datasets[0]), dataset_arrays(datasets[1]))

    stream = replay_recipe(tmp_path / "stream.toml", tiny_setup, "episodes = 2\n", behaviour)
    result = CliRunner().invoke(app, ["collect", "--recipe", str(stream), "--ray"])
    assert result.exit_code != 0 and "behaviour_seeding" in result.output
    result = CliRunner().invoke(app, ["collect", "--recipe", str(stream), "--workers", "2"])
    assert result.exit_code == 2 and "only applies with --ray" in result.output


TIMED = {"tokens_per_s", "speedup", "spread", "round_range", "aggregate", "per_prompt", "predict_us"}


def test_bench_over_ray_gives_the_single_process_rows_but_the_clock(cluster, tiny_setup):
    """`run_bench` split by prompt over 2 workers: the same methods, and in every row the same outputs (exact against
    plain greedy), passes, exits, lengths, acceptance and modelled costs as one process; only the timings differ."""
    from dataclasses import asdict

    from lede_env.bench import run_bench
    from tests.bench.test_bench import tiny_config

    config = tiny_config(tiny_setup, limit=4, repeats=1)
    one = run_bench(config, progress=False)
    many = run_bench(config, progress=False, ray="local", workers=2, threads=1)
    assert many.meta["ray"] == {"address": "local", "workers": 2, "worker_threads": 1}
    a, b = one.sets[0], many.sets[0]
    assert [r.method for r in b.rows] == [r.method for r in a.rows] and len(a.rows) == 9
    assert a.oracle == b.oracle
    for x, y in zip(a.rows, b.rows):
        assert y.exact == y.prompts == 4, y.method
        assert {k: v for k, v in asdict(x).items() if k not in TIMED} == \
            {k: v for k, v in asdict(y).items() if k not in TIMED}, x.method


def test_pool_errors_come_back_as_themselves(cluster):
    with pytest.raises(ValueError, match="could not start: ValueError: invalid literal"):
        PromptPool(functools.partial(int, "not a number"), workers=1).call_one("bit_length")
    pool = PromptPool(functools.partial(dict, a=1), workers=1, threads=None)
    try:
        with pytest.raises(KeyError):
            pool.map("pop", [5], lambda i, v: None)          # the task's own error, not Ray's wrapper
    finally:
        pool.close()
    with pytest.raises(ValueError, match="has 2 CPUs; 3 workers x 1 CPUs need 3"):
        PromptPool(functools.partial(dict), workers=3)          # would wait forever for a worker that never starts


def test_an_interrupted_recording_resumes_over_ray(cluster, tmp_path, prompts, monkeypatch):
    import lede_env.record as record

    _, single = record_traces_for(prompts=prompts, out=tmp_path / "single.npz", progress=False, **KW)
    real, calls = record.record_trace, []

    def stop_after_two(*a, **k):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(record, "record_trace", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        prepare_recording(prompts=prompts, out=tmp_path / "ray.npz", **KW).run(progress=False)
    assert len(list((tmp_path / "ray.npz.partial").glob("trace-*.npz"))) == 2
    monkeypatch.setattr(record, "record_trace", real)
    rec = prepare_recording(prompts=prompts, out=tmp_path / "ray.npz", **KW)
    assert sorted(rec.done) == [0, 1]
    asked, original = [], PromptPool.map

    def spy(self, method, items, *a, **k):
        items = list(items)
        asked.extend(items)
        return original(self, method, items, *a, **k)

    monkeypatch.setattr(PromptPool, "map", spy)
    rec.run(progress=False, ray="local", workers=2)
    assert asked == [2, 3, 4, 5]                                  # only the prompts not finished before
    assert (tmp_path / "ray.npz").read_bytes() == single.read_bytes()
