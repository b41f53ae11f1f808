"""The `lede` command line. Each subcommand is a thin shell over a library function.

Every command checks its arguments before any work starts (model loading takes 30-70 s, and the checks import no
torch): a bad argument is a usage error (exit code 2) that names the option. Expected failures during the work
(``ValueError``, any ``OSError``: a missing or existing file, a permission problem, a full disk, an HDF5 write error)
print their message alone, without a traceback, and exit with code 1;
Ctrl-C exits with code 130. Anything else is a bug and keeps its traceback. ``LEDE_DEBUG=1`` shows the traceback
of every error. All of it lives in one place, `LedeGroup.invoke`.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from lede_env.bench.run import DEFAULT_AGENTS as BENCH_AGENTS   # stdlib only: no model code at start-up

EXPECTED_ERRORS = (ValueError, OSError)


class LedeGroup(TyperGroup):
    """The `lede` group: expected errors print their message alone (module docstring); a bare ``--ray`` (no address
    after it) means ``--ray local``, a one-machine Ray cluster."""

    def parse_args(self, ctx, args):
        args = list(args)
        for i, a in enumerate(args):
            if a == "--":
                break
            if a == "--ray" and (i + 1 == len(args) or args[i + 1].startswith("-")):
                args.insert(i + 1, "local")
                break
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            if os.environ.get("LEDE_DEBUG") == "1":
                raise
            print("Interrupted.", file=sys.stderr)
            raise typer.Exit(130) from None
        except EXPECTED_ERRORS as e:
            if os.environ.get("LEDE_DEBUG") == "1":
                raise
            print(f"Error: {e}", file=sys.stderr)
            raise typer.Exit(1) from None


app = typer.Typer(cls=LedeGroup, add_completion=False, no_args_is_help=True,
                  help="LEDE gym: self-speculative decoding on a real Llama model as an RL problem.")


# ------------------------------------------------------------------------------------------ argument checks
@contextmanager
def _param(hint: str):
    """Turn an expected error of a check into a usage error for the option ``hint`` (exit code 2)."""
    try:
        yield
    except EXPECTED_ERRORS as e:
        raise typer.BadParameter(str(e), param_hint=hint) from None


@contextmanager
def _tagged_params():
    """Turn an error that names the argument it is about (``error.argument``, as `lede_env.record` raises them) into
    a usage error for that option; other errors pass."""
    try:
        yield
    except EXPECTED_ERRORS as e:
        name = getattr(e, "argument", None)
        if name is None:
            raise
        raise typer.BadParameter(str(e), param_hint="--" + name.replace("_", "-")) from None


def _check_model(model: str) -> None:
    from lede_env.paths import check_model_name   # no torch

    with _param("--model"):
        check_model_name(model)


def _check_prompts(spec: str, hint: str = "--prompts") -> list:
    from lede_env.prompts import load_prompts

    with _param(hint):
        return load_prompts(spec)


def _check_heads(heads: str) -> None:
    from lede_env.defaults import check_heads_spec   # no torch

    with _param("--heads"):
        check_heads_spec(heads)


def _check_dtype(dtype: str) -> None:
    from lede_env.models import _resolve_dtype

    with _param("--dtype"):
        _resolve_dtype(dtype)


def _check_path(path: str) -> None:
    from lede_env.engine.path_names import resolve_path   # no torch

    with _param("--path"):
        resolve_path(path)


def _layers(text: Optional[str], hint: str, allow_all: bool = False):
    """Comma-separated layer numbers (>= 1, distinct) as a tuple; None for None; "all" if allowed."""
    from lede_env.engine.limits import parse_layers

    if text is None or (allow_all and text == "all"):
        return text
    with _param(hint):
        return parse_layers(text, "layers")


def _lengths(text: str, hint: str = "--spec-lengths") -> tuple[int, ...]:
    from lede_env.analysis import check_spec_lengths

    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated lengths such as 0,1,2,3, got {text!r}.",
                                 param_hint=hint) from None
    with _param(hint):
        return check_spec_lengths(values)


def _check_file(path: Optional[str], hint: str, what: str) -> None:
    if path is not None and not Path(path).is_file():
        raise typer.BadParameter(f"no {what} at {path}.", param_hint=hint)


def _check_out_file(out: Optional[str], suffix: str, hint: str = "--out") -> None:
    """An output file: the right suffix, not a folder, in a folder that exists or can be made and is writable."""
    if out is None:
        return
    path = Path(out)
    with _param(hint):
        if path.suffix != suffix:
            raise ValueError(f"the file name must end with {suffix}, got {out!r}.")
        if path.is_dir():
            raise ValueError(f"{path} is a folder: give a file path.")
        from lede_env.paths import probe_writable

        probe_writable(path)


def _check_device(device: str) -> None:
    """A usage error for --device that torch cannot use here (no CUDA GPU, say)."""
    from lede_env.models import check_device

    with _param("--device"):
        check_device(device)


def _check_ray(ray: str | None, **ray_options) -> None:
    """Usage errors: --ray when Ray is not installed; a Ray option (--workers, ...) without --ray."""
    if ray is None:
        given = [name for name, value in ray_options.items() if value is not None]
        if given:
            hint = "/".join("--" + n.replace("_", "-") for n in given)
            with _param(hint):
                raise ValueError(f"{hint} only applies with --ray: add --ray (a one-machine cluster) or --ray ADDRESS.")
        return
    from lede_env.distributed import require_ray

    with _param("--ray"):
        try:
            require_ray()
        except ImportError as e:
            raise ValueError(str(e)) from None


def _setup(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ commands
@app.command()
def demo(model: str = typer.Option("smollm2-135m", help="Model name or local Llama directory."),
         prompts: str = typer.Option("mixed:test", help="Prompt set (and split) or a .jsonl file."),
         n: int = typer.Option(3, min=1, help="How many prompts."),
         max_new_tokens: int = typer.Option(96, min=1),
         exit_layer: Optional[int] = typer.Option(None, min=1, help="Exit layer L (default: the model's default)."),
         k: Optional[int] = typer.Option(None, min=0, help="Speculation length k (default: the model's default)."),
         heads: str = typer.Option("default", help="Exit heads: 'default', 'identity' or a path."),
         chat_template: bool = typer.Option(True),
         threads: int = typer.Option(2, min=1),
         path: str = typer.Option("auto", help="Execution path: auto, eager, fast, fast-bf16."),
         color: bool = typer.Option(True)) -> None:
    """Generate from a few prompts with plain greedy and with self-speculative decoding, side by side."""
    _check_model(model)
    plist = _check_prompts(prompts)[:n]
    _check_heads(heads)
    _check_path(path)

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from lede_env.defaults import default_static_action
    from lede_env.engine.limits import check_layer_range
    from lede_env.render import LEGEND, mark_text, token_kinds, token_pieces
    from lede_env.wiring import build_decoder

    _setup(threads)
    console = Console(highlight=False, width=max(100, Console().width))
    setup = build_decoder(model, heads=heads, path=path, chat_template=chat_template)
    L0, k0 = default_static_action(model, setup.heads)
    L, kk = exit_layer if exit_layer is not None else L0, k if k is not None else k0
    check_layer_range((L,), setup.num_layers, "--exit-layer", model)
    dec, tok = setup.decoder, setup.tokenizer
    rows = []
    console.print(f"[bold]{model}[/], exit heads: {setup.heads_label}, "
                  f"self-speculative setting L={L}, k={kk}, {threads} threads, path {dec.path} (both rows).  "
                  f"{LEGEND}\n")
    dec.generate(setup.encode(["Hello"])[0], 4)  # warm-up
    for p, ids in zip(plist, setup.encode([p.text for p in plist])):
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
            threads: int = typer.Option(2, min=1), heads: str = typer.Option("default"),
            exit_layers: str = typer.Option("all", help="Comma-separated exit layers, or 'all' (the heads' layers)."),
            max_verify: int = typer.Option(13, min=1), repeats: int = typer.Option(25, min=1),
            path: str = typer.Option("auto", help="Execution path: auto, eager, fast, fast-bf16."),
            out: Optional[str] = typer.Option(None, help="Output JSON (default: $LEDE_HOME/profiles/<key>.json)."),
            device: str = typer.Option("cpu", help="Where the model runs: cpu, cuda or cuda:N (every timing "
                                                    "synchronises the device).")) -> None:
    """Measure the latency profile (draft cost per exit layer, verification cost per length)."""
    _check_model(model)
    _check_dtype(dtype)
    _check_device(device)
    _check_heads(heads)
    _check_path(path)
    layers = _layers(exit_layers, "--exit-layers", allow_all=True)
    _check_out_file(out, ".json")

    from lede_env.engine.limits import check_layer_range
    from lede_env.engine.measure import measure_profile
    from lede_env.wiring import build_decoder

    _setup(threads)
    setup = build_decoder(model, heads=heads, path=path, dtype=dtype, eos=False, device=device)
    N = setup.num_layers
    if layers == "all":   # every layer the heads cover (every exit for identity heads)
        layers = list(getattr(setup.heads, "layers", ()) or range(1, N))
    check_layer_range(layers, N, "--exit-layers", model)
    prof = measure_profile(setup.decoder, model, list(layers), max_verify=max_verify, repeats=repeats)
    saved = prof.save(out)
    typer.echo(f"path {prof.path}, heads {prof.exit_heads}")
    typer.echo(f"plain AR step {prof.c_ar * 1e3:.2f} ms; per layer {prof.layer_cost[0] * 1e3:.3f} ms; "
               f"LM head {prof.head_cost[0] * 1e3:.2f} ms; verify {prof.max_verify}/1 = {prof.verify_cost[-1] / prof.verify_cost[0]:.2f}")
    typer.echo("draft ms/token: " + ", ".join(f"L{L}={c * 1e3:.1f}" for L, c in prof.draft_cost.items()))
    typer.echo(f"saved {saved}")


@app.command()
def trace(model: str = typer.Option("smollm2-135m"), prompts: str = typer.Option("mixed:train"),
          out: str = typer.Option(..., help="Output .npz path."),
          limit: Optional[int] = typer.Option(None, min=1, help="Only the first N prompts of the set."),
          max_new_tokens: int = typer.Option(128, min=2), heads: str = typer.Option("default"),
          exit_layers: Optional[str] = typer.Option(None, help="Comma-separated (default: the env's default)."),
          probe_layers: Optional[str] = typer.Option(None, help="Comma-separated (default: the env's default)."),
          chat_template: bool = typer.Option(True), dtype: str = typer.Option("float32"),
          device: str = typer.Option("cpu", help="Where the model runs: cpu, cuda or cuda:N."),
          threads: int = typer.Option(2, min=1),
          overwrite: bool = typer.Option(False, help="Replace an existing trace file (datasets built from it "
                                                     "would no longer match it)."),
          ray: Optional[str] = typer.Option(None, "--ray", metavar="[ADDRESS]",
                                            help="Record on Ray workers, split by prompt: --ray alone starts a "
                                                 "one-machine cluster, --ray ADDRESS joins one (pip install '.[ray]')."),
          workers: Optional[int] = typer.Option(None, min=1, help="Ray workers (one model each), with --ray "
                                                                   "(default 2)."),
          worker_threads: Optional[int] = typer.Option(None, min=1, help="Torch threads per Ray worker, with --ray "
                                                                         "(default 1).")) -> None:
    """Record replay traces: each prompt's greedy continuation with every exit layer's prediction.

    Resumable: stopped part-way, the finished prompts are kept in <out>.partial/ and the same command resumes.
    With --ray the file is the same, byte for byte, as without it at --threads equal to --worker-threads; a worker
    that dies is restarted and its prompt recorded again."""
    from lede_env.record import prepare_recording

    exits, probes = _layers(exit_layers, "--exit-layers"), _layers(probe_layers, "--probe-layers")
    with _tagged_params():   # the output, model, prompts, heads, layers and an unfinished recording: checked once
        recording = prepare_recording(model=model, prompts=prompts, out=out, limit=limit,
                                      max_new_tokens=max_new_tokens, heads=heads, exit_layers=exits,
                                      probe_layers=probes, chat_template=chat_template, dtype=dtype,
                                      overwrite=overwrite, device=device)
    _check_dtype(dtype)
    _check_device(device)

    _check_ray(ray, workers=workers, worker_threads=worker_threads)
    _setup(threads)
    ts, path = recording.run(ray=ray, workers=workers or 2, threads=worker_threads or 1)
    n = sum(t.length for t in ts.traces)
    typer.echo(f"recorded {len(ts)} traces, {n} tokens -> {path}")


@app.command()
def oracle(traces: str = typer.Option(..., help="Trace file from `lede trace`."),
           lam: float = typer.Option(1.0, help="Reward weight (> 0; the oracle's actions are the same for any)."),
           threads: int = typer.Option(2, min=1),
           spec_lengths: str = typer.Option("0,1,2,3,4,5,6,7,8,9,10,11,12"),
           profile: Optional[str] = typer.Option(None, help="Latency profile JSON (default: the stored one)."),
           path: str = typer.Option("auto", help="Execution path whose stored profile prices the steps.")) -> None:
    """Oracle (hindsight DP) and best static speedups on a trace file, with the stored latency profile."""
    from lede_env.oracle import check_lam

    with _param("--lam"):
        check_lam(lam, optimise=True)
    ks = _lengths(spec_lengths)
    _check_file(traces, "--traces", "trace file (record one with `lede trace`)")
    _check_file(profile, "--profile", "latency profile")
    _check_path(path)

    from lede_env.analysis import oracle_report

    oracle_report(traces, spec_lengths=ks, lam=lam, threads=threads, profile=profile, engine_path=path)


@app.command()
def evaluate(agents: str = typer.Option("all", help="Comma-separated: zoo names, static-L<L>-k<k>, saved agents' "
                                                    "folders (agent.save), or 'all' (the zoo)."),
             prompts: str = typer.Option("mixed:test", help="Comma-separated prompt sets, e.g. "
                                                            "mixed:test,humaneval:test."),
             traces: Optional[str] = typer.Option(None, help="Test trace files, comma-separated, one per prompt set "
                                                             "(default: the shipped ones)."),
             train_traces: Optional[str] = typer.Option(None, help="Training traces the fitted agents are fitted on: "
                                                                   "one file, or one per prompt set (default: the "
                                                                   "shipped <set>:train)."),
             limit: Optional[int] = typer.Option(None, min=1, help="Only the first N prompts of each set."),
             out: Optional[str] = typer.Option(None, help="Results folder (default: results/evaluate-<time>)."),
             profile: Optional[str] = typer.Option(None, help="Latency profile JSON (default: the stored one)."),
             progress: bool = typer.Option(True, help="Progress bar on stderr."),
             ray: Optional[str] = typer.Option(None, "--ray", metavar="[ADDRESS]",
                                               help="Run on Ray workers, one agent on one prompt set per task: --ray "
                                                    "alone starts a one-machine cluster, --ray ADDRESS joins one."),
             workers: Optional[int] = typer.Option(None, min=1, help="Ray workers, with --ray (default 2).")
             ) -> None:
    """Score agents on the replay backend (profiled costs): return, speedup, share of the oracle's gain, tokens per
    step, mean L and k, policy time; a table per prompt set, JSON, CSV and plots in --out."""
    from agents.evaluation import default_out_folder, evaluate as run_evaluation, resolve_agents, resolve_prompt_sets

    with _tagged_params():
        resolve_agents(agents)
        resolve_prompt_sets(prompts, traces, train_traces)
    _check_file(profile, "--profile", "latency profile")
    folder = Path(out) if out else default_out_folder()
    with _param("--out"):
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder} is a file: give a folder.")
        from lede_env.paths import probe_writable

        probe_writable(folder / "results.json")

    from rich.console import Console

    _check_ray(ray, workers=workers)
    result = run_evaluation(agents, prompts, traces=traces, train_traces=train_traces, limit=limit,
                            progress=progress, env_kwargs={"profile": profile} if profile else None,
                            ray=ray, workers=workers or 2)
    console = Console(highlight=False, width=max(120, Console().width))
    for table in result.tables():
        console.print(table)
    written = result.save(folder)
    console.print(f"wrote {', '.join(p.name for p in written.values())} to {folder}")


@app.command()
def bench(prompts: str = typer.Option("mixed:test,humaneval:test", help="Comma-separated prompt sets (held-out "
                                                                         "splits)."),
          agents: str = typer.Option(",".join(BENCH_AGENTS),
                                     help="Comma-separated: zoo names, static-L<L>-k<k>, shipped agents (lede, sb3) "
                                          "or saved agents' folders; '' for none."),
          limit: int = typer.Option(8, min=0, help="The first N prompts of each set (0: every prompt)."),
          max_new_tokens: int = typer.Option(128, min=2),
          repeats: int = typer.Option(3, min=1, help="Timed rounds over the prompts (Spec-Bench: 3)."),
          warmup: int = typer.Option(1, min=0, help="Untimed rounds of every method on the first prompt."),
          temperature: float = typer.Option(0.0, min=0.0, help="0: greedy; > 0: speculative sampling (the paper: "
                                                               "0.6)."),
          top_p: float = typer.Option(1.0, help="Nucleus sampling under --temperature."),
          hf: bool = typer.Option(True, help="Hugging Face's own self-speculation (assistant_early_exit) rows."),
          hf_exit: Optional[int] = typer.Option(None, min=1, help="Its exit layer (default: found on training "
                                                                  "prompts)."),
          hf_length: Optional[int] = typer.Option(None, min=1, help="Its constant draft length (default: found "
                                                                    "with the exit)."),
          hf_exits: Optional[str] = typer.Option(None, help="Comma-separated exits the search tries (default: every "
                                                            "fourth layer)."),
          traces: Optional[str] = typer.Option(None, help="Test traces, one per prompt set (default: the shipped "
                                                          "ones): the oracle's modelled speedup per prompt."),
          train_traces: Optional[str] = typer.Option(None, help="Training traces the zoo is fitted on (default: the "
                                                                "shipped <set>:train)."),
          model: str = typer.Option("smollm2-135m", help="Model name or local Llama directory."),
          threads: int = typer.Option(2, min=1),
          device: str = typer.Option("cpu", help="Where the model runs: cpu, cuda or cuda:N (with --dtype bfloat16 on "
                                                  "a GPU)."),
          dtype: str = typer.Option("float32", help="Model dtype: float32 or bfloat16."),
          heads: str = typer.Option("default", help="Exit heads of our methods: default, identity or a path."),
          out: Optional[str] = typer.Option(None, help="Results folder (default: results/bench-<time>)."),
          progress: bool = typer.Option(True, help="Progress bars on stderr."),
          ray: Optional[str] = typer.Option(None, "--ray", metavar="[ADDRESS]",
                                            help="Split each prompt set by prompt over Ray workers, each timing every "
                                                 "method on its prompt: --ray alone starts a one-machine cluster "
                                                 "(its workers share this machine's cores and memory), --ray ADDRESS "
                                                 "joins one."),
          workers: Optional[int] = typer.Option(None, min=1, help="Ray workers (one model each), with --ray "
                                                                  "(default 2)."),
          worker_threads: Optional[int] = typer.Option(None, min=1, help="Torch threads per Ray worker, with --ray "
                                                                         "(default 1; --threads is then unused).")
          ) -> None:
    """Live wall-clock speedups of every method on the real model, interleaved prompt by prompt: plain greedy,
    model.generate, Hugging Face's assistant_early_exit schedules, best static, the zoo's heuristics, the best
    stable-baselines3 agent and LEDE; a table, results.json, results.md and plots in --out."""
    _check_ray(ray, workers=workers, worker_threads=worker_threads)
    _check_model(model)
    _check_dtype(dtype)
    _check_heads(heads)
    _check_device(device)
    from lede_env.bench.run import BenchConfig

    with _param("--repeats/--temperature/--top-p/--traces/--train-traces"):
        config = BenchConfig(prompts=prompts, agents=agents, limit=limit or None, max_new_tokens=max_new_tokens,
                             repeats=repeats, warmup=warmup, temperature=temperature, top_p=top_p, hf=hf,
                             hf_exit=hf_exit, hf_length=hf_length, traces=traces, train_traces=train_traces,
                             hf_exits=None if hf_exits is None else _layers(hf_exits, "--hf-exits"),
                             model=model, threads=threads, env={"device": device, "dtype": dtype, "exit_heads": heads})
    from agents.evaluation import resolve_agents, resolve_prompt_sets

    with _tagged_params():
        if config.agents:
            resolve_agents(config.agents)
        resolve_prompt_sets(config.prompts, config.traces, config.train_traces)
    folder = Path(out) if out else Path("results") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    with _param("--out"):
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder} is a file: give a folder.")
        from lede_env.paths import probe_writable

        probe_writable(folder / "results.json")

    from rich.console import Console

    from lede_env.bench.run import run_bench

    result = run_bench(config, progress=progress, ray=ray, workers=workers or 2, threads=worker_threads or 1)
    console = Console(highlight=False, width=max(160, Console().width))
    for table in result.tables():
        console.print(table)
    fits = result.meta["hf_fits"]
    for name, fit in fits.items():
        console.print(f"Hugging Face's setting for {name}: L{fit['chosen']['exit']} n={fit['chosen']['n']}, the best "
                      f"of {len(fit['table'])} on {fit['count']} prompts of {fit['prompts']} x {fit['tokens']} tokens")
    written = result.save(folder)
    console.print(f"wrote {', '.join(p.name for p in written.values())} to {folder}")
    if any(r.exact is not None and r.exact < r.prompts for s in result.sets for r in s.rows):
        console.print("[bold red]Some outputs differ from plain greedy decoding (the exact column).[/]")
        raise typer.Exit(1)


@app.command()
def collect(recipe: str = typer.Option(..., help="Recipe TOML (datasets/*.toml)."),
            overwrite: bool = typer.Option(False, help="Replace an existing dataset with the same id."),
            ray: Optional[str] = typer.Option(None, "--ray", metavar="[ADDRESS]",
                                              help="Collect on Ray workers, split by episode (the recipe needs "
                                                   "behaviour_seeding = \"episode\"): --ray alone starts a "
                                                   "one-machine cluster, --ray ADDRESS joins one."),
            workers: Optional[int] = typer.Option(None, min=1, help="Ray workers (one environment each), with --ray "
                                                                    "(default 2)."),
            worker_threads: Optional[int] = typer.Option(None, min=1, help="Torch threads per Ray worker, with --ray "
                                                                           "(default 1 for a live backend; a replay "
                                                                           "one leaves torch alone).")) -> None:
    """Collect a Minari dataset of LEDE-v0 from a recipe (see datasets/README.md). With --ray the dataset's data are
    the same as without it."""
    from agents.behaviour import collect_recipe, load_recipe

    _check_ray(ray, workers=workers, worker_threads=worker_threads)
    with _param("--recipe"):
        parsed = load_recipe(recipe)
    threads = worker_threads or (1 if parsed.env_config.backend == "live" else None)
    collect_recipe(parsed, overwrite=overwrite, ray=ray, workers=workers or 2, threads=threads)


@app.command()
def train(agent: str = typer.Argument(..., help="lede (offline, from a dataset) or an SB3 algorithm: ppo, a2c, dqn, "
                                                "qrdqn (online, on the replay backend)."),
          dataset: Optional[str] = typer.Option(None, help="lede: the Minari dataset id (`lede collect`)."),
          algo: str = typer.Option("cql", help="lede: cql (double DQN + discrete CQL) or dqn (double DQN)."),
          head: str = typer.Option("factored", help="lede: factored (Q(s,L), Q(s,L,k)) or flat (Q over J x K)."),
          updates: int = typer.Option(20_000, min=1, help="lede: gradient updates."),
          traces: str = typer.Option("mixed:train", help="SB3: training traces, a file or a shipped prompt set."),
          timesteps: int = typer.Option(100_000, min=1, help="SB3: environment steps."),
          heldout: int = typer.Option(6, min=0, help="SB3: the traces' last prompts kept for evaluation."),
          eval_every: Optional[int] = typer.Option(None, min=0, help="Updates (lede) or timesteps (SB3) between "
                                                                     "held-out evaluations (default 2000 / 10000)."),
          lam: Optional[float] = typer.Option(None, min=0, help="Reward weight (default: the dataset's, or 1)."),
          seed: int = typer.Option(0),
          out: Optional[str] = typer.Option(None, help="The saved agent's folder (default artifacts/agents/<agent>)."),
          overwrite: bool = typer.Option(False, help="Replace an existing saved agent at --out.")) -> None:
    """Train an agent and save it where `agents.load` / `lede evaluate --agents <folder>` read it: LEDE offline from
    a Minari dataset, or a stable-baselines3 agent online on the replay backend."""
    from agents.sb3 import ALGOS as SB3_ALGOS

    if agent not in ("lede",) + SB3_ALGOS:
        raise typer.BadParameter(f"expected lede or one of {', '.join(SB3_ALGOS)}, got {agent!r}.",
                                 param_hint="AGENT")
    if agent != "lede" and dataset is not None:
        raise typer.BadParameter(f"{agent} trains online on --traces, not on a dataset: leave --dataset out (or train "
                                 "lede).", param_hint="--dataset")
    folder = out or f"artifacts/agents/{agent if agent != 'lede' else 'lede-' + algo}"
    if agent == "lede":
        if dataset is None:
            raise typer.BadParameter("lede trains offline: give the dataset id (`lede collect` makes one, e.g. from "
                                     "datasets/smollm2-mixed-train-lede.toml).", param_hint="--dataset")
        from agents.train_lede import Args, train as run

        with _param("--algo/--head"):
            args = Args(dataset=dataset, out=folder, algo=algo, head=head, updates=updates, lam=lam, seed=seed,
                        overwrite=overwrite, **({} if eval_every is None else {"eval_every": eval_every}))
    else:
        from agents.train_sb3 import Args, train as run

        with _param("--traces"):
            from agents.training import resolve_traces

            resolve_traces(traces)
        args = Args(algo=agent, traces=traces, out=folder, timesteps=timesteps, heldout=heldout,
                    lam=1.0 if lam is None else lam, seed=seed, overwrite=overwrite,
                    **({} if eval_every is None else {"eval_every": eval_every}))
    with _param("--out"):
        from agents.training import check_out_folder

        check_out_folder(folder, overwrite)
    run(args)


@app.command("fit-heads")
def fit_heads(model: str = typer.Option("smollm2-135m", help="Model name or local Llama directory."),
              kinds: str = typer.Option("ridge,kl", help="Comma-separated head kinds: ridge, kl, kl-mlp, eagle."),
              layers: str = typer.Option("1,2,4,6,8,10,12,14,16,18,20,22,24,26,28",
                                         help="Comma-separated exit layers."),
              train_prompts: str = typer.Option("mixed:train,humaneval:train"),
              test_prompts: str = typer.Option("mixed:test,humaneval:test"),
              positions: int = typer.Option(30000, min=1, help="Training positions (tokens of self-generated text)."),
              max_new_tokens: int = typer.Option(128, min=2), kl_epochs: int = typer.Option(4, min=0),
              out: Optional[str] = typer.Option(None, help="Output folder (default: $LEDE_HOME/heads/<model>)."),
              cache_dir: Optional[str] = typer.Option(None, help="Keep the generated text here for reruns."),
              threads: int = typer.Option(2, min=1)) -> None:
    """Fit exit heads by self-distillation on the TRAIN prompts; report held-out agreement on the TEST prompts."""
    from lede_env.heads_fitting import fit_heads_report
    from lede_env.paths import artifacts_dir

    _check_model(model)
    kind_list = [k.strip() for k in kinds.split(",") if k.strip()]
    from lede_env.heads_fitting.fit import FITTED_KINDS

    unknown = sorted(set(kind_list) - set(FITTED_KINDS))
    if not kind_list or unknown:
        raise typer.BadParameter(f"head kinds are {', '.join(FITTED_KINDS)}; got {kinds!r}.", param_hint="--kinds")
    layer_list = _layers(layers, "--layers")
    for hint, specs in (("--train-prompts", train_prompts), ("--test-prompts", test_prompts)):
        for spec in specs.split(","):
            _check_prompts(spec.strip(), hint)
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise typer.BadParameter(f"{out} is a file, not a folder.", param_hint="--out")

    _setup(threads)
    folder = Path(out) if out else artifacts_dir() / "heads" / model.replace("/", "-")
    fit_heads_report(out=folder, model_name=model, kinds=kind_list,
                     layers=list(layer_list), train_prompts=train_prompts,
                     test_prompts=test_prompts, n_positions=positions, max_new_tokens=max_new_tokens,
                     kl_epochs=kl_epochs, threads=threads, cache_dir=cache_dir, echo=typer.echo)


@app.command("bench-engine")
def bench_engine(threads: int = typer.Option(2, min=1), n: int = typer.Option(4, min=1),
                 max_new_tokens: int = typer.Option(64, min=1),
                 heads: str = typer.Option("default", help="'default', 'identity' or a path."),
                 path: str = typer.Option("auto", help="Execution path: auto, eager, fast, fast-bf16.")) -> None:
    """Engine benchmark on SmolLM2: plain greedy vs model.generate, and a static (L, k) grid."""
    _check_heads(heads)
    _check_path(path)

    from lede_env.bench_engine import run

    _setup(threads)
    run(n_prompts=n, max_new_tokens=max_new_tokens, heads=heads, path=path)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
