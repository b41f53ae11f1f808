"""stable-baselines3 agents (agents.sb3, agents.train_sb3): each algorithm trains end to end on the replay backend,
round-trips through the registry with the same actions, and plays in `lede evaluate`; `lede train` checks its
arguments."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import agents
from agents.base import AgentFileError
from agents.sb3 import ALGOS, SB3Agent
from agents.train_sb3 import Args, train
from lede_env.cli import app
from tests.agents.synthetic import SPEC, make_env, synthetic_trace, write_replay_files


def extra(files) -> dict:
    """The synthetic profile and lengths: the env arguments besides the traces."""
    return {"profile": files["profile"], "spec_lengths": list(SPEC)}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    rng = np.random.default_rng(5)
    return write_replay_files(tmp_path_factory.mktemp("sb3"), [synthetic_trace(i, 30, (0.2, 0.5, 0.9), rng)
                                                                for i in range(5)])


@pytest.mark.parametrize("algo", ALGOS)
def test_training_round_trip_and_evaluation(files, algo, tmp_path):
    out = tmp_path / algo
    folder = train(Args(algo=algo, traces=files["traces"], out=str(out), timesteps=300, heldout=2, eval_every=150,
                        progress=False, env_kwargs=extra(files)))
    log = json.loads((folder / "training.json").read_text())
    assert log["evaluations"] and all(np.isfinite(e["speedup"]) for e in log["evaluations"])
    assert (tmp_path / f"{algo}.checkpoints").is_dir()
    env = make_env(files)
    loaded = agents.load(folder, env)
    assert isinstance(loaded, SB3Agent) and loaded.algo == algo
    assert loaded.trained["heldout_prompts"] == [3, 4] and loaded.trained["train_prompts"] == [0, 1, 2]
    again = agents.load(folder, env)
    obs = np.random.default_rng(0).random((20, env.observation_space.shape[0])).astype(np.float32)
    acts = loaded.predict(obs)[0]
    assert acts.shape == (20, 2) and all(env.action_space.contains(a) for a in acts)
    assert np.array_equal(acts, again.predict(obs)[0])
    assert np.array_equal(loaded.predict(obs[3])[0], acts[3])
    with pytest.raises(AgentFileError, match="spec_lengths"):
        agents.load(folder, make_env(files, spec_lengths=(0, 1, 2)))


def test_saved_sb3_agent_in_lede_evaluate(files, tmp_path):
    from agents.evaluation import evaluate

    folder = train(Args(algo="ppo", traces=files["traces"], out=str(tmp_path / "ppo"), timesteps=200, heldout=1,
                        eval_every=0, progress=False, env_kwargs=extra(files)))
    result = evaluate([str(folder), "autoregressive"], ["synthetic:test"], traces=[files["traces"]],
                      train_traces=[files["traces"]], progress=False, env_kwargs={"profile": files["profile"],
                                                                                 "spec_lengths": [0, 1, 2, 3, 4]})
    labels = {row.agent for row in result.rows}
    assert labels == {"ppo", "autoregressive"}


def test_train_command_checks_its_arguments(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["train", "tree"])
    assert r.exit_code == 2 and "expected lede or one of" in r.output
    r = runner.invoke(app, ["train", "lede"])
    assert r.exit_code == 2 and "--dataset" in r.output
    r = runner.invoke(app, ["train", "lede", "--dataset", "x/y-v0", "--algo", "bcq"])
    assert r.exit_code == 2 and "algo" in r.output
    r = runner.invoke(app, ["train", "ppo", "--traces", "nowhere:train"])
    assert r.exit_code == 2 and "--traces" in r.output


def test_the_readme_custom_agent_snippet_runs(tmp_path, monkeypatch):
    """The README's "Your own agent" code, with fewer timesteps and a temporary folder: it trains, saves, and the
    saved agent loads and is scored by `lede evaluate`'s Python API."""
    import re
    from pathlib import Path

    from agents.evaluation import evaluate

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Your own agent", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "learn(50_000" in code and "artifacts/agents/my-qrdqn" in code
    code = code.replace("learn(50_000, progress_bar=True)", "learn(300)")
    code = code.replace("artifacts/agents/my-qrdqn", str(tmp_path / "my-qrdqn"))
    exec(compile(code, "README.md", "exec"), {})
    result = evaluate([str(tmp_path / "my-qrdqn")], ["mixed:test"], limit=2, progress=False)
    assert np.isfinite(result.rows[0].speedup)
