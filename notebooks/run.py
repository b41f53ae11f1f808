"""Execute the notebooks top to bottom and write the executed copies, outputs included, to results/notebooks/
(``make notebooks``; ``--quick`` runs them on CI's small settings). The stored notebooks stay without outputs.

    .venv/bin/python notebooks/run.py [--quick] [NAME ...]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "results" / "notebooks"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="notebook names (default: all), e.g. 01_quickstart")
    ap.add_argument("--quick", action="store_true", help="small settings (LEDE_NOTEBOOK_QUICK=1)")
    args = ap.parse_args()
    names = args.names or sorted(p.stem for p in HERE.glob("*.ipynb"))
    missing = [n for n in names if not (HERE / f"{n}.ipynb").is_file()]
    if missing:
        raise SystemExit(f"No notebook {missing} in {HERE}: choose from "
                         f"{sorted(p.stem for p in HERE.glob('*.ipynb'))}.")
    if args.quick:
        os.environ["LEDE_NOTEBOOK_QUICK"] = "1"
    OUT.mkdir(parents=True, exist_ok=True)
    for name in tqdm(names, desc="notebooks", unit="nb"):
        nb = nbformat.read(HERE / f"{name}.ipynb", as_version=4)
        start = time.time()
        NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
        tmp = OUT / f".{name}.ipynb.partial"
        nbformat.write(nb, tmp)
        tmp.replace(OUT / f"{name}.ipynb")              # a complete executed copy or none
        tqdm.write(f"{name}: {time.time() - start:.0f} s -> {OUT / f'{name}.ipynb'}")


if __name__ == "__main__":
    main()
