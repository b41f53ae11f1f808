"""Rendering (`lede_env.render`, `LEDEEnv.render`): the marked text itself, not only the legend."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

import lede_env  # noqa: F401  (registers the ids)
from lede_env.render import ANSI, LEGEND, RESET, mark_text, token_kinds, token_pieces

from tests.conftest import TINY_EXITS, TINY_MAX_NEW_TOKENS, TINY_PROBES, TINY_SPEC

GREEN, RED, CYAN = "\x1b[32m", "\x1b[31m", "\x1b[36m"


def test_colour_codes():
    assert ANSI["draft"] == GREEN and ANSI["correction"] == RED and ANSI["bonus"] == CYAN
    assert ANSI["plain"] == "" and ANSI["first"] == "" and RESET == "\x1b[0m"
    assert "green = accepted draft" in LEGEND and "red = correction" in LEGEND and "cyan = bonus" in LEGEND


def test_token_kinds_by_hand():
    steps = [
        (0, 0, 1),   # k = 0: one plain token
        (3, 1, 2),   # 1 of 3 drafts accepted, then the correction
        (2, 2, 3),   # both drafts accepted, then the bonus token
        (4, 0, 1),   # every draft rejected: only the correction
        (3, 3, 3),   # all drafts accepted up to EOS: no bonus token after it
        (1, 0, 1),
    ]
    assert token_kinds(steps) == ["plain", "draft", "correction", "draft", "draft", "bonus", "correction",
                                  "draft", "draft", "draft", "correction"]
    assert token_kinds([]) == []


def test_mark_text_without_colour():
    pieces = ["A", "b", "c", "D", "e", "f"]
    kinds = ["first", "draft", "correction", "plain", "draft", "bonus"]
    assert mark_text(pieces, kinds, color=False) == "A[b]<c>D[e]<f>"


def test_mark_text_with_colour():
    pieces = ["A", "b", "c", "D", "e", "f"]
    kinds = ["first", "draft", "correction", "plain", "draft", "bonus"]
    assert mark_text(pieces, kinds, color=True) == (
        "A" + GREEN + "b" + RESET + RED + "c" + RESET + "D" + GREEN + "e" + RESET + CYAN + "f" + RESET)


def test_token_pieces_join_to_the_text(tiny):
    _, tok = tiny
    ids = tok.encode("hello world")[1:] + [tok.eos_token_id] + tok.encode("ab")[1:]
    pieces = token_pieces(tok, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=False)
    assert pieces == [tok.decode([i], skip_special_tokens=False) for i in ids]


def _expected_render(tok, infos):
    """The ansi text built from the documented rule: per step, ``accepted`` green drafts, then (when the step
    produced more tokens than it accepted) a plain token after k = 0, a cyan bonus token when all drafts were
    accepted, else a red correction; the prefill's first token is plain."""
    generated = infos[-1]["generated_ids"]
    kinds = ["first"]
    for info in infos[1:]:
        kinds += ["draft"] * info["accepted"]
        if info["tokens"] > info["accepted"]:
            kinds.append("plain" if info["drafted"] == 0 else
                         "bonus" if info["accepted"] == info["drafted"] else "correction")
    assert len(kinds) == len(generated)
    colour = {"first": "", "plain": "", "draft": GREEN, "correction": RED, "bonus": CYAN}
    text = "".join(colour[k] + tok.decode([i]) + (RESET if colour[k] else "") for k, i in zip(kinds, generated))
    return text, kinds


def test_env_render_marks_the_right_tokens(tiny_setup, tiny):
    _, tok = tiny
    env = gym.make("LEDE-v0", model="tiny-random", prompts=tiny_setup["prompts"], profile=tiny_setup["profile"],
                   max_new_tokens=TINY_MAX_NEW_TOKENS, exit_layers=TINY_EXITS, spec_lengths=TINY_SPEC,
                   probe_layers=TINY_PROBES, chat_template=False, exit_heads="identity", render_mode="ansi")
    seen = set()
    for prompt in range(3):
        _, info = env.reset(seed=0, options={"prompt_index": prompt})
        infos = [info]
        # exit 5 (deep: drafts often accepted), exit 1 (shallow: often rejected), and k = 0 steps.
        actions = [np.array(a) for a in ([4, 3], [0, 0], [4, 6], [0, 2], [4, 1], [3, 0], [0, 6])] * 10
        for a in actions:
            _, _, term, trunc, info = env.step(a)
            infos.append(info)
            if term or trunc:
                break
        expected, kinds = _expected_render(tok, infos)
        assert env.render() == f"{expected}\n({LEGEND})"
        seen |= set(kinds)
    assert seen == {"first", "plain", "draft", "correction", "bonus"}   # every kind was rendered and checked
    assert gym.make("LEDE-v0", backend="replay", traces=tiny_setup["traces"], profile=tiny_setup["profile"],
                    spec_lengths=TINY_SPEC).unwrapped.render() is None   # no render_mode: nothing


class BytePairs:
    """A byte-level toy tokenizer: token i is the i-th byte of ``text`` (UTF-8); decoding replaces an unfinished
    multi-byte character by U+FFFD, as byte-level BPE tokenizers do."""

    def __init__(self, text: str):
        self.data = text.encode()

    def decode(self, ids, skip_special_tokens=False):
        return bytes(self.data[i] for i in ids).decode("utf-8", errors="replace")


def test_token_pieces_keep_a_character_split_across_tokens_whole():
    text = "a\u00e9b\u20acc"                     # é: 2 bytes, €: 3 bytes
    tok = BytePairs(text)
    ids = list(range(len(tok.data)))
    pieces = token_pieces(tok, ids)
    assert "".join(pieces) == text
    assert pieces == ["a", "", "\u00e9", "b", "", "", "\u20ac", "c"]
    assert token_pieces(tok, ids[:2]) == ["a", "\ufffd"]     # an unfinished character at the end shows as U+FFFD
