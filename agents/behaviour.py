"""Dataset recipes with their behaviour agents: the ``[behaviour]`` table of a recipe (`lede_env.datasets.Recipe`)
-> an agent of `agents.baselines`, and the collection of a recipe's dataset with it (what ``lede collect`` runs).

`lede_env.datasets` stores the behaviour table without interpreting it and collects with any policy it is
given; this module is the one place that turns a recipe into a policy::

    from agents.behaviour import collect_from_recipe
    collect_from_recipe("datasets/smollm2-mixed-train-mixture.toml", overwrite=False)

The behaviour agent is seeded with `Recipe.behaviour_seed` (a child of the recipe's ``seed``), so a recipe
rebuilds its dataset exactly.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym

from agents.base import Agent
from agents.baselines import behaviour_name, check_behaviour_spec, make_behaviour
from lede_env.datasets import Recipe, collect

__all__ = ["check_recipe", "load_recipe", "make_recipe_behaviour", "collect_recipe", "collect_from_recipe"]


def check_recipe(recipe: Recipe) -> Recipe:
    """``recipe`` with its behaviour spec validated and normalised (`agents.baselines.check_behaviour_spec`:
    canonical kinds, typed numbers, mixture weights); ``ValueError`` names the problem."""
    spec = check_behaviour_spec(recipe.behaviour)
    return recipe if spec == recipe.behaviour else recipe.with_behaviour(spec)


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe TOML (`Recipe.from_toml`) and check its behaviour."""
    return check_recipe(Recipe.from_toml(path))


def make_recipe_behaviour(recipe: Recipe, env: gym.Env) -> Agent:
    """The recipe's behaviour agent for ``env`` (the recipe's environment), seeded with `Recipe.behaviour_seed`."""
    return make_behaviour(recipe.behaviour, env, seed=recipe.behaviour_seed)


def collect_recipe(recipe: Recipe, overwrite: bool = False, progress: bool = True, agent=None,
                   ray: str | None = None, workers: int = 2, threads: int | None = None):
    """Collect the recipe's dataset (`lede_env.datasets.collect`) with its behaviour agent and return it.

    ``agent``: act with this policy instead (the recipe's behaviour still names the dataset unless its ``name``
    or ``dataset_id`` do); the result is then only as reproducible as that agent. ``overwrite`` and
    ``progress`` as in `lede_env.datasets.collect`, which checks the dataset id before it makes the environment
    when it can (a live backend's, or an explicit ``dataset_id``) and before it builds the behaviour agent.
    ``ray``, ``workers``, ``threads``: collect on Ray workers (`lede_env.datasets.collect`; the recipe needs
    ``behaviour_seeding = "episode"``), each building the environment and the behaviour once.
    """
    recipe = check_recipe(recipe)
    _check_before_env(recipe)
    if agent is None:
        agent = lambda env: make_recipe_behaviour(recipe, env)   # noqa: E731  (built once the id is checked)
    return collect(recipe, agent, name=behaviour_name(recipe.behaviour), overwrite=overwrite, progress=progress,
                   ray=ray, workers=workers, threads=threads)


def _kinds(spec: dict) -> set[str]:
    return {spec.get("kind")} | set().union(*(_kinds(c) for c in spec.get("components", ())))


def _check_before_env(recipe: Recipe) -> None:
    """What can be refused before the environment is made (a live one loads the model, 30-70 s) and that
    `lede_env.datasets.collect` cannot know (it does not interpret the behaviour): an oracle behaviour without the
    replay backend."""
    if recipe.env_config.backend != "replay" and "oracle" in _kinds(recipe.behaviour):
        raise ValueError("The recipe's behaviour uses the oracle, which needs the replay backend (a trace per "
                         "prompt): set backend = 'replay' and traces = ... in its [env].")


def collect_from_recipe(path: str | Path, overwrite: bool = False, progress: bool = True):
    """`collect_recipe` the recipe in the TOML file ``path``."""
    return collect_recipe(load_recipe(path), overwrite=overwrite, progress=progress)
