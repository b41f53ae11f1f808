"""What `lede bench` reports: per method and prompt set a `BenchRow` (`summarise`), and the files (`BenchResult.save`):
``results.json`` (everything, per-prompt figures included), ``results.md`` (the markdown table), ``speedup.png``,
``tokens_per_step.png`` and ``clock_vs_profile.png``. The definitions:

``tok/s``
    generated tokens over the generation's wall clock (prefill included): median over prompts of the median over
    rounds.
``speedup``
    per prompt and round, tok/s over plain greedy's (our engine) on the same prompt and round; the median over prompts
    of each prompt's median over rounds. ``spread``: the 25th and 75th percentiles of the per-prompt medians;
    ``rounds``: the lowest and highest median over prompts of one round. ``aggregate``: total tokens over total time,
    over plain greedy's.
``tok/pass``
    generated tokens over full-model forward passes (the prefill counts as one: it produces the first token): the mean
    accepted tokens per verification step counting the bonus token; 1.00 for autoregressive decoding.
``L``, ``k``
    over the steps that drafted: the mean exit layer and the mean drafted tokens.
``acceptance`` (JSON only)
    accepted drafts over drafted tokens, ``(tokens - passes) / drafted``: every full pass yields one token of its own
    (the correction or bonus), so the rest are accepted drafts.
``predict``
    the agent's own time per step (``predict`` and its hooks), in µs; it is inside the agent's wall clock.
``exact``
    prompts whose generated ids equal plain greedy's in every round (greedy only; under sampling exactness is
    distributional and is not counted).
``profile``
    the latency profile's modelled speedup of the steps the method took live, ``sum N c_ar / sum cost``
    (`lede evaluate`'s definition); ``clock / profile`` is the measured speedup over it, how far the clock is from the
    profile. ``oracle`` (per prompt, in the JSON and the scatter plot): the hindsight optimum's modelled speedup on the
    prompt's replay trace.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lede_env.plotting import new_figure

__all__ = ["BenchRow", "SetResult", "BenchResult", "summarise"]


@dataclass(frozen=True)
class BenchRow:
    """One method on one prompt set (module docstring: the definitions); None where a figure does not apply."""

    method: str
    family: str                       # "engine", "hf" or "agent"
    prompts: int
    rounds: int
    tokens_per_s: float
    speedup: float
    spread: tuple[float, float]
    round_range: tuple[float, float]
    aggregate: float
    tokens_per_pass: float
    mean_exit: float | None
    mean_k: float | None
    predict_us: float | None
    exact: int | None
    modelled: float | None
    per_prompt: tuple[float, ...] = field(repr=False, default=())            # per-prompt median speedups
    per_prompt_modelled: tuple[float, ...] | None = field(repr=False, default=None)
    produced: tuple[int, ...] = field(repr=False, default=())                # tokens per step, every step of round 1
    acceptance: float | None = None                                          # accepted drafts / drafted tokens


@dataclass(frozen=True)
class SetResult:
    """A prompt set's rows, the oracle's modelled speedup per prompt (None and ``note`` when not computed)."""

    prompt_set: str
    rows: list[BenchRow]
    oracle: list[float] | None = None
    note: str = ""

    def row(self, method: str) -> BenchRow:
        for r in self.rows:
            if r.method == method:
                return r
        raise KeyError(f"No row for {method!r} on {self.prompt_set}.")


def _q(xs, q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def summarise(prompt_set: str, methods, runs: dict, oracle: list[float] | None, c_ar: float, greedy: bool,
              note: str = "") -> SetResult:
    """The rows of one prompt set from ``runs[method][prompt][round]`` (`lede_env.bench.methods.Run`); the first method
    is the reference (plain greedy)."""
    ref = runs[methods[0].name]
    count = len(ref)
    rounds = min(len(x) for x in ref)
    ref_tps = [[len(x.tokens) / x.seconds for x in p] for p in ref]
    flat_ref = [x for p in ref for x in p]
    ref_rate = sum(len(x.tokens) for x in flat_ref) / sum(x.seconds for x in flat_ref)
    rows = []
    for m in methods:
        rs = runs[m.name]
        tps = [[len(x.tokens) / x.seconds for x in p] for p in rs]
        ratio = [[a / b for a, b in zip(pa, pb)] for pa, pb in zip(tps, ref_tps)]
        per_prompt = [statistics.median(p) for p in ratio]
        per_round = [statistics.median(ratio[i][r] for i in range(count)) for r in range(rounds)]
        flat = [x for p in rs for x in p]
        tokens = sum(len(x.tokens) for x in flat)
        steps = sum(x.passes - 1 for x in flat)
        draft_steps = sum(x.draft_steps for x in flat)
        exact = sum(all(x.tokens == y.tokens for x, y in zip(pa, pb)) for pa, pb in zip(rs, ref)) if greedy else None
        modelled = per_modelled = None
        if all(x.modelled_cost is not None for x in flat):
            produced = sum(len(x.tokens) - 1 for x in flat)
            modelled = produced * c_ar / sum(x.modelled_cost for x in flat)
            per_modelled = tuple((len(p[0].tokens) - 1) * c_ar / p[0].modelled_cost if p[0].modelled_cost else 1.0
                                 for p in rs)
        rows.append(BenchRow(
            method=m.name, family=m.family, prompts=count, rounds=rounds,
            tokens_per_s=statistics.median(statistics.median(p) for p in tps),
            speedup=statistics.median(per_prompt), spread=(_q(per_prompt, 25), _q(per_prompt, 75)),
            round_range=(min(per_round), max(per_round)),
            aggregate=tokens / sum(x.seconds for x in flat) / ref_rate,
            tokens_per_pass=tokens / sum(x.passes for x in flat),
            mean_exit=sum(x.exit_sum for x in flat) / draft_steps if draft_steps else None,
            mean_k=sum(x.drafted for x in flat) / draft_steps if draft_steps else None,
            predict_us=1e6 * sum(x.predict_seconds for x in flat) / steps if m.family == "agent" and steps else None,
            exact=exact, modelled=modelled, per_prompt=tuple(per_prompt), per_prompt_modelled=per_modelled,
            produced=tuple(n for p in rs for n in p[0].produced),
            acceptance=(tokens - sum(x.passes for x in flat)) / drafted if (drafted := sum(x.drafted for x in flat))
            else None))
    return SetResult(prompt_set=prompt_set, rows=rows, oracle=oracle, note=note)


def _f(x, spec: str, unit: str = "") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{spec}}{unit}"


COLUMNS = ("method", "tok/s", "speedup", "spread", "rounds", "aggregate", "tok/pass", "L", "k", "predict µs",
           "exact", "profile", "clock/profile")


def _cells(r: BenchRow) -> list[str]:
    return [r.method, _f(r.tokens_per_s, ".1f"), _f(r.speedup, ".3f", "x"),
            f"{r.spread[0]:.2f}-{r.spread[1]:.2f}", f"{r.round_range[0]:.2f}-{r.round_range[1]:.2f}",
            _f(r.aggregate, ".3f", "x"), _f(r.tokens_per_pass, ".2f"), _f(r.mean_exit, ".1f"), _f(r.mean_k, ".2f"),
            _f(r.predict_us, ".0f"), "-" if r.exact is None else f"{r.exact}/{r.prompts}",
            _f(r.modelled, ".3f", "x"), _f(r.speedup / r.modelled if r.modelled else None, ".3f")]


@dataclass
class BenchResult:
    """Every prompt set's rows and the run's description (`meta`)."""

    sets: list[SetResult]
    meta: dict

    def set(self, prompt_set: str) -> SetResult:
        for s in self.sets:
            if s.prompt_set == prompt_set:
                return s
        raise KeyError(f"No prompt set {prompt_set!r} in this result.")

    def _title(self, s: SetResult) -> str:
        r0 = s.rows[0]
        oracle = (f"; oracle (modelled) median {statistics.median(s.oracle):.3f}x" if s.oracle else "")
        return (f"{s.prompt_set}: {r0.prompts} prompts x {r0.rounds} rounds, {self.meta['config']['max_new_tokens']} "
                f"new tokens, {'greedy' if self.meta['config']['temperature'] == 0 else 'T=' + str(self.meta['config']['temperature'])}"
                f"; plain greedy {r0.tokens_per_s:.1f} tok/s{oracle}")

    def tables(self) -> list:
        """One `rich.table.Table` per prompt set."""
        from rich.table import Table

        out = []
        for s in self.sets:
            t = Table(title=self._title(s), caption="speedup: tok/s over plain greedy's on the same prompt and round, "
                      "median over prompts (spread: 25th-75th percentile over prompts; rounds: range of the per-round "
                      "medians).\ntok/pass: tokens per full-model pass (bonus token counted). L, k: over drafting "
                      "steps. profile: the latency profile's price of the same steps.", caption_justify="left")
            for i, c in enumerate(COLUMNS):
                t.add_column(c, justify="left" if i == 0 else "right", no_wrap=True)
            for r in s.rows:
                t.add_row(*_cells(r))
            out.append(t)
        return out

    def to_markdown(self) -> str:
        lines = []
        for s in self.sets:
            lines += [f"**{self._title(s)}**", "", "| " + " | ".join(COLUMNS) + " |",
                      "|" + "---|" * len(COLUMNS)]
            lines += ["| " + " | ".join(_cells(r)) + " |" for r in s.rows]
            if s.note:
                lines += ["", f"oracle not computed: {s.note}."]
            lines.append("")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"meta": self.meta, "sets": [{"prompt_set": s.prompt_set, "oracle": s.oracle, "note": s.note,
                                              "rows": [asdict(r) for r in s.rows]} for s in self.sets]}

    def save(self, folder: str | Path) -> dict[str, Path]:
        """``results.json``, ``results.md`` and the three plots into ``folder`` (made if missing)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = {"json": folder / "results.json", "markdown": folder / "results.md"}
        out["json"].write_text(json.dumps(self.to_json(), indent=1, default=float) + "\n")
        out["markdown"].write_text(self.to_markdown())
        out["speedup"] = _plot_speedup(self, folder / "speedup.png")
        out["tokens_per_step"] = _plot_tokens(self, folder / "tokens_per_step.png")
        out["clock_vs_profile"] = _plot_clock(self, folder / "clock_vs_profile.png")
        return out


# ------------------------------------------------------------------------------------------ plots
FAMILY_COLORS = {"engine": "tab:gray", "hf": "tab:orange", "agent": "tab:blue"}


def _plot_speedup(result: BenchResult, path: Path) -> Path:
    n = max(len(s.rows) for s in result.sets)
    fig = new_figure(4.8 * len(result.sets), 1.6 + 0.28 * n)
    for g, s in enumerate(result.sets):
        ax = fig.add_subplot(1, len(result.sets), g + 1)
        rows = s.rows[::-1]
        y = np.arange(len(rows))
        med = np.array([r.speedup for r in rows])
        err = np.array([[r.speedup - r.spread[0], r.spread[1] - r.speedup] for r in rows]).T
        colors = ["tab:red" if r.method in ("lede", "lede-default") else FAMILY_COLORS.get(r.family, "tab:blue")
                  for r in rows]
        ax.barh(y, med, xerr=np.clip(err, 0, None), color=colors, capsize=2)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(y, [r.method for r in rows], fontsize=7)
        ax.set_xlabel("speedup over plain greedy (measured, median; bars: 25-75% over prompts)", fontsize=7)
        ax.set_title(s.prompt_set, fontsize=9)
    fig.savefig(path)
    return path


def _plot_tokens(result: BenchResult, path: Path) -> Path:
    fig = new_figure(4.8 * len(result.sets), 4.2)
    for g, s in enumerate(result.sets):
        ax = fig.add_subplot(1, len(result.sets), g + 1)
        rows = [r for r in s.rows if r.produced]
        if rows:
            ax.boxplot([list(r.produced) for r in rows], orientation="horizontal", showfliers=False, showmeans=True)
            ax.set_yticks(range(1, len(rows) + 1), [r.method for r in rows], fontsize=7)
        hf = [r for r in s.rows if not r.produced]
        for r in hf:   # no per-step record: the mean tokens per pass
            ax.plot([r.tokens_per_pass], [0], "D", label=f"{r.method} (mean)", markersize=4)
        if hf:
            ax.legend(fontsize=6, loc="lower right")
        ax.set_xlabel("tokens per step (accepted + bonus); box: quartiles, triangle: mean", fontsize=7)
        ax.set_title(s.prompt_set, fontsize=9)
    fig.savefig(path)
    return path


def _plot_clock(result: BenchResult, path: Path) -> Path:
    fig = new_figure(9.0, 3.8 * len(result.sets))
    for g, s in enumerate(result.sets):
        agents = [r for r in s.rows if r.family == "agent"]
        ax = fig.add_subplot(len(result.sets), 2, 2 * g + 1)
        if s.oracle:
            for r in agents:
                ax.scatter(s.oracle, r.per_prompt, s=10, label=r.method)
            ax.set_xlabel("oracle's modelled speedup on the prompt", fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no oracle: {s.note}", transform=ax.transAxes, ha="center", fontsize=7, wrap=True)
        ax.axhline(1.0, color="black", linewidth=0.6)
        ax.set_ylabel("measured speedup", fontsize=7)
        ax.set_title(f"{s.prompt_set}: measured per prompt vs the oracle's model", fontsize=8)
        ax2 = fig.add_subplot(len(result.sets), 2, 2 * g + 2)
        lo, hi = 1.0, 1.0
        for r in agents:
            if r.per_prompt_modelled:
                ax2.scatter(r.per_prompt_modelled, r.per_prompt, s=10, label=r.method)
                lo = min(lo, min(r.per_prompt_modelled), min(r.per_prompt))
                hi = max(hi, max(r.per_prompt_modelled), max(r.per_prompt))
        ax2.plot([lo, hi], [lo, hi], color="black", linewidth=0.6)
        ax2.set_xlabel("the profile's modelled speedup of the same steps", fontsize=7)
        ax2.set_ylabel("measured speedup", fontsize=7)
        ax2.set_title("clock vs profile, per prompt (line: equal)", fontsize=8)
        if agents:
            ax2.legend(fontsize=5, ncol=2, loc="best")
    fig.savefig(path)
    return path
