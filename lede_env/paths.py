"""Where LEDE gym keeps what it measures and fits (latency profiles, exit heads, traces).

``$LEDE_HOME`` if set, else ``~/.cache/lede-gym``. Defaults measured and fitted for the embedded model
ship inside the package under ``lede_env/data/`` and are used when no user artifact exists."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DATA = Path(__file__).resolve().parent / "data"


def artifacts_dir() -> Path:
    """The user's artifact folder (created on demand)."""
    root = Path(os.environ.get("LEDE_HOME", Path.home() / ".cache" / "lede-gym"))
    root.mkdir(parents=True, exist_ok=True)
    return root
