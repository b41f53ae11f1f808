"""Agents for LEDE gym, all with the stable-baselines3 ``predict(obs, state, episode_start, deterministic)``
signature (`agents.base.Agent`). Baselines and behaviour policies: `agents.baselines`; a dataset recipe's behaviour
agent and its collection (``lede collect``): `agents.behaviour`."""

from agents.base import ActionLists, Agent, action_lists
from agents.baselines import (AutoregressiveAgent, EpsilonOracleAgent, MixtureAgent, RandomAgent, StaticAgent,
                              behaviour_name, check_behaviour_spec, make_behaviour)

__all__ = ["Agent", "ActionLists", "action_lists", "RandomAgent", "AutoregressiveAgent", "StaticAgent",
           "EpsilonOracleAgent", "MixtureAgent", "make_behaviour", "check_behaviour_spec", "behaviour_name"]
