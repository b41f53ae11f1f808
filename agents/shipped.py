"""The trained agents that come with the package, by name: `SHIPPED` maps a name to its folder under
``lede_env/data/agents`` (SmolLM2, default exit heads, the environment's default lists). `agents.load(name, env)` and
`lede evaluate --agents <name>` / `lede bench --agents <name>` read them.

``lede-default`` (alias ``lede``)
    the LEDE agent: discrete CQL with the factored exit-then-length head, trained offline on the Minari dataset of
    ``datasets/smollm2-mixed-train-lede.toml`` (`agents.train_lede`).
``sb3-default`` (alias ``sb3``)
    the best stable-baselines3 agent on the held-out training prompts: A2C trained online on the mixed:train traces
    (`agents.train_sb3`; its ``training.json`` holds the held-out scores of A2C, PPO and DQN it was chosen from).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SHIPPED", "ALIASES", "is_shipped", "shipped_folder"]

SHIPPED = {"lede-default": "smollm2-135m_lede-default", "sb3-default": "smollm2-135m_sb3-default"}
ALIASES = {"lede": "lede-default", "sb3": "sb3-default"}     # short names (`lede evaluate --agents lede`)


def is_shipped(name: str) -> bool:
    """Whether ``name`` names a shipped agent (`SHIPPED` or an alias)."""
    return str(name) in SHIPPED or str(name) in ALIASES


def shipped_folder(name: str) -> Path:
    """The folder of the shipped agent ``name`` (one of `SHIPPED`, or an alias of `ALIASES`)."""
    name = ALIASES.get(str(name), str(name))
    if name not in SHIPPED:
        raise ValueError(f"No shipped agent {name!r}: the shipped agents are {sorted(SHIPPED)} "
                         f"(aliases {sorted(ALIASES)}).")
    from lede_env.paths import PACKAGE_DATA

    return PACKAGE_DATA / "agents" / SHIPPED[name]
