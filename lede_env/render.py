"""Marking generated text by how each token came to be: an accepted draft, a correction (the full model
overruled a draft), a bonus token (all drafts accepted), or a plain autoregressive token."""

from __future__ import annotations

from typing import Iterable, Sequence

ANSI = {"draft": "\x1b[32m", "correction": "\x1b[31m", "bonus": "\x1b[36m", "plain": "", "first": ""}
RESET = "\x1b[0m"
LEGEND = "green = accepted draft, red = correction, cyan = bonus token, plain = autoregressive step"


def token_kinds(steps: Iterable[tuple[int, int, int]]) -> list[str]:
    """Kinds of the tokens produced by steps given as (drafted, accepted, produced) triples."""
    kinds: list[str] = []
    for drafted, accepted, produced in steps:
        kinds += ["draft"] * accepted
        if produced > accepted:
            kinds.append("plain" if drafted == 0 else ("bonus" if accepted == drafted else "correction"))
    return kinds


def mark_text(pieces: Sequence[str], kinds: Sequence[str], color: bool = True) -> str:
    """Join decoded token pieces, wrapping each in the ANSI colour of its kind (or, without colour,
    accepted drafts in [brackets] and corrections/bonus tokens in <angles>)."""
    out = []
    for piece, kind in zip(pieces, kinds):
        if color:
            out.append(f"{ANSI[kind]}{piece}{RESET}" if ANSI[kind] else piece)
        elif kind == "draft":
            out.append(f"[{piece}]")
        elif kind in ("correction", "bonus"):
            out.append(f"<{piece}>")
        else:
            out.append(piece)
    return "".join(out)


def token_pieces(tokenizer, ids: Sequence[int]) -> list[str]:
    """Decoded text of each token such that the pieces join to the decoded text. A character split across
    tokens (a multi-byte UTF-8 character in byte-level BPE) decodes to U+FFFD until its last byte arrives: its
    tokens before the last get an empty piece and the last one the whole character."""
    pieces, prev = [], ""
    for i in range(1, len(ids) + 1):
        text = tokenizer.decode(list(ids[:i]), skip_special_tokens=False)
        if text.startswith(prev) and not text.endswith("\ufffd"):
            pieces.append(text[len(prev):])
            prev = text
        else:                       # an unfinished character: it shows with a later token
            pieces.append("")
    if pieces:
        final = tokenizer.decode(list(ids), skip_special_tokens=False)
        pieces[-1] += final[len(prev):] if final.startswith(prev) else ""
    return pieces
