"""Per-model defaults that ship with the package: which exit heads to use and the static setting the demo
uses. Both are measured results (see `lede_env/data/defaults.json` and the README), not guesses."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lede_env.paths import PACKAGE_DATA, sha256_of

_DEFAULTS_FILE = PACKAGE_DATA / "defaults.json"


def model_defaults(model: str) -> dict:
    """The shipped defaults for ``model`` (empty for models without any)."""
    if not _DEFAULTS_FILE.is_file():
        return {}
    return json.loads(_DEFAULTS_FILE.read_text()).get(model, {})


def check_heads_spec(spec) -> None:
    """``FileNotFoundError`` unless the exit heads ``spec`` is ``None``, ``'default'``, ``'identity'`` or an existing
    path (the folder or ``.safetensors`` file written by `lede fit-heads`). No torch is imported."""
    if spec in (None, "default", "identity"):
        return
    if not Path(spec).exists():
        raise FileNotFoundError(f"No exit heads at {os.fspath(spec)}: pass 'default', 'identity' or the folder "
                                f"written by `lede fit-heads --out {os.fspath(spec)}`.")


def heads_path(spec, model_name: str) -> Path | None:
    """Where the exit heads ``spec`` are read from: the path itself, the shipped heads of ``model_name`` for
    ``'default'``; ``None`` for identity heads (``'identity'``, ``None``, or ``'default'`` without shipped heads)."""
    if spec in (None, "identity"):
        return None
    if spec == "default":
        rel = model_defaults(model_name).get("exit_heads")
        return PACKAGE_DATA / rel if rel else None
    return Path(spec)


def heads_sha256(spec, model_name: str) -> str | None:
    """sha256 of the files of the exit heads ``spec`` (`heads_path`: for a folder every file in it, for a
    ``.safetensors`` file it and its ``.json``); ``None`` for identity heads."""
    path = heads_path(spec, model_name)
    if path is None:
        return None
    check_heads_spec(path)
    if path.is_dir():
        files = sorted((f for f in path.iterdir() if f.is_file()), key=lambda f: f.name)
    else:
        files = [f for f in (path, path.with_suffix(".json")) if f.is_file()]
    return sha256_of(files)


def resolve_exit_heads(spec: str | None, model_name: str, model=None):
    """``'identity'`` / ``None``: plain early exit; ``'default'``: the heads shipped for this model (identity if
    none); anything else: a path to saved heads. Returns an `ExitHeads`."""
    from lede_env.engine.heads import ExitHeads, identity_heads

    path = heads_path(spec, model_name)
    if path is None:
        return identity_heads()
    check_heads_spec(path)
    device = dtype = None
    if model is not None:
        p = next(model.parameters())
        device, dtype = p.device, p.dtype
    heads = ExitHeads.load(path, device=device, dtype=dtype)
    if model is not None and heads.meta.get("hidden_size") not in (None, model.config.hidden_size):
        raise ValueError(f"The exit heads at {path} were fitted for hidden size {heads.meta['hidden_size']}, "
                         f"this model has {model.config.hidden_size}: fit heads for this model.")
    return heads


def default_static_action(model_name: str, exit_heads=None) -> tuple[int, int]:
    """The best static (exit layer, k) measured for this model and head kind, else a deep exit with k=2."""
    from lede_env.engine.profile import heads_label

    kind = heads_label(exit_heads)
    found = model_defaults(model_name).get("best_static", {}).get(kind)
    if found:
        return int(found[0]), int(found[1])
    return 24, 2


SHIPPED_TRACES = PACKAGE_DATA / "traces"


def shipped_traces(prompts: str, model: str = "smollm2-135m", heads: str = "default") -> Path:
    """The trace file shipped for ``prompts`` (``"mixed:test"``, ``"humaneval:train"``, ...), ``model`` and its default
    exit heads: ``lede_env/data/traces/<model>_<heads label>_<set>-<split>.npz``, recorded with ``lede trace`` (``make
    traces`` rebuilds them). Checked against the heads: the traces record the sha256 of the heads they were drafted
    with, and a file whose heads differ from the shipped ones is refused (its drafts would not be these heads').
    ``FileNotFoundError`` / ``ValueError`` name the fix."""
    import numpy as np

    if heads != "default":
        raise ValueError(f"Traces ship only for the default exit heads, not {heads!r}: record your own with `lede trace "
                         f"--heads {heads} --prompts {prompts} --out ...`.")
    name, _, split = str(prompts).partition(":")
    if split not in ("train", "test"):
        raise ValueError(f"Shipped traces are per split: give '<set>:train' or '<set>:test', got {prompts!r}.")
    label = model_defaults(model).get("heads_label", "eagle+vocab")
    path = SHIPPED_TRACES / f"{model}_{label}_{name}-{split}.npz"
    if not path.is_file():
        have = sorted(p.name for p in SHIPPED_TRACES.glob("*.npz")) if SHIPPED_TRACES.is_dir() else []
        raise FileNotFoundError(f"No shipped traces for {model} on {prompts} ({path.name}; shipped: {have}). Record "
                                f"them with `lede trace --model {model} --prompts {prompts} --out {path}`.")
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(bytes(data["__meta__"]).decode())
    want = heads_sha256("default", model)
    if meta.get("exit_heads_sha256") != want:
        raise ValueError(f"{path} was recorded with other exit heads than the shipped ones (sha256 "
                         f"{str(meta.get('exit_heads_sha256'))[:12]} vs {str(want)[:12]}): rebuild it with `make traces`.")
    return path
