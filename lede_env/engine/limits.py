"""Limits shared by the engine and the replay backend (pure Python, no torch)."""

from __future__ import annotations


def max_draft_length(budget_left: int, context_left: int) -> int:
    """The engine's clip of the speculation length k.

    A step produces at most ``k + 1`` tokens, which must fit both the tokens ``max_new_tokens`` has left
    and the free context window (both counted after the pending token)."""
    return max(0, min(budget_left, context_left) - 1)
