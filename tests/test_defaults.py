"""The shipped traces (lede_env/data/traces, `lede_env.defaults.shipped_traces`): one file per prompt set and split
for the default model and heads, recorded with `lede trace`, checked against the shipped heads."""

import json

import numpy as np
import pytest

from lede_env import defaults
from lede_env.defaults import heads_sha256, shipped_traces
from lede_env.prompts import load_prompts
from lede_env.traces import TraceSet

SPLITS = ["mixed:train", "mixed:test", "humaneval:train", "humaneval:test"]
TRAIN_PROMPTS = {"mixed:train": 30, "humaneval:train": 16}   # the Makefile's `traces` --limit for the train splits


@pytest.mark.parametrize("prompts", SPLITS)
def test_shipped_traces_cover_the_split_with_these_heads(prompts):
    """Test splits whole; train splits their first prompts (`make traces`)."""
    ts = TraceSet.load(shipped_traces(prompts))
    ids = [p.id for p in load_prompts(prompts)]
    assert ts.meta["prompt_ids"] == ids[:TRAIN_PROMPTS.get(prompts, len(ids))]
    assert ts.meta["model"] == "smollm2-135m" and ts.meta["exit_heads"] == "eagle+vocab"
    assert ts.meta["exit_heads_sha256"] == heads_sha256("default", "smollm2-135m")
    assert all(t.has_entropy and t.has_first for t in ts.traces) and ts.meta["max_new_tokens"] == 128


def test_shipped_traces_refuse_other_heads_and_missing_files(tmp_path, monkeypatch):
    src = shipped_traces("mixed:test")
    with np.load(src) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(bytes(arrays["__meta__"]).decode())
    meta["exit_heads_sha256"] = "0" * 64
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez_compressed(tmp_path / src.name, **arrays)
    monkeypatch.setattr(defaults, "SHIPPED_TRACES", tmp_path)
    with pytest.raises(ValueError, match="other exit heads.*make traces"):
        shipped_traces("mixed:test")
    with pytest.raises(FileNotFoundError, match="lede trace"):
        shipped_traces("humaneval:test")
    with pytest.raises(ValueError, match="per split"):
        shipped_traces("mixed")
    with pytest.raises(ValueError, match="default exit heads"):
        shipped_traces("mixed:test", heads="identity")
