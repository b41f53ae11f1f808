"""Engine benchmark: plain greedy tokens/s of our engine and of `model.generate`, and a grid of static
(L, k) settings with their speedup over plain greedy and mean tokens per step, all in one run on the same
prompts. Figures are medians over prompts; speedups are ratios measured in the same run."""

from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch
from rich.console import Console
from rich.table import Table
from tqdm import tqdm


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run(model_name: str = "smollm2-135m", n_prompts: int = 4, max_new_tokens: int = 64,
        exit_layers: Sequence[int] = (8, 12, 16, 20, 24, 28), spec_lengths: Sequence[int] = (1, 2, 4, 6),
        heads: str = "default", prompts: str = "mixed:test", path: str = "auto") -> dict:
    """Run the benchmark, print the tables, return the figures."""
    from lede_env.wiring import build_decoder

    console = Console(highlight=False)
    setup = build_decoder(model_name, heads=heads, path=path)
    model, dec = setup.model, setup.decoder
    ids = setup.encode(prompts, limit=n_prompts)
    dec.generate(ids[0], 8)  # warm-up
    ar_tps, gen_tps, refs, eq = [], [], [], []
    for p in tqdm(ids, desc="plain greedy"):
        (out, _), t = _timed(lambda: dec.generate(p, max_new_tokens))
        ar_tps.append(len(out) / t)
        refs.append(out)
        g, t = _timed(lambda: model.generate(torch.tensor([p]), max_new_tokens=max_new_tokens, do_sample=False))
        gen_tps.append((g.shape[1] - len(p)) / t)
        eq.append(g[0, len(p):].tolist() == out)
    grid = {}
    combos = [(L, k) for L in exit_layers for k in spec_lengths]
    for L, k in tqdm(combos, desc="static grid"):
        speedups, tps, exact = [], [], True
        for p, ref, ar in zip(ids, refs, ar_tps):
            (out, steps), t = _timed(lambda: dec.generate(p, max_new_tokens, exit_layer=L, k=k))
            exact &= out == ref
            speedups.append(len(out) / t / ar)
            tps.append(len(out) / len(steps) if steps else 1.0)
        grid[(L, k)] = (statistics.median(speedups), statistics.mean(tps), exact)
    console.print(f"[bold]{model_name}[/], {torch.get_num_threads()} threads, exit heads "
                  f"{setup.heads_label}, path {dec.path}, {len(ids)} prompts x {max_new_tokens} new tokens")
    console.print(f"plain greedy, our engine:   {statistics.median(ar_tps):.1f} tokens/s (median)")
    console.print(f"plain greedy, model.generate: {statistics.median(gen_tps):.1f} tokens/s (median)")
    table = Table(title="static (L, k): speedup over plain greedy (median) / mean tokens per step")
    table.add_column("L \\ k")
    for k in spec_lengths:
        table.add_column(f"k={k}")
    for L in exit_layers:
        table.add_row(str(L), *[f"{grid[(L, k)][0]:.2f}x / {grid[(L, k)][1]:.2f}" + ("" if grid[(L, k)][2] else " !")
                                for k in spec_lengths])
    console.print(table)
    best = max(grid, key=lambda c: grid[c][0])
    console.print(f"best static: L={best[0]}, k={best[1]}: {grid[best][0]:.2f}x; all exact: "
                  f"{all(v[2] for v in grid.values())}")
    console.print(f"plain greedy output == model.generate on every prompt: {all(eq)}")
    return {"engine_tps": statistics.median(ar_tps), "generate_tps": statistics.median(gen_tps), "grid": grid}
