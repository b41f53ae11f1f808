"""Agents for LEDE gym, all with the stable-baselines3 ``predict(obs, state, episode_start, deterministic)``
signature (`agents.base.Agent`), saved with ``agent.save(folder)`` and rebuilt with ``agents.load(folder, env)``.

Families: `agents.baselines` (random, autoregressive, static, best static, mixtures), `agents.oracle` (the
hindsight ceiling, replay only), the published speculation heuristics (`agents.hf`, `agents.stopping`,
`agents.layer_choice`, `agents.bandit`), the learned agents (`agents.lede`, offline Q-learning trained by
`agents.train_lede`; `agents.sb3`, stable-baselines3 trained by `agents.train_sb3`); `agents.zoo` builds any of them by name; `agents.evaluation` scores them
side by side (``lede evaluate``); `agents.behaviour` turns a dataset recipe's behaviour into an agent and collects
its dataset (``lede collect``).
"""

from agents.base import KINDS, ActionLists, Agent, EnvSpec, action_lists, env_spec, load, register
from agents.baselines import (AutoregressiveAgent, BestStaticAgent, MixtureAgent, RandomAgent, StaticAgent,
                              behaviour_name, check_behaviour_spec, make_behaviour)
from agents.oracle import OracleAgent
from agents import bandit, hf, layer_choice, lede, sb3, stopping  # noqa: E402,F401  (register their kinds)

__all__ = ["Agent", "ActionLists", "EnvSpec", "action_lists", "env_spec", "load", "register", "KINDS",
           "RandomAgent", "AutoregressiveAgent", "StaticAgent", "BestStaticAgent", "OracleAgent", "MixtureAgent",
           "make_behaviour", "check_behaviour_spec", "behaviour_name"]
