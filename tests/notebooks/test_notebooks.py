"""The notebooks (notebooks/*.ipynb): each is stored without outputs, is in sync with its percent-format `.py` twin
(jupytext), and runs top to bottom on small settings (``LEDE_NOTEBOOK_QUICK=1``) with every plot drawn. They read the
real model's traces, tokenizer and agents, so their runs are slow tests (still in CI)."""

from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_there_are_the_four_notebooks():
    assert NAMES == ["01_quickstart", "02_where_speculation_pays", "03_policy_at_work", "04_results"]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_without_outputs_and_matches_its_py_twin(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    twin = NOTEBOOKS / f"{name}.py"
    assert twin.is_file(), f"{name}.ipynb has no percent-format twin {twin.name}: jupytext --to py:percent"
    assert _cells(nb) == _cells(jupytext.read(twin)), (
        f"{name}.ipynb and {twin.name} differ: edit the .py and run `jupytext --sync notebooks/{twin.name}`")
    for c in nb.cells:
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None, f"{name}.ipynb is stored with outputs: clear them"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom_on_small_settings(name, tmp_path, monkeypatch):
    monkeypatch.setenv("LEDE_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("LEDE_NOTEBOOK_ARTEFACTS", str(tmp_path / "artefacts"))
    monkeypatch.setenv("LEDE_BENCH_RESULTS", str(tmp_path / "bench"))     # 04 runs its own small bench here
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()   # raises on a failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, f"{name} drew {len(images)} plots"
