"""agents.zoo: names, the context fitted on training traces, the best fixed exit."""

import numpy as np
import pytest

from agents.zoo import ZOO, ZooContext, build, needs_stop_rules
from tests.agents.synthetic import make_env, synthetic_trace, write_replay_files


def test_best_fixed_exit_is_speculative_even_when_drafting_does_not_pay(tmp_path):
    rng = np.random.default_rng(0)
    agree = np.zeros((39, 3), dtype=bool)
    agree[:, 1] = rng.random(39) < 0.3          # only exit 4 ever agrees, and too rarely to pay
    files = write_replay_files(tmp_path, [synthetic_trace(i, 40, (0, 0, 0), rng, agree=agree) for i in range(3)])
    env = make_env(files, stop_rules="default")
    ctx = ZooContext.from_traces(env, files["traces"])
    assert ctx.best_static.k == 0                                   # autoregressive wins the full grid
    assert ctx.best_speculative.k >= 1 and ctx.best_exit == ctx.best_speculative.exit_layer == 4
    assert build("best-static", env, ctx).k == 0
    assert build("specdec++", env, ctx).exit_layer == 4             # drafts at the best speculative exit
    with pytest.raises(ValueError, match="best fixed exit"):
        build("specdec++", env)                                     # no training traces


def test_zoo_names():
    assert ZOO[0] == "autoregressive" and ZOO[-1] == "oracle" and len(set(ZOO)) == len(ZOO)
    assert needs_stop_rules("kangaroo") and not needs_stop_rules("best-static")
    with pytest.raises(ValueError, match="registered kinds"):
        build("magic", None)
