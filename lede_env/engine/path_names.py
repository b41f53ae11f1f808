"""Names of the engine's execution paths and what "auto" resolves to, in pure Python: the environment, the
replay backend and the latency-profile lookup name a path without importing torch (`lede_env.engine.stack`
builds them)."""

from __future__ import annotations

PATHS = ("eager", "fast", "fast-bf16")
AUTO = "auto"


def resolve_path(path: str, device: str = "cpu", dtype: str = "float32") -> str:
    """The concrete path ``path`` names for a model on ``device`` in ``dtype`` (names, or torch objects whose
    ``str`` gives them). "auto": "fast" for CPU models in float32 or bfloat16 (validated there: exact,
    tests/engine/test_stack.py; faster than "eager" at every number of positions, benchmarks/speed.py), "eager"
    elsewhere (other devices and dtypes are not validated). "auto" keeps the model's dtype: "fast-bf16", the bf16
    path of an fp32 model, changes the numerics and must be asked for by name."""
    if path != AUTO:
        if path not in PATHS:
            raise ValueError(f"Unknown execution path {path!r}; available: {', '.join(PATHS + (AUTO,))}.")
        return path
    dev = str(device).split(":")[0]
    dt = str(dtype).removeprefix("torch.")
    return "fast" if dev == "cpu" and dt in ("float32", "bfloat16") else "eager"
