"""Recording traces with the real model (`lede trace`): the greedy continuation of each prompt and, per
position, every candidate exit layer's prediction and the observation's per-position quantities.

A recording is resumable. `prepare_recording` checks the output path and every argument before the model is loaded
(creating nothing); `Recording.run` loads the model and records prompt by prompt into a folder next to the output,
``<out>.partial/`` (``recording.json``: the recording's arguments and what identifies its model, exit heads and code;
``trace-<index>.npz``: one finished prompt each, written atomically). Stopped part-way (Ctrl-C, a crash, a kill), it
keeps the finished prompts; the same command again resumes from them, only when the arguments match (checked before
the model loads) and the model's files, the exit heads' files and the lede_env version match (checked once the
model is loaded); otherwise it refuses and says how to start over. A partial folder without a finished prompt (a
run that failed while loading the model, say) is no recording: the next run starts afresh in it. When every prompt
is done the trace file is written atomically, refusing (without a race) a file that appeared meanwhile, and the
folder is removed. An existing trace file is replaced only with ``overwrite=True`` (``lede trace --overwrite``):
datasets record the sha256 of the traces they were built from, so replacing one silently would invalidate them.

Errors about one argument carry its name in ``error.argument`` (``"out"``, ``"prompts"``, ``"exit_layers"``, ...):
the command line turns them into usage errors for that option.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lede_env.engine.limits import check_layer_range, parse_layers
from lede_env.paths import check_model_name, model_fingerprint, probe_writable, tag_argument
from lede_env.traces import Trace, TraceFileError, TraceSet

__all__ = ["record_trace", "record_traces_for", "prepare_recording", "Recording", "check_trace_output",
           "partial_dir"]

_RECORDING = "recording.json"
_COMPLETE = ".complete.npz"      # the finished trace file, inside the partial folder until it is linked to ``out``


def record_trace(decoder, prompt_ids: list[int], prompt_index: int, exit_layers: tuple[int, ...],
                 max_new_tokens: int) -> Trace:
    """Decode ``prompt_ids`` greedily, one plain step at a time, reading all exits at every position.
    The decoder's ``probe_layers`` become the trace's probe layers."""
    decoder.start(prompt_ids, max_new_tokens)
    rows = []
    while not decoder.done:
        result, later, first = decoder.step_with_exits(exit_layers)
        first = first or later
        rows.append((later.tokens, later.maxprob, result.full_maxprob[0], result.full_entropy[0], result.probe_cos,
                     later.entropy, first.tokens, first.maxprob, first.entropy))
    tokens = np.array(decoder.generated, dtype=np.int64)
    J, P = len(exit_layers), len(decoder.probe_layers)
    col = lambda i, dt, shape: np.array([r[i] for r in rows], dtype=dt).reshape(shape)  # noqa: E731
    n = len(rows)
    return Trace(prompt_index=prompt_index, prompt_ids=np.array(prompt_ids, dtype=np.int64), tokens=tokens,
                 exit_layers=tuple(exit_layers), probe_layers=tuple(decoder.probe_layers),
                 draft_tokens=col(0, np.int64, (n, J)), draft_maxprob=col(1, np.float32, (n, J)),
                 full_maxprob=col(2, np.float32, (n,)), full_entropy=col(3, np.float32, (n,)),
                 probe_cos=col(4, np.float32, (n, P)), draft_entropy=col(5, np.float32, (n, J)),
                 first_tokens=col(6, np.int64, (n, J)) if decoder.uses_context else None,
                 first_maxprob=col(7, np.float32, (n, J)) if decoder.uses_context else None,
                 first_entropy=col(8, np.float32, (n, J)) if decoder.uses_context else None,
                 eos=bool(tokens[-1] in decoder.eos_ids), max_new_tokens=max_new_tokens,
                 max_context=decoder.max_context)


def partial_dir(out: str | os.PathLike) -> Path:
    """The folder an unfinished recording of ``out`` keeps its finished prompts in: ``<out>.partial``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def check_trace_output(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check that a trace file can be written at ``out`` before any work: a ``.npz`` name, not a folder, nothing in
    the way of its folder, which must be writable (or creatable: it is made only when the recording starts), and no
    file there unless ``overwrite``. Returns the path; errors (``ValueError``, ``FileExistsError``,
    ``PermissionError``) name it. Creates nothing."""
    path = Path(out)
    if path.suffix != ".npz":
        raise ValueError(f"The trace file name must end with .npz, got {os.fspath(out)!r}.")
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give the path of the .npz file to write.")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists: pass --overwrite (overwrite=True) to replace it. Datasets "
                              "built from it record its sha256 and would no longer match it.")
    probe_writable(path)
    return path


def _check_arguments(prompts: str, limit: int | None, max_new_tokens: int, heads: str | None,
                     exit_layers, probe_layers, max_context: int | None):
    """Everything about the arguments that can be checked without the model; returns (prompt list, exit layers,
    probe layers), the layer lists as tuples or ``None`` (the model's defaults). Errors carry ``.argument``."""
    from lede_env.defaults import check_heads_spec
    from lede_env.prompts import load_prompts

    with tag_argument("limit"):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
            raise ValueError(f"limit must be an integer >= 1 (the number of prompts to record), got {limit!r}.")
    with tag_argument("max_new_tokens"):
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or \
                max_new_tokens < 2:
            raise ValueError(f"max_new_tokens must be an integer >= 2, got {max_new_tokens!r}.")
    with tag_argument("max_context"):
        if max_context is not None and (isinstance(max_context, bool) or not isinstance(max_context, (int, np.integer))
                                        or max_context < 2):
            raise ValueError(f"max_context must be an integer >= 2, got {max_context!r}.")
    with tag_argument("heads"):
        check_heads_spec(heads)
    layers = []
    for name, spec in (("exit_layers", exit_layers), ("probe_layers", probe_layers)):
        with tag_argument(name):
            layers.append(None if spec is None else parse_layers(spec, name))
    with tag_argument("prompts"):
        plist = load_prompts(prompts)
    return (plist[:limit] if limit else plist), layers[0], layers[1]


def _refuse(folder: Path, why: str) -> ValueError:
    return ValueError(f"{folder} holds an unfinished recording {why}. Run the same command as before (with the same "
                      f"model, exit heads and lede_env version) to resume it, or delete that folder (rm -r {folder}) "
                      "to start over.")


def _diff(theirs, ours: dict) -> str:
    if not isinstance(theirs, dict):
        return f"no readable {_RECORDING}"
    return ", ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} now" for k in sorted(set(ours) | set(theirs))
                     if theirs.get(k) != ours.get(k))


def _read_partial(folder: Path, args: dict, prompt_ids: list[str]) -> tuple[dict[int, Trace], dict | None]:
    """What an earlier run left in the partial folder: the finished traces to resume, keyed by prompt index (a trace
    is kept when its prompt is still at its index, so a longer or shorter ``limit`` resumes too), and the stored
    fingerprint (`Recording.run` checks it once the model is loaded). Refuses a folder whose finished traces were
    recorded with other arguments; a folder without finished traces is a fresh start. Only a file that is not a
    valid trace file (a crash while writing it) is deleted, to be recorded again."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is in the way of the recording's partial folder: remove it.")
    files = sorted(folder.glob("trace-*.npz")) if folder.is_dir() else []
    if not files:
        return {}, None
    try:
        stored = json.loads((folder / _RECORDING).read_text())
    except (OSError, ValueError):
        stored = None
    theirs = stored.get("arguments") if isinstance(stored, dict) else None
    if theirs != args:
        why = _diff(theirs, args) if isinstance(stored, dict) and "arguments" in stored else \
            f"its {_RECORDING} is {'of an older format' if isinstance(stored, dict) else 'missing or unreadable'}"
        raise _refuse(folder, f"with other arguments ({why})")
    done: dict[int, Trace] = {}
    for f in files:
        try:
            index = int(f.stem.split("-")[1])
        except (IndexError, ValueError):
            continue                         # not a file of ours
        try:
            ts = TraceSet.load(f)
        except TraceFileError:
            f.unlink(missing_ok=True)        # damaged (a crash while writing it): record it again
            continue
        if index < len(prompt_ids) and ts.meta.get("prompt_id") == prompt_ids[index] and len(ts) == 1:
            done[index] = ts.traces[0]
    return done, stored.get("fingerprint")


def _lede_version() -> str:
    # lede_env/__init__.py holds the version; a package's __init__ always runs before its submodules, so it is read
    # there rather than imported (this floor imports nothing from the environment's, see tests/test_layers.py).
    return sys.modules["lede_env"].__version__


def _user_path_error(e: OSError, internal: Path, user: Path) -> OSError:
    """``e`` with its message naming ``user`` instead of the internal path ``internal``."""
    text = str(e.strerror if e.strerror and e.errno is not None else e).replace(os.fspath(internal), os.fspath(user))
    err = type(e)(e.errno, text) if e.errno is not None else type(e)(text)
    return err


def _publish(src: Path, out: Path, overwrite: bool, folder: Path) -> None:
    """Move the finished trace file ``src`` to ``out``: replacing an existing file only with ``overwrite``; without
    it, with a hard link, which fails atomically when a file appeared at ``out`` during the recording (on a file
    system without hard links, a check and a rename: a file appearing between the two would be replaced)."""
    try:
        if overwrite:
            os.replace(src, out)
            return
        try:
            os.link(src, out)
        except FileExistsError:
            raise FileExistsError(f"{out} appeared while recording; nothing was replaced (the finished prompts are "
                                  f"kept in {folder}: pass --overwrite to replace it).") from None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                raise
            if out.exists():
                raise FileExistsError(f"{out} appeared while recording; nothing was replaced (the finished prompts "
                                      f"are kept in {folder}: pass --overwrite to replace it).") from None
            os.replace(src, out)
            return
        src.unlink()
    except FileExistsError:
        raise
    except OSError as e:
        raise OSError(e.errno, f"Cannot write the trace file {out}: {e.strerror or e}") from None
    finally:
        src.unlink(missing_ok=True)


@dataclass(frozen=True, eq=False)
class Recording:
    """A recording whose arguments `prepare_recording` checked; `run` loads the model and records."""

    out: Path
    args: dict
    prompts: list              # the `Prompt` objects to record
    done: dict                 # prompt index -> finished `Trace` left by an earlier run
    stored_fingerprint: dict | None
    exit_layers: tuple[int, ...] | None
    probe_layers: tuple[int, ...] | None
    overwrite: bool

    @property
    def folder(self) -> Path:
        return partial_dir(self.out)

    def _fingerprint(self, heads_label: str) -> dict:
        """What identifies the model's files, the exit heads' files and the code, computed here in the driver (with
        Ray too: every worker reads the same paths)."""
        from lede_env.defaults import heads_sha256

        a = self.args
        return {"model": model_fingerprint(a["model"]), "heads_label": heads_label,
                "heads_sha256": heads_sha256(a["heads"], a["model"]), "lede_version": _lede_version()}

    def run(self, progress: bool = True, ray: str | None = None, workers: int = 2,
            threads: int | None = None) -> tuple[TraceSet, Path]:
        """Load the model, record the prompts not finished yet and write the trace file. Returns
        ``(TraceSet, path)``. ``ray``: a Ray address, or ``"local"`` for a one-machine cluster, to record the prompts
        on ``workers`` Ray workers (`lede_env.distributed`) with ``threads`` torch threads each (default 1); the trace
        file is the same, byte for byte, as a single process with as many threads writes (another thread count moves
        the recorded entropies by about 1e-6)."""
        from lede_env.distributed import InProcess, PromptPool

        factory = functools.partial(_TraceWorker, self.args, self.exit_layers, self.probe_layers,
                                    [p.text for p in self.prompts])
        pool = InProcess(factory) if ray is None else PromptPool(factory, workers=workers, address=ray,
                                                                 threads=threads or 1)
        try:
            return self._record(pool, progress)
        finally:
            pool.close()

    def _record(self, pool, progress: bool) -> tuple[TraceSet, Path]:
        """Record on ``pool`` (a `lede_env.distributed` pool of `_TraceWorker`) the prompts not finished yet."""
        from tqdm import tqdm

        desc = pool.call_one("describe")
        a, out_path, folder, plist = self.args, self.out, self.folder, self.prompts
        exit_layers, probe_layers, ids = desc["exit_layers"], desc["probe_layers"], desc["ids"]
        max_new_tokens = a["max_new_tokens"]
        fingerprint = self._fingerprint(desc["heads_label"])
        done = dict(self.done)
        if done and self.stored_fingerprint != fingerprint:
            raise _refuse(folder, f"made with another model, other exit heads or another lede_env version "
                                  f"({_diff(self.stored_fingerprint, fingerprint)})")
        for i, tr in done.items():   # the finished prompts must be what this run would record
            if tuple(tr.exit_layers) != exit_layers or tuple(tr.probe_layers) != probe_layers or \
                    tr.prompt_ids.tolist() != ids[i]:
                raise _refuse(folder, "whose traces were recorded differently (exit or probe layers, prompt tokens)")
        meta = {"model": a["model"], "dtype": a["dtype"], "exit_heads": desc["heads_label"],
                "exit_heads_spec": a["heads"], "exit_heads_sha256": fingerprint["heads_sha256"],
                "exit_layers": list(exit_layers), "probe_layers": list(probe_layers), "max_new_tokens": max_new_tokens,
                "vocab_size": desc["vocab_size"], "num_layers": desc["num_layers"], "prompts": a["prompts"],
                "prompt_ids": [p.id for p in plist], "chat_template": a["chat_template"],
                "max_context": desc["max_context"]}
        if a.get("device", "cpu") != "cpu":
            meta["device"] = a["device"]        # the replay env prices these traces with this device's profile
        # The recording starts: only now are the output's folder and the partial folder made.
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{_RECORDING}.tmp"
        tmp.write_text(json.dumps({"arguments": a, "fingerprint": fingerprint}, indent=1))
        tmp.replace(folder / _RECORDING)

        traces: dict[int, Trace] = done
        bar = tqdm(total=len(ids), initial=len(done), desc="recording traces", disable=not progress)
        if done and progress:
            print(f"Resuming the recording of {out_path}: {len(done)} of {len(ids)} prompts already recorded in "
                  f"{folder}.", file=sys.stderr)

        def finished(i: int, tr: Trace) -> None:
            traces[i] = tr
            TraceSet(traces=(tr,), meta={"prompt_id": plist[i].id, "exit_layers": list(exit_layers),
                                         "probe_layers": list(probe_layers), "max_new_tokens": max_new_tokens}
                     ).save(folder / f"trace-{i:05d}.npz")
            bar.update(1)
            bar.set_postfix(tokens=sum(t.length for t in traces.values()))

        todo = [i for i in range(len(ids)) if i not in traces]
        try:
            pool.map("record", todo, finished)
        except BaseException as e:
            bar.close()
            what = "interrupted" if isinstance(e, KeyboardInterrupt) else f"failed ({type(e).__name__})"
            print(f"Recording of {out_path} {what} after {len(traces)} of {len(ids)} prompts: the finished ones are "
                  f"kept in {folder}; run the same command again to resume.", file=sys.stderr)
            raise
        bar.close()
        ts = TraceSet(traces=tuple(traces[i] for i in range(len(ids))), meta=meta)
        complete = folder / _COMPLETE
        try:
            ts.save(complete)
        except OSError as e:
            raise _user_path_error(e, complete, out_path) from None
        _publish(complete, out_path, self.overwrite, folder)
        shutil.rmtree(folder, ignore_errors=True)
        return ts, out_path


class _TraceWorker:
    """The model and decoder one recording runs on, built once (in this process, or in each Ray worker)."""

    def __init__(self, args: dict, exit_layers, probe_layers, texts: list[str]):
        from lede_env.engine.limits import default_exit_layers, default_probe_layers
        from lede_env.models import load_model
        from lede_env.wiring import build_decoder

        a, model = args, args["model"]
        loaded = load_model(model, dtype=a["dtype"], device=a.get("device", "cpu"))
        N = loaded[0].config.num_hidden_layers
        self.exit_layers = check_layer_range(exit_layers or default_exit_layers(N), N, "exit_layers", model)
        self.probe_layers = check_layer_range(probe_layers or default_probe_layers(N), N, "probe_layers", model)
        setup = build_decoder(model, heads=a["heads"], path=a["path"], dtype=a["dtype"],
                              probe_layers=self.probe_layers, max_context=a["max_context"],
                              chat_template=a["chat_template"], loaded=loaded)
        missing = [L for L in self.exit_layers if not setup.heads.has(L)]
        if missing:
            raise ValueError(f"The exit heads ({setup.heads_label}) have no head for exit layers {missing}; they "
                             f"cover {list(setup.heads.layers)}.")
        self.args, self.setup, self.ids = a, setup, setup.encode(texts)

    def describe(self) -> dict:
        """What the driver needs of the model: the layers, the encoded prompts and the metadata."""
        setup = self.setup
        return {"exit_layers": self.exit_layers, "probe_layers": self.probe_layers, "ids": self.ids,
                "heads_label": setup.heads_label,
                "vocab_size": setup.model.config.vocab_size, "num_layers": setup.model.config.num_hidden_layers,
                "max_context": setup.decoder.max_context}

    def record(self, i: int) -> Trace:
        return record_trace(self.setup.decoder, self.ids[i], i, self.exit_layers, self.args["max_new_tokens"])


def prepare_recording(model: str | os.PathLike, prompts: str | os.PathLike, out: str | os.PathLike,
                      limit: int | None = None, max_new_tokens: int = 128, heads: str | os.PathLike | None = "default",
                      exit_layers=None, probe_layers=None, chat_template: bool = True, dtype: str = "float32",
                      max_context: int | None = None, overwrite: bool = False, path: str = "auto",
                      device: str = "cpu") -> Recording:
    """Check everything a recording needs that can be checked without the model, creating nothing: the output
    path (`check_trace_output`; an existing file is replaced only with ``overwrite``), the model name, the
    prompt selection (non-empty), ``limit >= 1``, the layer lists, the heads path and an unfinished recording's
    arguments. Returns the `Recording` to `run`. Errors about one argument carry ``.argument``."""
    model = os.fspath(model)
    prompts = os.fspath(prompts)
    heads = None if heads is None else os.fspath(heads)
    with tag_argument("out"):
        out_path = check_trace_output(os.fspath(out), overwrite)
    with tag_argument("model"):
        check_model_name(model)
    plist, exits, probes = _check_arguments(prompts, limit, max_new_tokens, heads, exit_layers, probe_layers,
                                            max_context)
    args = {"model": model, "prompts": prompts, "heads": heads, "dtype": dtype,
            "max_new_tokens": int(max_new_tokens), "exit_layers": None if exits is None else list(exits),
            "probe_layers": None if probes is None else list(probes), "chat_template": bool(chat_template),
            "max_context": None if max_context is None else int(max_context), "path": path}
    if device != "cpu":          # recorded on a GPU (a CPU recording's arguments stay as they were: it resumes)
        args["device"] = device
    done, stored = _read_partial(partial_dir(out_path), args, [p.id for p in plist])
    return Recording(out=out_path, args=args, prompts=plist, done=done, stored_fingerprint=stored,
                     exit_layers=exits, probe_layers=probes, overwrite=overwrite)


def record_traces_for(model: str | os.PathLike, prompts: str | os.PathLike, out: str | os.PathLike,
                      limit: int | None = None, max_new_tokens: int = 128, heads: str | os.PathLike | None = "default",
                      exit_layers: tuple[int, ...] | None = None, probe_layers: tuple[int, ...] | None = None,
                      chat_template: bool = True, dtype: str = "float32", max_context: int | None = None,
                      progress: bool = True, overwrite: bool = False, path: str = "auto", device: str = "cpu"):
    """Record the traces of a prompt set (optionally its first ``limit`` prompts) with ``model`` and write them to
    ``out``, resumably (module docstring): `prepare_recording` (every check that needs no model, before it loads),
    then `Recording.run`. Returns ``(TraceSet, path)``. ``path``: the decoder's execution path (greedy output is the
    same on the fp32 paths). Paths may be strings or `os.PathLike`."""
    return prepare_recording(model, prompts, out, limit=limit, max_new_tokens=max_new_tokens, heads=heads,
                             exit_layers=exit_layers, probe_layers=probe_layers, chat_template=chat_template,
                             dtype=dtype, max_context=max_context, overwrite=overwrite, path=path,
                             device=device).run(progress)
