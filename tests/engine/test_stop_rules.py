"""Stop rules (lede_env.engine.stop_rules): parsing, and the draft length each rule gives on hand-set confidences."""

import pytest

from lede_env.engine.stop_rules import DEFAULT_STOP_RULES, StopRule, draft_length, parse_stop_rule, parse_stop_rules


def test_parse_and_canonical_text():
    assert parse_stop_rule("p<0.6") == StopRule("p", 0.6)
    assert parse_stop_rule(" prod<0.70 ").text == "prod<0.7"
    assert parse_stop_rule("H>2").text == "H>2" and parse_stop_rule("none").kind == "none"
    for bad in ("p>0.6", "p<1.5", "p<0", "prod<-1", "H>-1", "H<2", "q<0.5", "p<x", "", 3):
        with pytest.raises(ValueError, match="Stop rules are"):
            parse_stop_rule(bad)
    assert parse_stop_rules("default") == DEFAULT_STOP_RULES
    assert parse_stop_rules("none,p<0.5") == ("none", "p<0.5")
    assert parse_stop_rules(["p<0.1234567", "p<0.1234568"]) == ("p<0.1234567", "p<0.1234568")   # not rounded
    with pytest.raises(ValueError, match="distinct"):
        parse_stop_rules(["p<0.5", "p<0.50"])
    assert DEFAULT_STOP_RULES[0] == "none" and len(set(DEFAULT_STOP_RULES)) == len(DEFAULT_STOP_RULES)
    assert "p<0.6" in DEFAULT_STOP_RULES and "prod<0.7" in DEFAULT_STOP_RULES   # Kangaroo's, SpecDec++'s


def test_draft_lengths_by_hand():
    p = [0.9, 0.8, 0.5, 0.95, 0.2]
    H = [0.1, 0.4, 2.5, 0.2, 3.0]
    # The token that triggers the stop stays in the draft.
    assert draft_length(parse_stop_rule("p<0.6"), 5, p, H) == 3
    assert draft_length(parse_stop_rule("p<0.6"), 2, p, H) == 2          # the cap comes first
    assert draft_length(parse_stop_rule("p<0.1"), 5, p, H) == 5          # never below 0.1
    # 0.9 * 0.8 = 0.72 >= 0.7, then 0.72 * 0.5 = 0.36 < 0.7: stop after the third.
    assert draft_length(parse_stop_rule("prod<0.7"), 5, p, H) == 3
    assert draft_length(parse_stop_rule("prod<0.75"), 5, p, H) == 2      # 0.72 < 0.75
    assert draft_length(parse_stop_rule("H>2"), 5, p, H) == 3
    assert draft_length(parse_stop_rule("H>2.7"), 5, p, H) == 5
    assert draft_length(parse_stop_rule("none"), 4, p, H) == 4
    # Past the given confidences (the end of a trace) a rule does not stop.
    assert draft_length(parse_stop_rule("p<0.6"), 5, p[:2], H[:2]) == 5
    assert draft_length(parse_stop_rule("p<0.95"), 0, p, H) == 0
