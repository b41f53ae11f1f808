"""Trace files (`lede_env.traces.TraceSet.save` / `load`): a round trip, and a clear "not a LEDE trace file" error
for every kind of damaged, foreign or empty file (never numpy's or zipfile's own errors, never an unpickling)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lede_env.traces import Trace, TraceFileError, TraceSet


def _trace(index: int, T: int = 12, J: int = 3, P: int = 2) -> Trace:
    rng = np.random.default_rng(index)
    tokens = rng.integers(3, 50, T).astype(np.int64)
    return Trace(prompt_index=index, prompt_ids=np.arange(5, dtype=np.int64), tokens=tokens, exit_layers=(1, 2, 3),
                 probe_layers=(2, 4), draft_tokens=rng.integers(3, 50, (T - 1, J)).astype(np.int64),
                 draft_maxprob=rng.random((T - 1, J)).astype(np.float32),
                 full_maxprob=rng.random(T - 1).astype(np.float32), full_entropy=rng.random(T - 1).astype(np.float32),
                 probe_cos=rng.random((T - 1, P)).astype(np.float32), eos=False, max_new_tokens=T, max_context=256)


META = {"model": "tiny-random", "dtype": "float32", "exit_heads": "identity", "exit_layers": [1, 2, 3],
        "probe_layers": [2, 4], "max_new_tokens": 12, "vocab_size": 64, "num_layers": 6, "prompts": "x"}


@pytest.fixture
def good(tmp_path) -> Path:
    return TraceSet(traces=(_trace(0), _trace(1)), meta=META).save(tmp_path / "good.npz")


def test_round_trip(good):
    ts = TraceSet.load(good)
    assert len(ts) == 2 and ts.meta["model"] == "tiny-random"
    np.testing.assert_array_equal(ts.traces[1].draft_tokens, _trace(1).draft_tokens)
    assert [p.name for p in good.parent.iterdir()] == ["good.npz"]     # no temporary file left


def _write_cases(d: Path, good: Path) -> dict[str, Path]:
    raw = good.read_bytes()
    cases = {}

    def case(name, writer):
        p = d / f"{name}.npz"
        writer(p)
        cases[name] = p

    case("truncated", lambda p: p.write_bytes(raw[: len(raw) // 2]))
    case("zero-bytes", lambda p: p.write_bytes(b""))
    case("text", lambda p: p.write_text("hello, not a trace\n"))
    case("no-meta", lambda p: np.savez(p, a=np.arange(3)))
    case("bad-json", lambda p: np.savez(p, __meta__=np.frombuffer(b"{not json", np.uint8)))
    case("pickled-meta", lambda p: np.savez(p, __meta__=np.array([{"a": 1}], dtype=object)))
    case("meta-not-object", lambda p: np.savez(p, __meta__=np.frombuffer(b"[1, 2]", np.uint8)))
    with np.load(good) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays["__meta__"]).decode())
    case("missing-array", lambda p: np.savez(p, **{k: v for k, v in arrays.items() if k != "1/tokens"}))
    case("pickled-array", lambda p: np.savez(p, **dict(arrays, **{"0/tokens": np.array([None, 1], dtype=object)})))
    case("wrong-shape", lambda p: np.savez(p, **dict(arrays, **{"0/full_maxprob": np.zeros(3, np.float32)})))
    no_headers = {k: v for k, v in meta.items() if k != "headers"}
    case("no-headers", lambda p: np.savez(p, __meta__=np.frombuffer(json.dumps(no_headers).encode(), np.uint8)))
    damaged = bytearray(raw)
    damaged[len(raw) // 3: len(raw) // 3 + 64] = b"\0" * 64
    case("damaged-bytes", lambda p: p.write_bytes(bytes(damaged)))
    return cases


def test_corrupt_files_say_they_are_not_trace_files(tmp_path, good):
    for name, path in _write_cases(tmp_path, good).items():
        with pytest.raises(TraceFileError) as err:
            TraceSet.load(path)
        msg = str(err.value)
        assert msg.startswith(f"{path} is not a LEDE trace file (") and "re-record it with `lede trace`" in msg, \
            (name, msg)
        assert "allow_pickle" not in msg, (name, msg)
        assert isinstance(err.value, ValueError)


def test_npy_file_folder_missing_and_empty(tmp_path, good):
    np.save(tmp_path / "a.npy", np.arange(3))
    with pytest.raises(TraceFileError, match="not a LEDE trace file .a single numpy array"):
        TraceSet.load(tmp_path / "a.npy")
    with pytest.raises(ValueError, match="is a folder"):
        TraceSet.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="lede trace --out"):
        TraceSet.load(tmp_path / "nope.npz")
    with np.load(good) as z:
        meta = json.loads(bytes(z["__meta__"]).decode())
    meta["headers"] = []
    np.savez(tmp_path / "empty.npz", __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    with pytest.raises(TraceFileError, match="holds no traces"):
        TraceSet.load(tmp_path / "empty.npz")


def test_save_refuses_an_empty_set_and_names_the_users_path(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        TraceSet(traces=(), meta=META).save(tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")     # its folder cannot be made
    with pytest.raises(OSError) as err:
        TraceSet(traces=(_trace(0),), meta=META).save(dangling / "x.npz")
    assert str(dangling / "x.npz") in str(err.value) and "partial" not in str(err.value) \
        and ".tmp" not in str(err.value)


def test_save_under_a_regular_file_names_the_users_path(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("a regular file, not a folder")
    with pytest.raises(OSError) as err:
        TraceSet(traces=(_trace(0),), meta=META).save(a_file / "x.npz")
    assert str(a_file / "x.npz") in str(err.value) and ".tmp" not in str(err.value)
