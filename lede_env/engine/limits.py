"""Limits and default layer lists shared by the engine, the replay backend and the environment (pure Python,
no torch)."""

from __future__ import annotations


def max_draft_length(budget_left: int, context_left: int) -> int:
    """The engine's clip of the speculation length k.

    A step produces at most ``k + 1`` tokens, which must fit both the tokens ``max_new_tokens`` has left
    and the free context window (both counted after the pending token)."""
    return max(0, min(budget_left, context_left) - 1)


def default_exit_layers(num_layers: int) -> tuple[int, ...]:
    """Every second layer from about an eighth of the depth up to two layers below the top."""
    start = max(1, num_layers // 8)
    start += start % 2
    return tuple(range(start, num_layers - 1, 2)) or tuple(range(1, num_layers))


def default_probe_layers(num_layers: int) -> tuple[int, ...]:
    """Probe layers at 1/4, 1/2, 3/4 and near the top of the stack."""
    return tuple(sorted({max(1, num_layers // 4), num_layers // 2, (3 * num_layers) // 4, num_layers - 2}))
