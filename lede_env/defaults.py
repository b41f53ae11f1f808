"""Per-model defaults that ship with the package: which exit heads to use and the static setting the demo
uses. Both are measured results (see `lede_env/data/defaults.json` and the README), not guesses."""

from __future__ import annotations

import json
from pathlib import Path

from lede_env.paths import PACKAGE_DATA

_DEFAULTS_FILE = PACKAGE_DATA / "defaults.json"


def model_defaults(model: str) -> dict:
    """The shipped defaults for ``model`` (empty for models without any)."""
    if not _DEFAULTS_FILE.is_file():
        return {}
    return json.loads(_DEFAULTS_FILE.read_text()).get(model, {})


def resolve_exit_heads(spec: str | None, model_name: str, model=None):
    """``'identity'`` / ``None``: plain early exit; ``'default'``: the heads shipped for this model (identity if
    none); anything else: a path to saved heads. Returns an `ExitHeads`."""
    from lede_env.engine.heads import ExitHeads, identity_heads

    if spec in (None, "identity"):
        return identity_heads()
    if spec == "default":
        rel = model_defaults(model_name).get("exit_heads")
        if not rel:
            return identity_heads()
        spec = str(PACKAGE_DATA / rel)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"No exit heads at {path}. Fit them with `lede fit-heads --out {path}`, or pass "
                                "'identity' or 'default'.")
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
