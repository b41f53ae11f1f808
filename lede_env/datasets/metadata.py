"""What a LEDE dataset says about itself: the info keys stored per step, the reward and action definitions, and
the dataset metadata (model, prompts, action lists, observation layout, cost model and table, ``lam``, behaviour,
recipe, code version). Listed in the package docstring."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym

from lede_env.datasets.ids import source_of

if TYPE_CHECKING:
    from lede_env.datasets.recipe import Recipe

__all__ = ["LEDE_DATASET_FORMAT", "INFO_KEYS", "WALLCLOCK_INFO_KEYS", "FLOAT_KEYS", "REWARD_DEFINITION",
           "ACTION_DEFINITION", "lede_metadata", "file_sha256", "info_keys", "env_version", "code_permalink", "requirements"]

LEDE_DATASET_FORMAT = 1
INFO_KEYS = ("prompt_index", "tokens", "accepted", "drafted", "cost", "c_ar")
WALLCLOCK_INFO_KEYS = ("wall_time", "prefill_time")
FLOAT_KEYS = {"cost", "c_ar", "wall_time", "prefill_time"}
REWARD_DEFINITION = ("r = tokens - lam * cost / c_ar, with tokens, cost (seconds, under the cost model) "
                     "and c_ar (cost of one plain autoregressive step) in infos rows 1..T; with lam = 1 the "
                     "return is the number of tokens saved versus autoregressive decoding.")
ACTION_DEFINITION = ("MultiDiscrete([J, K]): [index into exit_layers, index into spec_lengths] (k = 0: plain "
                     "autoregressive step); flat action j * K + kidx (lede_env.wrappers.FlattenAction). With stop "
                     "rules MultiDiscrete([J, K, S]), the third index into stop_rules; flat (j * K + kidx) * S + s.")


def code_permalink() -> str:
    """A link to the code that collected the data: the git commit (GitHub URL when the remote is GitHub),
    marked ``+dirty`` when the checkout has uncommitted changes; the package version without git."""
    from lede_env import __version__

    here = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return f"lede-gym {__version__}"
    try:
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        dirty = False
    try:
        remote = git("config", "--get", "remote.origin.url")
    except (OSError, subprocess.SubprocessError):
        remote = ""
    m = re.match(r"(?:https://github\.com/|git@github\.com:)([^/]+/[^/]+?)(?:\.git)?$", remote)
    link = f"https://github.com/{m.group(1)}/tree/{sha}" if m else f"lede-gym {__version__} git {sha}"
    return link + (" (+uncommitted changes)" if dirty else "")


def requirements() -> list[str]:
    from lede_env import __version__

    return [f"lede-gym=={__version__}", "gymnasium>=1.0,<2", "minari>=0.5,<0.6"]


def file_sha256(path: str | Path) -> str | None:
    """The sha256 of one file's content (None when there is no such file): what a dataset records of its traces."""
    p = Path(path)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def lede_metadata(env: gym.Env, recipe: "Recipe", agent, c_ar: float) -> dict:
    from lede_env import __version__

    base = env.unwrapped
    cfg = base.config
    model, prompts, split = source_of(env)
    spec = env.spec
    meta: dict[str, Any] = {
        "lede_format": LEDE_DATASET_FORMAT,
        "lede_version": __version__,
        "env_id": spec.id if spec else recipe.env_id,
        "env_version": env_version(spec.id if spec else recipe.env_id),
        "env_kwargs": recipe.env,
        "env_config": json.loads(json.dumps(dataclasses.asdict(cfg))),
        "model": model,
        "dtype": base.trace_meta.get("dtype", cfg.dtype) if cfg.backend == "replay" else cfg.dtype,
        "exit_heads": base.heads_kind,
        "num_layers": int(base.num_layers),
        "prompt_set": prompts,
        "prompt_split": split or "all",
        "prompts": base.trace_meta.get("prompts", cfg.prompts) if cfg.backend == "replay" else cfg.prompts,
        "backend": cfg.backend,
        "traces": cfg.traces,
        "traces_sha256": file_sha256(cfg.traces) if cfg.traces else None,
        "max_new_tokens": int(base.max_new_tokens),
        "exit_layers": list(base.exit_layers),
        "spec_lengths": list(cfg.spec_lengths),
        "stop_rules": None if base.stop_rules is None else list(base.stop_rules),
        "probe_layers": list(base.probe_layers),
        "action_definition": ACTION_DEFINITION,
        "observation_layout": base.layout.as_dict(),
        "cost_model": cfg.cost_model,
        "c_ar": float(c_ar),
        "lam": float(cfg.lam),
        "reward": REWARD_DEFINITION,
        "info_keys": list(info_keys(env)),
        "behaviour": agent.config() if hasattr(agent, "config") else recipe.behaviour,
        "behaviour_spec": recipe.behaviour,
        "seed": recipe.seed,
        "recipe": recipe.to_dict(),
    }
    if cfg.cost_model == "profile":
        prof = base.profile
        meta["profile"] = prof.key
        meta["cost_table"] = prof.cost_table(base.exit_layers, max(cfg.spec_lengths)).tolist()
    return meta


def env_version(env_id: str) -> int | None:
    return gym.envs.registration.parse_env_id(env_id)[2]


def info_keys(env: gym.Env) -> tuple[str, ...]:
    wall = env.unwrapped.config.cost_model == "wallclock"
    return INFO_KEYS + (WALLCLOCK_INFO_KEYS if wall else ())
