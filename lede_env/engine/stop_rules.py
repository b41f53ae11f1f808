"""Stop rules: deciding the draft length *while* drafting, from the draft's own confidence (pure Python, no torch;
the engine, the replay backend and the oracle share it).

A stop rule is written as a short string and applies after each draft token ``d_i`` (its max probability ``p_i``
and entropy ``H_i`` in nats at the exit, the draft's confidence in it):

  ``none``        never stop early: draft the full cap ``k``
  ``p<T``         stop after a token with ``p_i < T`` (Kangaroo, Hugging Face's ``assistant_confidence_threshold``,
                  Draft & Verify, SWIFT)
  ``prod<T``      stop after a token when ``p_1 * ... * p_i < T`` (SpecDec++: stop when the estimated chance that
                  some draft so far is rejected, ``1 - prod``, exceeds ``1 - T``)
  ``H>T``         stop after a token with ``H_i > T`` (SVIP: stop when ``sqrt(gamma * H_i)`` exceeds its bound ``h``,
                  that is ``H_i > h**2 / gamma``)

The token that triggers the stop stays in the draft (as in Hugging Face's ``ConfidenceCriteria``): a rule with a
cap ``k`` drafts between 1 and ``k`` tokens. `DEFAULT_STOP_RULES` is the list ``LEDE-v0`` offers with
``stop_rules="default"``: the published constants of the zoo's rules and a grid of confidence thresholds for the
adaptive ones (Draft & Verify, Hugging Face's dynamic threshold), which snap their threshold to the grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

__all__ = ["StopRule", "parse_stop_rule", "parse_stop_rules", "draft_length", "DEFAULT_STOP_RULES", "KINDS"]

KINDS = ("none", "p", "prod", "H")
_OPS = {"p": "<", "prod": "<", "H": ">"}

# Every confidence threshold 0.05 .. 0.95 (step 0.05), SpecDec++'s 0.7 on the product, SVIP's 0.6 nats (h = 0.3,
# gamma = 0.15: h**2 / gamma) and entropy bounds around it; see the docstrings of agents.stopping.
DEFAULT_STOP_RULES: tuple[str, ...] = (("none",) + tuple(f"p<{i / 20:g}" for i in range(1, 20))
                                       + ("prod<0.7", "prod<0.5", "H>0.5", "H>0.6", "H>1", "H>2", "H>3"))


@dataclass(frozen=True)
class StopRule:
    """One parsed stop rule: ``kind`` (``none``, ``p``, ``prod``, ``H``) and ``threshold``."""

    kind: str
    threshold: float = 0.0

    @property
    def needs_entropy(self) -> bool:
        return self.kind == "H"

    @property
    def text(self) -> str:
        return "none" if self.kind == "none" else f"{self.kind}{_OPS[self.kind]}{self.threshold:.12g}"

    def stops(self, maxprob: float, entropy: float, product: float) -> bool:
        """Whether drafting stops after a token with max probability ``maxprob`` and entropy ``entropy``,
        ``product`` being the product of the max probabilities of the draft so far (this token included)."""
        kind = self.kind
        if kind == "none":
            return False
        if kind == "p":
            return maxprob < self.threshold
        if kind == "prod":
            return product < self.threshold
        return entropy > self.threshold


def parse_stop_rule(text: str) -> StopRule:
    """``"p<0.6"`` -> ``StopRule("p", 0.6)``; ``ValueError`` naming the forms it accepts."""
    if isinstance(text, StopRule):
        return text
    form = "Stop rules are 'none', 'p<T', 'prod<T' (T in (0, 1]) or 'H>T' (T >= 0, nats)"
    if not isinstance(text, str):
        raise ValueError(f"{form}; got {text!r}.")
    s = text.strip()
    if s == "none":
        return StopRule("none")
    for kind in ("prod", "p", "H"):
        op = _OPS[kind]
        if s.startswith(kind + op):
            try:
                value = float(s[len(kind) + 1:])
            except ValueError:
                break
            if not math.isfinite(value) or (kind != "H" and not 0 < value <= 1) or (kind == "H" and value < 0):
                raise ValueError(f"{form}; {text!r} has its threshold out of range.")
            return StopRule(kind, value)
    raise ValueError(f"{form}; got {text!r}.")


def parse_stop_rules(spec: str | Sequence[str]) -> tuple[str, ...]:
    """A list of stop rules in canonical text (``"default"`` is `DEFAULT_STOP_RULES`); ``ValueError`` unless
    non-empty and distinct."""
    if isinstance(spec, str):
        if spec == "default":
            return DEFAULT_STOP_RULES
        spec = [s for s in spec.split(",") if s.strip()]
    rules = tuple(parse_stop_rule(s).text for s in spec)
    if not rules or len(set(rules)) != len(rules):
        raise ValueError(f"stop_rules must be a non-empty list of distinct rules (or 'default'), got {list(spec)!r}.")
    return rules


def draft_length(rule: StopRule, cap: int, maxprob: Sequence[float], entropy: Sequence[float] | None = None) -> int:
    """Tokens drafted under ``rule`` with cap ``cap``, when draft token ``i`` (from 1) has max probability
    ``maxprob[i-1]`` and entropy ``entropy[i-1]``; positions past the given values never stop (the replay
    backend's reading past the end of a trace)."""
    product = 1.0
    for i in range(1, cap + 1):
        if i > len(maxprob):
            return cap
        p = maxprob[i - 1]
        product *= p
        if rule.stops(p, entropy[i - 1] if entropy is not None else 0.0, product):
            return i
    return cap
