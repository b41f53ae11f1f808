"""The fused per-row CPU operations of the fast path (`csrc/fast_ops.cpp`), built on first use.

`load()` compiles the C++ source with torch's extension builder (g++ and ninja, about 30 s once per machine)
into ``~/.cache/lede-gym/torch_extensions`` (or ``$LEDE_CACHE_DIR/torch_extensions``), keyed by a hash of
the source, the torch version and the CPU's instruction-set flags (it is built with ``-march=native``), and
returns the module, or None where it cannot be built (no compiler): the fast path then uses torch operations
(`FastLayerStack(..., ops="torch")`). ``LEDE_FAST_OPS=0`` turns it off; ``LEDE_FAST_OPS=portable`` builds it without
the AVX-512 kernels, as it builds on CPUs without AVX-512 (AVX2 laptops, ARM), so that path is testable anywhere.

Builds and their locks. Torch's builder guards a build folder with a ``lock`` file that it deletes when done; a
process stopped during the build (a Ctrl-C in those 30 s) leaves it behind, and torch then waits on it forever,
silently. So `load` builds under a lock of its own (`build_lock`: an ``fcntl.flock`` on ``lede.lock`` in the
folder, which the operating system releases when its holder dies, however it dies): holding it, no process of
ours is building there, so a torch ``lock`` file found then is stale and is removed (with a message). Waiting for
another process's build prints what it waits for, and gives up after ``LEDE_BUILD_WAIT`` seconds (default 900;
then the torch operations are used).

Why C++ by hand: see the header of `csrc/fast_ops.cpp` (measured: torch.compile of a layer no faster).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "fast_ops.cpp"
FLAGS = {"extra_cflags": ["-O3", "-march=native", "-fopenmp"], "extra_ldflags": ["-fopenmp"]}


def _flags() -> dict:
    """Compiler flags: `FLAGS`, plus ``-DLEDE_PORTABLE`` under ``LEDE_FAST_OPS=portable``."""
    if os.environ.get("LEDE_FAST_OPS") == "portable":
        return {**FLAGS, "extra_cflags": FLAGS["extra_cflags"] + ["-DLEDE_PORTABLE"]}
    return FLAGS


_STATE: dict[str, object] = {}


def _cpu_flags() -> str:
    """The CPU's flags, part of the build's key (it is built with ``-march=native``)."""
    from lede_env.engine.profile import cpu_flags

    return cpu_flags()


def build_dir() -> Path:
    root = Path(os.environ.get("LEDE_CACHE_DIR", Path.home() / ".cache" / "lede-gym"))
    return root / "torch_extensions"


def module_dir() -> Path:
    """The build folder of the current source, flags, torch version and CPU: ``build_dir() / lede_fast_ops_<hash>``."""
    key = hashlib.sha256(SOURCE.read_bytes() + repr(_flags()).encode() + torch.__version__.encode()
                         + _cpu_flags().encode())
    return build_dir() / f"lede_fast_ops_{key.hexdigest()[:12]}"


@contextmanager
def build_lock(folder: str | Path, timeout: float | None = None, poll: float = 0.5, echo=None):
    """Hold the build lock of ``folder`` (module docstring) for the duration of the block.

    Waits for another process holding it, saying so once on stderr (``echo``, default: print to stderr), and raises
    ``TimeoutError`` after ``timeout`` seconds (default ``$LEDE_BUILD_WAIT`` or 900). Holding it, removes a torch
    ``lock`` file left in ``folder`` by a stopped build. Where ``fcntl`` does not exist (Windows) only the stale
    file is not looked after."""
    folder = Path(folder)
    say = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
    timeout = float(os.environ.get("LEDE_BUILD_WAIT", 900)) if timeout is None else timeout
    try:
        import fcntl
    except ImportError:        # pragma: no cover - not on the platforms this runs on
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    ours = folder / "lede.lock"
    fd = os.open(ours, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        start = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    say(f"Waiting for another process that is building the fast path's C++ operations in {folder} "
                        f"(it holds {ours}; giving up after {timeout:.0f} s)...")
                    told = True
                if time.monotonic() - start >= timeout:
                    raise TimeoutError(f"Another process has held the build lock {ours} for more than {timeout:.0f} s."
                                       ) from None
                time.sleep(poll)
        stale = folder / "lock"
        if stale.exists():
            say(f"Removing {stale}, left by a build that was stopped part-way; building again.")
            stale.unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def load(required: bool = False):
    """The compiled module, or None where it cannot be built (``required=True``: raise instead)."""
    if "module" not in _STATE:
        _STATE["module"], _STATE["error"] = None, None
        if os.environ.get("LEDE_FAST_OPS", "1") == "0":
            _STATE["error"] = "turned off by LEDE_FAST_OPS=0"
        else:
            flags = _flags()
            path = module_dir()
            name = path.name
            try:
                from torch.utils.cpp_extension import load as build

                path.mkdir(parents=True, exist_ok=True)
                if not any(path.glob("*.so")):
                    print(f"Building the fast path's C++ operations into {path} (once, about 30 s)...", flush=True)
                with build_lock(path):
                    _STATE["module"] = build(name, [str(SOURCE)], build_directory=str(path), verbose=False, **flags)
            except Exception as exc:  # noqa: BLE001 - any build failure: fall back to torch operations
                last = (str(exc).strip().splitlines() or [""])[-1]   # a compiler's log ends with its verdict
                _STATE["error"] = f"{type(exc).__name__}: {last}"
                warnings.warn(f"The fast path's C++ operations could not be built ({_STATE['error']}); "
                              "using torch operations instead (slower). Install g++ and ninja to build them.",
                              stacklevel=2)
    if _STATE["module"] is None and required:
        raise RuntimeError(f"The fast path's C++ operations are not available: {_STATE['error']}")
    return _STATE["module"]


def available() -> bool:
    """Whether the compiled operations load here."""
    return load() is not None
