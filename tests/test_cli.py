"""The `lede` command line on bad input and interruptions (issue 12): arguments are checked before the model
loads (exit code 2, the option named), expected failures print their message alone (exit code 1), Ctrl-C exits
with 130, `lede trace` refuses to overwrite, keeps finished prompts and resumes, `lede oracle` refuses lam <= 0."""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import lede_env.models
from lede_env import record
from lede_env.cli import app
from lede_env.traces import TraceSet
from tests.test_prompts import _ids_in

REPO = Path(__file__).resolve().parent.parent

TEXTS = ("hello world", "the quick brown fox", "abc def ghi")
TINY = ["--model", "tiny-random", "--no-chat-template", "--heads", "identity", "--max-new-tokens", "12",
        "--exit-layers", "1,3,5", "--probe-layers", "2,4", "--threads", "1"]


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in TEXTS))
    return str(path)


@pytest.fixture
def no_model(monkeypatch):
    """Loading the model is an error: the checks must come first."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(lede_env.models, "load_model", refuse)


def run(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def _train_only(tmp_path) -> str:
    path = tmp_path / "train_only.jsonl"
    path.write_text("".join(json.dumps({"prompt": "x " + i, "id": i}) + "\n" for i in _ids_in("train", 2)))
    return str(path)


def flat(res) -> str:
    return " ".join(res.output.replace("│", " ").split())


def test_trace_checks_arguments_before_loading_the_model(tmp_path, prompts, no_model):
    existing = tmp_path / "existing.npz"
    existing.write_bytes(b"x")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    base = ["trace", "--prompts", prompts, *TINY]
    cases = [
        (["--out", tmp_path / "a.npz", "--limit", "0"], "--limit"),
        (["--out", tmp_path / "a.npz", "--prompts", _train_only(tmp_path) + ":test"], "is empty"),
        (["--out", a_file / "a.npz"], f"Cannot write {a_file / 'a.npz'}: {a_file} is a file"),
        (["--out", tmp_path / "new" / "deeper" / "a.npz", "--heads", tmp_path / "no-heads"], "No exit heads"),
        (["--out", existing], "already exists: pass --overwrite"),
        (["--out", tmp_path / "a.txt"], "must end with .npz"),
        (["--out", tmp_path], "must end with .npz"),
        (["--out", tmp_path / "a.npz", "--exit-layers", "1,x"], "--exit-layers"),
        (["--out", tmp_path / "a.npz", "--heads", tmp_path / "no-heads"], "No exit heads"),
        (["--out", tmp_path / "a.npz", "--model", tmp_path / "no-model"], "neither a known name"),
        (["--out", tmp_path / "a.npz", "--dtype", "float8"], "dtype"),
        (["--out", tmp_path / "a.npz", "--prompts", "nosuchset"], "unknown prompt set"),
        (["--out", tmp_path / "a.npz", "--device", "meta"], "not supported"),
    ]
    for extra, needle in cases:
        res = run(*base, *extra)
        assert res.exit_code == 2, (extra, res.output)
        assert needle in flat(res), (extra, flat(res))
        assert "Traceback" not in res.output
    assert existing.read_bytes() == b"x" and not (tmp_path / "a.npz").exists()
    assert not (tmp_path / "new").exists()       # a failed check creates no folder


def test_trace_refuses_overwrite_keeps_finished_prompts_and_resumes(tmp_path, prompts, monkeypatch):
    out = tmp_path / "traces.npz"
    args = ["trace", "--prompts", prompts, "--out", out, *TINY]
    fresh = run(*args)
    assert fresh.exit_code == 0, fresh.output
    reference = TraceSet.load(out)
    assert len(reference) == 3 and not record.partial_dir(out).exists()
    again = run(*args)
    assert again.exit_code == 2 and "already exists" in again.output
    assert TraceSet.load(out).traces[0].tokens.tolist() == reference.traces[0].tokens.tolist()

    # Ctrl-C during the second prompt: exit 130, the first prompt kept, nothing at --out.
    out2 = tmp_path / "resumed.npz"
    real, calls = record.record_trace, []

    def interrupted(*a, **k):
        calls.append(a[2])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(record, "record_trace", interrupted)
    stopped = run("trace", "--prompts", prompts, "--out", out2, *TINY)
    assert stopped.exit_code == 130, stopped.output
    assert "run the same command again to resume" in stopped.output and "Traceback" not in stopped.output
    assert not out2.exists() and sorted(p.name for p in record.partial_dir(out2).glob("trace-*.npz")) == \
        ["trace-00000.npz"]
    # Other arguments: refused, with the way to start over.
    other = run("trace", "--prompts", prompts, "--out", out2, *TINY[:-2], "--threads", "1", "--max-new-tokens", "10")
    assert other.exit_code == 1 and "other arguments" in other.output and "rm -r" in other.output
    # The same command resumes: only the two missing prompts are recorded, and the file equals a fresh one.
    calls.clear()
    monkeypatch.setattr(record, "record_trace", lambda *a, **k: (calls.append(a[2]), real(*a, **k))[1])
    resumed = run("trace", "--prompts", prompts, "--out", out2, *TINY)
    assert resumed.exit_code == 0, resumed.output
    assert calls == [1, 2] and "Resuming" in resumed.output and not record.partial_dir(out2).exists()
    got = TraceSet.load(out2)
    for a, b in zip(got.traces, reference.traces):
        for name, arr in a.arrays().items():
            np.testing.assert_array_equal(arr, b.arrays()[name])
    assert got.meta == reference.meta
    assert run(*args, "--overwrite").exit_code == 0


def test_oracle_checks_lam_and_files(tmp_path, tiny_setup):
    traces, profile = tiny_setup["traces"], tiny_setup["profile"]
    for lam in ("0", "-1", "nan"):
        res = run("oracle", "--traces", traces, "--profile", profile, "--lam", lam)
        assert res.exit_code == 2 and "lam must be" in res.output, res.output
    res = run("oracle", "--traces", tmp_path / "nope.npz", "--profile", profile)
    assert res.exit_code == 2 and "no trace file" in res.output
    res = run("oracle", "--traces", traces, "--profile", profile, "--spec-lengths", "0,1,x")
    assert res.exit_code == 2 and "--spec-lengths" in res.output
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    res = run("oracle", "--traces", bad, "--profile", profile)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip() == f"Error: {bad} is not a LEDE trace file (not a readable .npz archive, truncated " \
        "or damaged: BadZipFile: File is not a zip file): re-record it with `lede trace`."
    returns = {}
    for lam in ("1", "0.5"):
        res = run("oracle", "--traces", traces, "--profile", profile, "--lam", lam, "--spec-lengths", "0,1,2,3")
        assert res.exit_code == 0, res.output
        m = re.search(r"^oracle speedup (\d+\.\d+)x; best static L=\d+, k=\d+: (\d+\.\d+)x", res.output, re.M)
        assert m, res.output
        assert float(m.group(1)) >= float(m.group(2))
        m = re.search(rf"^oracle return at lam={lam}: (-?\d+\.\d+) ", res.output, re.M)
        assert m, res.output
        returns[lam] = float(m.group(1))
    ts = TraceSet.load(traces)
    tokens = sum(t.length - 1 for t in ts.traces)
    # r = tokens - lam * cost / c_ar: the same actions for both, so tokens - R(0.5) = (tokens - R(1)) / 2
    assert tokens - returns["0.5"] == pytest.approx((tokens - returns["1"]) / 2, abs=0.02)


def test_lede_debug_shows_the_traceback(tmp_path, tiny_setup):
    bad = tmp_path / "bad.npz"
    bad.write_text("not a trace")
    res = run("oracle", "--traces", bad, "--profile", tiny_setup["profile"], env={"LEDE_DEBUG": "1"})
    assert res.exit_code == 1 and isinstance(res.exception, ValueError)


def test_collect_checks_the_recipe_first(tmp_path, no_model):
    bad = tmp_path / "r.toml"
    bad.write_text('episodes = 0\n[env]\nmodel = "tiny-random"\n[behaviour]\nkind = "random"\n')
    res = run("collect", "--recipe", bad)
    assert res.exit_code == 2 and "episodes must be >= 1" in " ".join(res.output.replace("│", " ").split())
    res = run("collect", "--recipe", tmp_path / "none.toml")
    assert res.exit_code == 2 and "No recipe" in res.output
    live_oracle = tmp_path / "o.toml"
    live_oracle.write_text('episodes = 1\n[env]\nmodel = "tiny-random"\nprompts = "mixed:test"\n'
                           '[behaviour]\nkind = "oracle"\nepsilon = 0.1\n')
    res = run("collect", "--recipe", live_oracle)
    assert res.exit_code == 1 and "needs the replay backend" in res.output and "Traceback" not in res.output


# ------------------------------------------------------------------------------------------ lede trace: review fixes
def _interrupt_at(monkeypatch, n: int) -> list:
    """`record.record_trace` raising KeyboardInterrupt at its ``n``-th call (1-based); returns the call log."""
    real, calls = record.record_trace, []

    def fake(*a, **k):
        calls.append(a[2])
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(record, "record_trace", fake)
    return calls


def test_a_failed_first_run_does_not_block_the_corrected_command(tmp_path, prompts, monkeypatch):
    out = tmp_path / "sub" / "t.npz"
    base = ["trace", "--prompts", prompts, "--out", out, *TINY]
    # An exit layer out of range is found once the model is loaded: nothing is created, not even --out's folder.
    bad = run(*base, "--exit-layers", "1,3,7")
    assert bad.exit_code == 1 and "out of range" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "sub").exists()
    # Ctrl-C while the model loads: nothing left either.
    real = lede_env.models.load_model

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(lede_env.models, "load_model", interrupted)
    assert run(*base, "--max-new-tokens", "10").exit_code == 130
    monkeypatch.setattr(lede_env.models, "load_model", real)
    assert not (tmp_path / "sub").exists()
    # A partial folder left with a recording.json of other arguments but no finished prompt is a fresh start.
    folder = record.partial_dir(out)
    folder.mkdir(parents=True)
    (folder / "recording.json").write_text(json.dumps({"arguments": {"max_new_tokens": 99}}))
    ok = run(*base)
    assert ok.exit_code == 0, ok.output
    assert len(TraceSet.load(out)) == 3 and not folder.exists()


def _identity_heads(path: Path) -> Path:
    from lede_env.engine.heads import identity_heads

    identity_heads().save(path)
    return path


def test_resume_refuses_other_heads_files_or_lede_version(tmp_path, prompts, monkeypatch):
    heads = _identity_heads(tmp_path / "heads")
    out = tmp_path / "t.npz"
    args = ["trace", "--prompts", prompts, "--out", out, *[a if a != "identity" else str(heads) for a in TINY]]
    _interrupt_at(monkeypatch, 2)
    assert run(*args).exit_code == 130
    saved = json.loads((record.partial_dir(out) / "recording.json").read_text())
    fp = saved["fingerprint"]
    assert fp["heads_label"] == "identity" and len(fp["heads_sha256"]) == 64 and fp["model"] == {"name": "tiny-random"}
    assert fp["lede_version"] == lede_env.__version__

    # The heads refit in place (same path, same arguments): refused once the model is loaded, with the way out.
    meta = heads / "heads.json"
    original = meta.read_text()
    meta.write_text(original.replace("{", '{"refit": 1, ', 1))
    refused = run(*args)
    assert refused.exit_code == 1 and "other exit heads" in flat(refused) and "heads_sha256" in flat(refused)
    assert f"rm -r {record.partial_dir(out)}" in flat(refused)
    meta.write_text(original)
    # Another lede_env version: refused too.
    monkeypatch.setattr(record, "_lede_version", lambda: "0.0.0-other")
    refused = run(*args)
    assert refused.exit_code == 1 and "lede_version" in flat(refused) and "rm -r" in flat(refused)
    monkeypatch.undo()
    calls = []
    real = record.record_trace
    monkeypatch.setattr(record, "record_trace", lambda *a, **k: (calls.append(a[2]), real(*a, **k))[1])
    resumed = run(*args)
    assert resumed.exit_code == 0, resumed.output
    assert calls == [1, 2]


def test_model_fingerprint_of_a_local_directory(tmp_path):
    from lede_env.paths import model_fingerprint

    d = tmp_path / "llama"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama"}')
    (d / "model.safetensors").write_bytes(b"w" * 10)
    (d / "README.md").write_text("not weights")
    first = model_fingerprint(d)
    assert set(first["weights"]) == {"model.safetensors"} and first == model_fingerprint(str(d))
    (d / "model.safetensors").write_bytes(b"w" * 11)
    assert model_fingerprint(d) != first
    second = model_fingerprint(d)
    (d / "config.json").write_text('{"model_type": "llama", "x": 1}')
    assert model_fingerprint(d) != second
    assert model_fingerprint("tiny-random") == {"name": "tiny-random"}


def test_record_traces_for_takes_path_objects(tmp_path, prompts):
    heads = _identity_heads(tmp_path / "heads")
    ts, path = record.record_traces_for(model="tiny-random", prompts=Path(prompts), out=tmp_path / "p.npz", limit=1,
                                        max_new_tokens=6, heads=heads, exit_layers=(1, 3), probe_layers=(2,),
                                        chat_template=False, progress=False)
    assert path == tmp_path / "p.npz" and len(TraceSet.load(path)) == 1
    assert ts.meta["exit_heads_spec"] == str(heads) and ts.meta["prompts"] == prompts


def test_check_arguments_directly(tmp_path, prompts):
    """`record._check_arguments` itself (the CLI's --limit 0 only reaches typer's min=1)."""
    ok = dict(prompts=prompts, limit=None, max_new_tokens=12, heads="identity", exit_layers=None, probe_layers=None,
              max_context=None)
    plist, exits, probes = record._check_arguments(**dict(ok, limit=2, exit_layers="1,3", probe_layers=[2]))
    assert len(plist) == 2 and exits == (1, 3) and probes == (2,)
    bad = [(dict(limit=0), "limit", "limit must be an integer >= 1"), (dict(limit=-1), "limit", "limit"),
           (dict(limit=True), "limit", "limit"), (dict(limit=1.5), "limit", "limit"),
           (dict(max_new_tokens=1), "max_new_tokens", ">= 2"), (dict(max_context=1), "max_context", ">= 2"),
           (dict(prompts=_train_only(tmp_path) + ":test"), "prompts", "is empty"),
           (dict(exit_layers=[]), "exit_layers", "distinct layer numbers >= 1"),
           (dict(exit_layers=[0, 2]), "exit_layers", "distinct layer numbers >= 1"),
           (dict(exit_layers=[2, 2]), "exit_layers", "distinct layer numbers >= 1"),
           (dict(exit_layers="1,x"), "exit_layers", "comma-separated layer numbers"),
           (dict(exit_layers=[1.5]), "exit_layers", "comma-separated layer numbers"),
           (dict(probe_layers=3), "probe_layers", "comma-separated layer numbers"),
           (dict(heads=str(tmp_path / "none")), "heads", "No exit heads")]
    for change, argument, needle in bad:
        with pytest.raises((ValueError, OSError)) as err:
            record._check_arguments(**dict(ok, **change))
        assert needle in str(err.value) and err.value.argument == argument, (change, err.value)


def test_trace_checks_each_thing_once(tmp_path, prompts, monkeypatch):
    import lede_env.prompts

    counts = {"load_prompts": 0, "check_trace_output": 0}
    for module, name in ((lede_env.prompts, "load_prompts"), (record, "check_trace_output")):
        real = getattr(module, name)

        def counted(*a, _real=real, _name=name, **k):
            counts[_name] += 1
            return _real(*a, **k)

        monkeypatch.setattr(module, name, counted)
    res = run("trace", "--prompts", prompts, "--out", tmp_path / "t.npz", *TINY, "--limit", "1")
    assert res.exit_code == 0, res.output
    assert counts == {"load_prompts": 1, "check_trace_output": 1}


def test_a_file_appearing_while_recording_is_not_replaced(tmp_path, prompts, monkeypatch):
    out = tmp_path / "t.npz"
    real = record.record_trace

    def and_someone_writes(*a, **k):
        if a[2] == 2:
            out.write_bytes(b"theirs")
        return real(*a, **k)

    monkeypatch.setattr(record, "record_trace", and_someone_writes)
    res = run("trace", "--prompts", prompts, "--out", out, *TINY)
    assert res.exit_code == 1 and "appeared while recording" in res.output and "Traceback" not in res.output
    assert out.read_bytes() == b"theirs"
    folder = record.partial_dir(out)
    assert sorted(p.name for p in folder.iterdir()) == ["recording.json"] + [f"trace-0000{i}.npz" for i in range(3)]
    monkeypatch.setattr(record, "record_trace", real)
    res = run("trace", "--prompts", prompts, "--out", out, *TINY, "--overwrite")
    assert res.exit_code == 0 and "Resuming" in res.output and len(TraceSet.load(out)) == 3


def test_damaged_partial_traces_are_recorded_again_unreadable_ones_kept(tmp_path, prompts, monkeypatch):
    out = tmp_path / "t.npz"
    args = ["trace", "--prompts", prompts, "--out", out, *TINY]
    _interrupt_at(monkeypatch, 3)
    assert run(*args).exit_code == 130
    folder = record.partial_dir(out)
    (folder / "trace-00000.npz").write_bytes(b"PK\x03\x04 damaged")
    # A file that cannot be read (an OSError, not a damaged file): kept, and the error shown alone.
    real_load = TraceSet.load

    def unreadable(path):
        if Path(path).name == "trace-00001.npz":
            raise PermissionError(errno.EACCES, f"Permission denied: {path}")
        return real_load(path)

    monkeypatch.setattr(record.TraceSet, "load", staticmethod(unreadable))
    res = run(*args)
    assert res.exit_code == 1 and "Permission denied" in res.output and "Traceback" not in res.output
    assert (folder / "trace-00001.npz").is_file()
    monkeypatch.setattr(record.TraceSet, "load", real_load)
    calls = []
    real = record.record_trace
    monkeypatch.setattr(record, "record_trace", lambda *a, **k: (calls.append(a[2]), real(*a, **k))[1])
    assert run(*args).exit_code == 0
    assert calls == [0, 2]


def test_any_oserror_is_an_expected_error(tmp_path, prompts, monkeypatch):
    def full(self, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(record.TraceSet, "save", full)
    res = run("trace", "--prompts", prompts, "--out", tmp_path / "t.npz", *TINY)
    assert res.exit_code == 1 and "No space left on device" in res.output and "Traceback" not in res.output


def test_final_write_errors_name_the_users_path(tmp_path, prompts, monkeypatch):
    real = TraceSet.save

    def fails_for_the_final_file(self, path):
        if not Path(path).name.startswith("trace-"):
            raise OSError(errno.ENOSPC, f"Cannot write the trace file {path}: No space left on device")
        return real(self, path)

    monkeypatch.setattr(record.TraceSet, "save", fails_for_the_final_file)
    out = tmp_path / "t.npz"
    res = run("trace", "--prompts", prompts, "--out", out, *TINY)
    assert res.exit_code == 1 and f"Cannot write the trace file {out}: No space left" in flat(res)
    assert ".complete" not in res.output and ".tmp" not in res.output


def test_oracle_names_missing_trace_metadata(tmp_path, tiny_setup):
    ts = TraceSet.load(tiny_setup["traces"])
    foreign = tmp_path / "foreign.npz"
    TraceSet(traces=ts.traces, meta={k: v for k, v in ts.meta.items() if k not in ("model", "exit_heads")}
             ).save(foreign)
    for extra in ([], ["--profile", tiny_setup["profile"]]):
        res = run("oracle", "--traces", foreign, *extra)
        assert res.exit_code == 1 and "Traceback" not in res.output and "KeyError" not in res.output
        assert f"{foreign} lacks the trace metadata ['model', 'exit_heads']" in flat(res)


def test_argument_checks_import_no_torch(tmp_path):
    code = f"""
import sys
from lede_env.paths import check_model_name, probe_writable
from lede_env.defaults import check_heads_spec
from lede_env.engine.limits import check_layer_range, parse_layers
for f, a in ((check_model_name, "{tmp_path}/none"), (check_heads_spec, "{tmp_path}/none"),
             (parse_layers, "1,x"), (lambda x: check_layer_range(x, 6), (1, 6))):
    try:
        f(a)
        raise SystemExit("no error for " + repr(a))
    except (ValueError, OSError) as e:
        print(type(e).__name__, e)
check_model_name("tiny-random")
probe_writable("{tmp_path}/new/deeper/x.npz")
print("torch" in sys.modules, "transformers" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "False False", out.stdout
    assert lines[0].startswith("FileNotFoundError Model") and lines[1].startswith("FileNotFoundError No exit heads")
    assert "out of range" in lines[3] and not (tmp_path / "new").exists()


def test_bench_checks_arguments_before_loading_the_model(tmp_path, no_model):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    cases = [
        (["--agents", "no-such-agent"], "Unknown agent"),
        (["--agents", "lede,lede"], "given twice"),
        (["--prompts", "nosuchset:test"], "nosuchset"),
        (["--traces", "a.npz"], "1 traces files for 2 prompt sets"),
        (["--repeats", "0"], "--repeats"),
        (["--temperature", "-1"], "--temperature"),
        (["--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--hf-exits", "4,x"], "--hf-exits"),
        (["--model", tmp_path / "no-model"], "neither a known name"),
        (["--out", a_file], "is a file"),
        (["--device", "nonsense"], "Unknown device"),
    ]
    for extra, needle in cases:
        res = run("bench", *extra)
        assert res.exit_code == 2, (extra, res.output)
        assert needle in flat(res), (extra, flat(res))
        assert "Traceback" not in res.output


def test_device_is_checked_before_the_model_loads(no_model):
    """A GPU asked for where torch sees none: a usage error that says what to do (on a GPU machine: the index)."""
    import torch

    from lede_env.models import check_device

    assert check_device("cpu") == "cpu"
    ask = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ValueError, match="no CUDA GPU|CUDA devices exist"):
        check_device(ask)
    for command in (["profile"], ["bench"]):
        res = run(*command, "--device", ask)
        assert res.exit_code == 2 and "--device" in flat(res) and "Traceback" not in res.output, res.output


def test_ray_options_without_ray_are_refused(tmp_path, prompts, no_model):
    res = run("trace", "--prompts", prompts, *TINY, "--out", tmp_path / "a.npz", "--workers", "3")
    assert res.exit_code == 2 and "only applies with --ray" in flat(res), res.output
    res = run("evaluate", "--agents", "random", "--workers", "2")
    assert res.exit_code == 2 and "only applies with --ray" in flat(res), res.output
