"""Offline datasets of ``LEDE-v0`` in Minari: recipes, collection, loading for training (DESIGN.md section 3).

One module per job: `recipe` (the `Recipe` schema), `ids` (dataset ids), `publish` (atomic publishing, temporary
folders, stale cleanup), `metadata` (what a dataset says about itself), `collection` (`collect`, with the project's
one episode loop `lede_env.rollout.rollout`), `load` (`OfflineData`, `load_offline_arrays`, `check_compatible`,
`recompute_rewards`). This package imports no agent, no torch and no transformers: a replay-backend collection runs
without the model code.

Dataset ids follow Minari's convention ``lede/<model>-<promptset>/<behaviour>-v<N>``, for example
``lede/smollm2-135m-mixed-train/mixture-v0``. Datasets go to ``$MINARI_DATASETS_PATH`` (Minari's default
``~/.minari/datasets`` otherwise); ``minari list local`` and ``minari show <id>`` list and describe them.

Recipes
-------
A recipe (`Recipe`, one small TOML file under ``datasets/`` at the top of the repository) fixes everything a
dataset depends on: the environment's arguments (``[env]``, passed to ``gym.make(env_id, **env)``), the
behaviour policy (``[behaviour]``), the number of episodes and the seed. Collection is seeded (per-episode reset
seeds and the behaviour's generators are children of ``seed``: `Recipe.episode_seeds`, `Recipe.behaviour_seed`),
so a recipe rebuilds its dataset exactly with one command (``lede collect --recipe datasets/<recipe>.toml``),
except the measured costs of a wall-clock environment.

Layering: this module knows no agent. It stores the ``[behaviour]`` table as metadata without interpreting it,
and `collect` takes an already-built policy (any object with the stable-baselines3 ``predict``). Building the
behaviour agent of a recipe and collecting with it is `agents.behaviour` (``collect_from_recipe``,
``collect_recipe``), which is what ``lede collect`` runs.

What is stored
--------------
Per episode (Minari's layout): observations ``[T+1, D]`` float32, actions ``[T, 2]`` int64 (``MultiDiscrete``
indices ``[exit index, length index]``), rewards ``[T]`` float64, terminations, truncations, and ``infos``
(``[T+1]`` each, row 0 from ``reset``): ``prompt_index`` (index in the environment's prompt or trace set),
``tokens``, ``accepted``, ``drafted``, ``cost`` and ``c_ar``; wall-clock environments add ``wall_time`` and
``prefill_time``. The step's exit layer and ``k`` follow from the action and the action lists, the position
from the running sum of ``tokens``: Minari's HDF5 writer spends ~2.5 KB per array per episode, so derivable
keys are left out. Episode metadata: the reset ``seed`` and ``behaviour_component`` (the mixture component
that acted, -1 for other behaviours). The reward is recomputable for any ``lam``::

    r = tokens - lam * cost / c_ar        (infos rows 1..T; `recompute_rewards`, `OfflineData.rewards_for`)

Dataset metadata: Minari's standard fields (author, description, algorithm name = the behaviour policy, code
permalink, requirements, env and eval env specs) plus ``model``, ``dtype``, ``exit_heads``, ``prompt_set``,
``prompt_split``, ``backend``, ``traces`` (and its sha256), ``exit_layers``, ``spec_lengths``,
``observation_layout``, ``cost_model``, ``cost_table`` (profile costs), ``c_ar``, ``lam``, ``reward``,
``behaviour`` (the spec), ``seed``, ``recipe`` and the ``lede_version``.

Why ``minari.create_dataset_from_buffers`` and not ``minari.DataCollector``
-----------------------------------------------------------------------
``DataCollector`` needs the ``minari[create]`` extra, which pulls jax (~525 MB) just to append steps to
Python lists; and its ``create_dataset`` first creates the dataset folder under the id, then moves the files
into it one by one, so an interruption there leaves an empty or half-filled dataset under the id (and a killed
run leaves a visible ``tmp*`` folder in the datasets root). Building our own `minari.data_collector.EpisodeBuffer` per episode (plain
numpy, no jax) and writing them with ``create_dataset_from_buffers`` / ``update_dataset_from_buffer`` lets the
collector control atomicity: everything is written under a hidden temporary ``MINARI_DATASETS_PATH``
(``<root>/.lede-partial-<host>-<pid>-<hex>``, same file system, invisible to ``minari list``) and moved into
place with one ``os.rename`` at the end. An interrupted collection (Ctrl-C, exception, crash) therefore leaves
either the complete dataset or nothing under the id; temporary folders of dead processes are removed by the
next collection. One Ctrl-C always stops a collection (`lede_env.datasets.collection`).
"""

from lede_env.datasets.collection import collect
from lede_env.datasets.ids import dataset_id_for
from lede_env.datasets.load import (DatasetMismatchError, OfflineData, check_compatible, load_offline_arrays,
                                    recompute_rewards)
from lede_env.datasets.metadata import INFO_KEYS, LEDE_DATASET_FORMAT, REWARD_DEFINITION
from lede_env.datasets.publish import check_writable
from lede_env.datasets.recipe import Recipe

__all__ = ["Recipe", "collect", "check_writable", "load_offline_arrays", "OfflineData",
           "DatasetMismatchError", "recompute_rewards", "dataset_id_for", "check_compatible", "INFO_KEYS",
           "REWARD_DEFINITION", "LEDE_DATASET_FORMAT"]
