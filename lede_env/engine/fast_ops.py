"""The fused per-row CPU operations of the fast path (`csrc/fast_ops.cpp`), built on first use.

`load()` compiles the C++ source with torch's extension builder (g++ and ninja, about 30 s once per machine)
into ``~/.cache/lede-gym/torch_extensions`` (or ``$LEDE_CACHE_DIR/torch_extensions``), keyed by a hash of
the source, the torch version and the CPU's instruction-set flags (it is built with ``-march=native``), and
returns the module, or None where it cannot be built (no compiler): the fast path then uses torch operations
(`FastLayerStack(..., ops="torch")`). ``LEDE_FAST_OPS=0`` turns it off.

Why C++ by hand: see the header of `csrc/fast_ops.cpp` (measured: torch.compile of a layer no faster).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "fast_ops.cpp"
FLAGS = {"extra_cflags": ["-O3", "-march=native", "-fopenmp"], "extra_ldflags": ["-fopenmp"]}
_STATE: dict[str, object] = {}


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def build_dir() -> Path:
    root = Path(os.environ.get("LEDE_CACHE_DIR", Path.home() / ".cache" / "lede-gym"))
    return root / "torch_extensions"


def load(required: bool = False):
    """The compiled module, or None where it cannot be built (``required=True``: raise instead)."""
    if "module" not in _STATE:
        _STATE["module"], _STATE["error"] = None, None
        if os.environ.get("LEDE_FAST_OPS", "1") == "0":
            _STATE["error"] = "turned off by LEDE_FAST_OPS=0"
        else:
            key = hashlib.sha256(SOURCE.read_bytes() + repr(FLAGS).encode() + torch.__version__.encode()
                                 + _cpu_flags().encode())
            name = f"lede_fast_ops_{key.hexdigest()[:12]}"
            path = build_dir() / name
            try:
                from torch.utils.cpp_extension import load as build

                path.mkdir(parents=True, exist_ok=True)
                if not any(path.glob("*.so")):
                    print(f"Building the fast path's C++ operations into {path} (once, about 30 s)...", flush=True)
                _STATE["module"] = build(name, [str(SOURCE)], build_directory=str(path), verbose=False, **FLAGS)
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
