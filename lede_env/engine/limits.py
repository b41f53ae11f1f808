"""Limits and default layer lists shared by the engine, the replay backend and the environment (pure Python,
no torch)."""

from __future__ import annotations


def max_draft_length(budget_left: int, context_left: int) -> int:
    """The engine's clip of the speculation length k.

    A step produces at most ``k + 1`` tokens, which must fit both the tokens ``max_new_tokens`` has left
    and the free context window (both counted after the pending token)."""
    return max(0, min(budget_left, context_left) - 1)


def default_exit_layers(num_layers: int) -> tuple[int, ...]:
    """Layers 1 and 2, then every second layer from about an eighth of the depth up to two layers below the top.
    The two shallowest are there for heads whose first draft reads the verified feature (``eagle``): on SmolLM2
    their first drafts at layer 1 agree nearly as often as at layer 4, for a quarter of the layers."""
    start = max(1, num_layers // 8)
    start += start % 2
    spaced = tuple(range(start, num_layers - 1, 2)) or tuple(range(1, num_layers))
    return tuple(sorted({L for L in (1, 2) if L < num_layers} | set(spaced)))


def default_probe_layers(num_layers: int) -> tuple[int, ...]:
    """Probe layers at 1/4, 1/2, 3/4 and near the top of the stack."""
    return tuple(sorted({max(1, num_layers // 4), num_layers // 2, (3 * num_layers) // 4, num_layers - 2}))


def parse_layers(spec, name: str = "layers") -> tuple[int, ...]:
    """A layer list as a tuple: comma-separated text (``"4,8,12"``, the command line) or a sequence of integers.
    ``ValueError`` (naming ``name``) unless it is non-empty, integers, distinct and each >= 1. The range check
    needs the model's depth: `check_layer_range`."""
    text = spec.split(",") if isinstance(spec, str) else spec
    try:
        if isinstance(text, (int, bytes)) or any(isinstance(x, (bool, float)) for x in text):
            raise TypeError
        layers = tuple(int(str(x).strip()) if isinstance(spec, str) else int(x) for x in text)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be comma-separated layer numbers such as 4,8,12, got {spec!r}.") from None
    if not layers or min(layers) < 1 or len(set(layers)) != len(layers):
        raise ValueError(f"{name} must be distinct layer numbers >= 1, got {list(layers)}.")
    return layers


def check_layer_range(layers, num_layers: int, name: str = "exit layers", model: str | None = None
                      ) -> tuple[int, ...]:
    """``layers`` as a tuple if every one is an exit of a ``num_layers``-layer model (1 .. num_layers - 1; the last
    layer is the full model), else ``ValueError`` naming ``name`` (and ``model``)."""
    layers = tuple(int(x) for x in layers)
    bad = [L for L in layers if not 1 <= L <= num_layers - 1]
    if bad:
        raise ValueError(f"{name} {bad} out of range: {model or 'the model'} has {num_layers} layers, exits run "
                         f"from 1 to {num_layers - 1}.")
    return layers
