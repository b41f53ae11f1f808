"""The `lede` command line. Each subcommand is a thin shell over a library function."""

from __future__ import annotations

import statistics
import time
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="LEDE gym: self-speculative decoding on a real Llama model as an RL problem.")


def _setup(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


@app.command()
def demo(model: str = typer.Option("smollm2-135m", help="Model name or local Llama directory."),
         prompts: str = typer.Option("mixed:test", help="Prompt set (and split) or a .jsonl file."),
         n: int = typer.Option(3, help="How many prompts."),
         max_new_tokens: int = typer.Option(96),
         exit_layer: Optional[int] = typer.Option(None, help="Exit layer L (default: the model's default)."),
         k: Optional[int] = typer.Option(None, help="Speculation length k (default: the model's default)."),
         heads: str = typer.Option("default", help="Exit heads: 'default', 'identity' or a path."),
         chat_template: bool = typer.Option(True),
         threads: int = typer.Option(2),
         path: str = typer.Option("auto", help="Execution path: auto, eager, fast, fast-invariant, fast-bf16."),
         color: bool = typer.Option(True)) -> None:
    """Generate from a few prompts with plain greedy and with self-speculative decoding, side by side."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from lede_env.defaults import default_static_action, resolve_exit_heads
    from lede_env.engine.profile import heads_label
    from lede_env.engine.decoder import SelfSpeculativeDecoder
    from lede_env.models import load_model
    from lede_env.prompts import encode_prompt, load_prompts
    from lede_env.render import LEGEND, mark_text, token_kinds, token_pieces

    _setup(threads)
    console = Console(highlight=False, width=max(100, Console().width))
    mdl, tok = load_model(model)
    exit_heads = resolve_exit_heads(heads, model, mdl)
    L0, k0 = default_static_action(model, exit_heads)
    L, kk = exit_layer if exit_layer is not None else L0, k if k is not None else k0
    dec = SelfSpeculativeDecoder(mdl, exit_heads=exit_heads, eos_token_id=tok.eos_token_id, path=path)
    rows = []
    console.print(f"[bold]{model}[/], exit heads: {heads_label(exit_heads)}, "
                  f"self-speculative setting L={L}, k={kk}, {threads} threads, path {dec.path} (both rows).  "
                  f"{LEGEND}\n")
    dec.generate(encode_prompt(tok, "Hello", chat_template), 4)  # warm-up
    for p in load_prompts(prompts)[:n]:
        ids = encode_prompt(tok, p.text, chat_template)
        t0 = time.perf_counter()
        ref, _ = dec.generate(ids, max_new_tokens)
        t_ar = time.perf_counter() - t0
        t0 = time.perf_counter()
        out, steps = dec.generate(ids, max_new_tokens, exit_layer=L, k=kk)
        t_sp = time.perf_counter() - t0
        kinds = ["first"] + token_kinds((s.drafted, s.accepted, s.produced) for s in steps)
        console.print(f"[bold]Prompt[/] ({p.id}): {p.text[:200]}")
        console.print(Text.from_ansi(mark_text(token_pieces(tok, out), kinds, color=color)))
        console.print()
        acc = sum(s.accepted for s in steps) / max(1, sum(s.drafted for s in steps))
        rows.append((p.id, len(ref) / t_ar, len(out) / t_sp, out == ref, acc, len(out) / max(1, len(steps))))
    table = Table(title="plain greedy vs self-speculative decoding (same run)")
    for col in ("prompt", "greedy tok/s", "self-spec tok/s", "speedup", "exact", "acceptance", "tokens/step"):
        table.add_column(col)
    for pid, ar, sp, exact, acc, tps in rows:
        table.add_row(pid, f"{ar:.1f}", f"{sp:.1f}", f"{sp / ar:.2f}x", str(exact), f"{acc:.2f}", f"{tps:.2f}")
    med = statistics.median(r[2] / r[1] for r in rows)
    table.add_row("median", f"{statistics.median(r[1] for r in rows):.1f}",
                  f"{statistics.median(r[2] for r in rows):.1f}", f"{med:.2f}x", str(all(r[3] for r in rows)), "", "")
    console.print(table)
    if not all(r[3] for r in rows):
        raise typer.Exit(1)


@app.command()
def profile(model: str = typer.Option("smollm2-135m"), dtype: str = typer.Option("float32"),
            threads: int = typer.Option(2), heads: str = typer.Option("default"),
            exit_layers: str = typer.Option("all", help="Comma-separated exit layers, or 'all' (the heads' layers)."),
            max_verify: int = typer.Option(13), repeats: int = typer.Option(25),
            path: str = typer.Option("auto", help="Execution path: auto, eager, fast, fast-invariant, fast-bf16."),
            out: Optional[str] = typer.Option(None, help="Output JSON (default: $LEDE_HOME/profiles/<key>.json).")
            ) -> None:
    """Measure the latency profile (draft cost per exit layer, verification cost per length)."""
    from lede_env.defaults import resolve_exit_heads
    from lede_env.engine.decoder import SelfSpeculativeDecoder
    from lede_env.engine.profile import measure_profile
    from lede_env.models import load_model

    _setup(threads)
    mdl, tok = load_model(model, dtype=dtype)
    exit_heads = resolve_exit_heads(heads, model, mdl)
    N = mdl.config.num_hidden_layers
    if exit_layers == "all":   # every layer the heads cover (every exit for identity heads)
        layers = list(getattr(exit_heads, "layers", ()) or range(1, N))
    else:
        layers = [int(x) for x in exit_layers.split(",")]
    dec = SelfSpeculativeDecoder(mdl, exit_heads=exit_heads, eos_token_id=[], path=path)
    prof = measure_profile(dec, model, layers, max_verify=max_verify, repeats=repeats)
    path = prof.save(out)
    typer.echo(f"path {prof.path}, heads {prof.exit_heads}")
    typer.echo(f"plain AR step {prof.c_ar * 1e3:.2f} ms; per layer {prof.layer_cost[0] * 1e3:.3f} ms; "
               f"LM head {prof.head_cost[0] * 1e3:.2f} ms; verify 13/1 = {prof.verify_cost[-1] / prof.verify_cost[0]:.2f}")
    typer.echo("draft ms/token: " + ", ".join(f"L{L}={c * 1e3:.1f}" for L, c in prof.draft_cost.items()))
    typer.echo(f"saved {path}")


@app.command()
def trace(model: str = typer.Option("smollm2-135m"), prompts: str = typer.Option("mixed:train"),
          out: str = typer.Option(..., help="Output .npz path."),
          limit: Optional[int] = typer.Option(None, help="Only the first N prompts of the set."),
          max_new_tokens: int = typer.Option(128), heads: str = typer.Option("default"),
          exit_layers: Optional[str] = typer.Option(None, help="Comma-separated (default: the env's default)."),
          probe_layers: Optional[str] = typer.Option(None, help="Comma-separated (default: the env's default)."),
          chat_template: bool = typer.Option(True), dtype: str = typer.Option("float32"),
          threads: int = typer.Option(2)) -> None:
    """Record replay traces: each prompt's greedy continuation with every exit layer's prediction."""
    from lede_env.record import record_traces_for

    _setup(threads)
    parse = lambda s: tuple(int(x) for x in s.split(",")) if s else None  # noqa: E731
    ts, path = record_traces_for(model=model, prompts=prompts, out=out, limit=limit, max_new_tokens=max_new_tokens,
                                 heads=heads, exit_layers=parse(exit_layers), probe_layers=parse(probe_layers),
                                 chat_template=chat_template, dtype=dtype)
    n = sum(t.length for t in ts.traces)
    typer.echo(f"recorded {len(ts)} traces, {n} tokens -> {path}")


@app.command()
def oracle(traces: str = typer.Option(..., help="Trace file from `lede trace`."),
           lam: float = typer.Option(1.0), threads: int = typer.Option(2),
           spec_lengths: str = typer.Option("0,1,2,3,4,5,6,7,8,9,10,11,12"),
           profile: Optional[str] = typer.Option(None, help="Latency profile JSON (default: the stored one)."),
           path: str = typer.Option("auto", help="Execution path whose stored profile prices the steps.")) -> None:
    """Oracle (hindsight DP) and best static speedups on a trace file, with the stored latency profile."""
    from lede_env.analysis import oracle_report

    oracle_report(traces, spec_lengths=tuple(int(x) for x in spec_lengths.split(",")), lam=lam, threads=threads,
                  profile=profile, engine_path=path)


@app.command()
def collect(recipe: str = typer.Option(..., help="Recipe TOML (datasets/*.toml)."),
            overwrite: bool = typer.Option(False, help="Replace an existing dataset with the same id.")) -> None:
    """Collect a Minari dataset of LEDE-v0 from a recipe (see datasets/README.md)."""
    from agents.behaviour import collect_from_recipe

    try:
        collect_from_recipe(recipe, overwrite=overwrite)
    except FileExistsError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        raise typer.Exit(130)


@app.command("fit-heads")
def fit_heads(model: str = typer.Option("smollm2-135m", help="Model name or local Llama directory."),
              kinds: str = typer.Option("ridge,kl", help="Comma-separated head kinds: ridge, kl, kl-mlp."),
              layers: str = typer.Option("4,6,8,10,12,14,16,18,20,22,24,26,28",
                                         help="Comma-separated exit layers."),
              train_prompts: str = typer.Option("mixed:train,humaneval:train"),
              test_prompts: str = typer.Option("mixed:test,humaneval:test"),
              positions: int = typer.Option(30000, help="Training positions (tokens of self-generated text)."),
              max_new_tokens: int = typer.Option(128), kl_epochs: int = typer.Option(4),
              out: Optional[str] = typer.Option(None, help="Output folder (default: $LEDE_HOME/heads/<model>)."),
              cache_dir: Optional[str] = typer.Option(None, help="Keep the generated text here for reruns."),
              threads: int = typer.Option(2)) -> None:
    """Fit exit heads by self-distillation on the TRAIN prompts; report held-out agreement on the TEST prompts."""
    from pathlib import Path

    from lede_env.engine.fit_heads import fit_heads_report
    from lede_env.paths import artifacts_dir

    _setup(threads)
    folder = Path(out) if out else artifacts_dir() / "heads" / model.replace("/", "-")
    fit_heads_report(out=folder, model_name=model, kinds=[k.strip() for k in kinds.split(",") if k.strip()],
                     layers=[int(x) for x in layers.split(",")], train_prompts=train_prompts,
                     test_prompts=test_prompts, n_positions=positions, max_new_tokens=max_new_tokens,
                     kl_epochs=kl_epochs, threads=threads, cache_dir=cache_dir, echo=typer.echo)


@app.command("bench-engine")
def bench_engine(threads: int = typer.Option(2), n: int = typer.Option(4), max_new_tokens: int = typer.Option(64),
                 heads: str = typer.Option("default", help="'default', 'identity' or a path."),
                 path: str = typer.Option("auto", help="Execution path: auto, eager, fast, fast-invariant, fast-bf16.")) -> None:
    """Engine benchmark on SmolLM2: plain greedy vs model.generate, and a static (L, k) grid."""
    from lede_env.bench_engine import run

    _setup(threads)
    run(n_prompts=n, max_new_tokens=max_new_tokens, heads=heads, path=path)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
