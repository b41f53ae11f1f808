"""Dataset ids: Minari's ``namespace/name-v<N>`` form, and the default id of a recipe's dataset,
``lede/<model>-<promptset>[-<split>]/<behaviour>-v<version>``."""

from __future__ import annotations

import os
import re
from pathlib import Path

import gymnasium as gym

__all__ = ["dataset_id_for", "dataset_id_from", "check_dataset_id", "NAME_RE"]

NAME_RE = re.compile(r"[-_\w]+")


def check_dataset_id(dataset_id: str) -> None:
    """``ValueError`` unless ``dataset_id`` has Minari's form ``namespace/name-v<N>``."""
    from minari.dataset.minari_dataset import DATASET_ID_RE

    m = DATASET_ID_RE.fullmatch(dataset_id) if isinstance(dataset_id, str) else None
    if not m or m.group("version") is None:
        raise ValueError(f"Malformed dataset id {dataset_id!r}: use Minari's form namespace/name-v<N>, e.g. "
                         "'lede/smollm2-135m-mixed-train/random-v0'.")


def _slug(text: str) -> str:
    return re.sub(r"[^-\w]+", "-", text).strip("-") or "x"


def source_of(env: gym.Env) -> tuple[str, str, str | None]:
    """(model, prompt set, split) the environment's episodes come from (for replay: what the traces say)."""
    base = env.unwrapped
    if base.config.backend == "replay":
        model = str(base.trace_meta.get("model", base.config.model))
        prompts = str(base.trace_meta.get("prompts", "traces"))
    else:
        model, prompts = base.config.model, base.config.prompts
    return source_from(model, prompts)


def source_from(model: str, prompts: str) -> tuple[str, str, str | None]:
    """(model, prompt set, split) as dataset ids name them, from a model name or path and a prompt-set spec
    (``"mixed:train"``, a .jsonl path)."""
    model = Path(model).name if ("/" in model or os.sep in model) else model
    spec, split = prompts, None
    m = re.fullmatch(r"(.*):(train|test|all)", prompts)
    if m:
        spec, split = m.group(1), m.group(2)
    if spec.endswith(".jsonl") or "/" in spec:
        spec = Path(spec).stem
    return model, spec, split


def dataset_id_for(env: gym.Env, behaviour: str, version: int = 0) -> str:
    """``lede/<model>-<promptset>[-<split>]/<behaviour>-v<version>`` (characters Minari does not allow become
    ``-``)."""
    return _dataset_id(source_of(env), behaviour, version)


def dataset_id_from(model: str, prompts: str, behaviour: str, version: int = 0) -> str:
    """`dataset_id_for` from the model and prompt set alone (a live environment's, known before it is made)."""
    return _dataset_id(source_from(model, prompts), behaviour, version)


def _dataset_id(source: tuple[str, str, str | None], behaviour: str, version: int) -> str:
    model, prompts, split = source
    name = _slug(f"{model}-{prompts}" + (f"-{split}" if split else ""))
    dataset_id = f"lede/{name}/{_slug(behaviour)}-v{int(version)}"
    check_dataset_id(dataset_id)
    return dataset_id
