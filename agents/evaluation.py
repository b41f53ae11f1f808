"""`lede evaluate`: score agents on the replay backend (profiled costs, deterministic) on test prompts (DESIGN.md
section 5). No torch, no model: replay only.

    lede evaluate --agents autoregressive,best-static,oracle --prompts mixed:test --limit 10 --out results/my-run

    from agents.evaluation import evaluate
    result = evaluate(["oracle", "best-static"], ["mixed:test"], limit=10)
    result.save("results/my-run")          # results.json, results.csv, speedup.png, actions-<set>.png

Agents: names of the zoo (`agents.zoo.ZOO`, built by `agents.zoo.build`; ``"all"`` is the whole zoo), static
settings ``static-L<L>-k<k>``, the shipped trained agents (``lede``: the default LEDE agent, `agents.shipped.SHIPPED`)
and saved agents (a folder with the ``config.json`` of ``agent.save``, rebuilt by
`agents.base.load`). Every agent runs every selected prompt of every prompt set once, in prompt order, through the
project's one episode loop (`lede_env.rollout.rollout`) on ``gym.make("LEDE-v0", backend="replay", traces=...,
stop_rules="default")``: the stop-rule option, so that the agents that stop drafts on their confidence can act (the
others play the rule ``"none"``). A saved agent gets an environment with the action lists it was saved for (its
``"env"``: exit layers, speculation lengths, stop rules or none), so `agents.base.load` accepts it. Agents are built
fresh for each prompt set; zoo agents that are fitted (best static and the heuristics that draft at its exit) are
fitted on the prompt set's *training* traces (`agents.zoo.ZooContext.from_traces`).

One row per agent and prompt set (`EvaluationRow`). Let episode ``i`` produce ``N_i`` tokens at total cost ``C_i``
(seconds under the latency profile: the steps counted per (exit column, drafted length) cell and priced by the
environment's ``cost_table``, as `lede_env.oracle` does) and ``c_ar`` be one autoregressive step's cost:

``speedup``
    ``sum_i N_i * c_ar / sum_i C_i``: token-weighted, total autoregressive time over total time
    (`lede_env.oracle.aggregate_speedup` of the episodes). Exactly 1.0 for autoregressive decoding.
``share`` (share of oracle gain)
    ``R_agent / R_oracle`` with ``R = sum_i (N_i - C_i / c_ar)`` the total return at ``lam = 1`` (the tokens saved
    versus autoregressive decoding; equivalently the share of the oracle's saving of time), and ``R_oracle`` the
    hindsight optimum (`lede_env.oracle.solve`) on the same prompts. 0 for autoregressive decoding, 1 for the
    oracle, negative for an agent slower than autoregressive decoding; NaN when the oracle gains nothing. (In
    speedup terms: ``(1 - 1/S_agent) / (1 - 1/S_oracle)``.)
``mean_return``
    the mean episode return the environment paid (``lam`` of the environment, 1 unless ``env_kwargs`` says).
``tokens_per_step``, ``speculative_steps``, ``mean_exit_layer``, ``mean_k``, ``mean_drafted``, ``acceptance``
    tokens per step over all steps; the share of steps with requested ``k > 0`` (the speculative steps); over the
    speculative steps only: the mean exit layer ``L``, the mean requested ``k`` and the mean drafted count (below
    ``k`` when a stop rule stopped the draft); accepted over drafted tokens. NaN without speculative steps.
``predict_us`` (µs/step)
    the agent's own time per step, in microseconds (`lede_env.rollout.Episode.predict_seconds`: ``predict`` and
    its hooks, over all steps). The one field that is not reproducible: every other field of a row is the same on
    every run (the agents are deterministic or seeded, the prompts run in order, the costs are profiled).

Each prompt set also gets its yardsticks (`Reference`): the oracle, the best static setting in hindsight on the
test traces (`lede_env.oracle.best_static`) and the one fitted on the training traces (what ``best-static`` plays).
"""

from __future__ import annotations

import csv
import functools
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from agents.base import CONFIG, KINDS, agent_class, load
from agents.shipped import is_shipped, shipped_folder
from agents.oracle import replay_traces
from agents.zoo import ZOO, ZooContext, build
from lede_env.oracle import Rollout, aggregate_speedup, best_static, rollout_static, solve
from lede_env.paths import tag_argument
from lede_env.plotting import new_figure

__all__ = ["AgentSpec", "PromptSetSpec", "EvaluationRow", "Reference", "EvaluationResult",
           "resolve_agents", "resolve_prompt_sets", "evaluate", "build_agent", "default_out_folder", "SHARE_DEFINITION",
           "SPEEDUP_DEFINITION"]

SPEEDUP_DEFINITION = "sum N * c_ar / sum cost over the episodes (token-weighted, profiled costs)"
SHARE_DEFINITION = ("share of oracle gain: the agent's total return / the oracle's total return at lam = 1 "
                    "(tokens saved vs autoregressive; 0 = autoregressive, 1 = oracle)")
ENV_ID = "LEDE-v0"
STATIC = re.compile(r"^static-L(\d+)-k(\d+)$")
_INFO_KEYS = ("tokens", "accepted", "drafted", "stop_rule")


# ------------------------------------------------------------------------------------------ what to evaluate
@dataclass(frozen=True)
class AgentSpec:
    """One agent to evaluate: a zoo name, a static setting ``static-L<L>-k<k>``, or a saved agent's folder."""

    label: str                        # its name in the tables and files
    source: str                       # what was asked for
    kind: str                         # the registered kind
    folder: str | None = None         # saved agents: the folder
    saved_env: dict | None = None     # saved agents: the "env" of its config.json (the action lists)
    arguments: dict | None = None     # static settings: exit_layer and k

    @property
    def env_key(self) -> tuple:
        """The action lists its environment needs (``()``: the evaluation's own environment)."""
        if self.saved_env is None:
            return ()
        e = self.saved_env
        return (tuple(e.get("exit_layers") or ()), tuple(e.get("spec_lengths") or ()),
                None if e.get("stop_rules") is None else tuple(e["stop_rules"]))


@dataclass(frozen=True)
class PromptSetSpec:
    """One prompt set: its name, its test traces and the training traces the fitted agents are fitted on (None, and
    ``train_note`` saying why, when there are none)."""

    name: str
    traces: str
    train_traces: str | None
    train_note: str = ""


def _split_list(items: Sequence[str] | str) -> list[str]:
    if isinstance(items, str):
        items = items.split(",")
    return [str(x).strip() for x in items if str(x).strip()]


def resolve_agents(agents: Sequence[str] | str) -> list[AgentSpec]:
    """The agents asked for (a list, or one comma-separated string), checked, with ``"all"`` expanded to the zoo
    (`agents.zoo.ZOO`). Each is a zoo name, ``static-L<L>-k<k>`` or a folder holding a saved agent's
    ``config.json``. ``ValueError`` naming the zoo for an unknown name, a zoo agent whose kind is not registered
    (`agents.base.KINDS`), a name given twice (tagged ``error.argument = "agents"``)."""
    with tag_argument("agents"):
        return _resolve_agents(agents)


def _resolve_agents(agents: Sequence[str] | str) -> list[AgentSpec]:
    names = _split_list(agents)
    if not names:
        raise ValueError(f"No agents given: list some of the zoo ({', '.join(ZOO)}), or 'all'.")
    expanded: list[str] = []
    for n in names:
        expanded += list(ZOO) if n == "all" else [n]
    specs: list[AgentSpec] = []
    for name in expanded:
        path = Path(name)
        m = STATIC.match(name)
        if m:
            specs.append(AgentSpec(label=name, source=name, kind="static",
                                   arguments={"exit_layer": int(m.group(1)), "k": int(m.group(2))}))
        elif is_shipped(name) and "/" not in name:
            saved = _saved_spec(shipped_folder(name))
            specs.append(replace(saved, label=name, source=name))
        elif name in ZOO:
            if name not in KINDS:
                raise ValueError(f"Agent {name!r} of the zoo is not implemented yet (no registered kind {name!r}; "
                                 f"registered: {', '.join(sorted(KINDS))}). Leave it out of --agents.")
            specs.append(AgentSpec(label=name, source=name, kind=name))
        elif path.is_dir() or "/" in name or name.startswith("."):
            specs.append(_saved_spec(path))
        else:
            hint = " (a static setting is written static-L<L>-k<k>, e.g. static-L24-k3)" if name == "static" else ""
            raise ValueError(f"Unknown agent {name!r}{hint}: give names of the zoo ({', '.join(ZOO)}), or "
                             "'all', static-L<L>-k<k>, lede (the shipped LEDE agent), or the folder of a saved agent (holding the config.json that "
                             "agent.save(folder) writes).")
    labels = [s.label for s in specs]
    shipped = {s.label for s in specs if s.source == s.label and is_shipped(s.label)}
    # a saved folder named like a shipped agent given beside it (`lede,artifacts/agents/lede`): labelled by its path
    specs = [replace(s, label=s.source) if s.folder and s.label in shipped and s.source != s.label else s
             for s in specs]
    labels = [s.label for s in specs]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise ValueError(f"Agents given twice: {twice} (each agent is one row per prompt set).")
    return specs


def _saved_spec(folder: Path) -> AgentSpec:
    config = folder / CONFIG
    if not folder.is_dir():
        raise FileNotFoundError(f"No saved agent at {folder}: no such folder (a saved agent is the folder that "
                                "agent.save(folder) writes).")
    if not config.is_file():
        raise FileNotFoundError(f"{folder} holds no saved agent: it has no {CONFIG} (write one with "
                                "agent.save(folder)).")
    try:
        saved = json.loads(config.read_text())
        kind, env = str(saved["kind"]), dict(saved["env"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{config} is not a saved agent's config ({type(e).__name__}: {e}).") from None
    label = folder.resolve().name or str(folder)
    return AgentSpec(label=label, source=str(folder), kind=kind, folder=str(folder), saved_env=env)


def resolve_prompt_sets(prompt_sets: Sequence[str] | str, traces: Sequence[str] | str | None = None,
                        train_traces: Sequence[str] | str | None = None) -> list[PromptSetSpec]:
    """The prompt sets (a list, or one comma-separated string such as ``"mixed:test,humaneval:test"``) with their
    trace files: ``traces`` (one per prompt set, in order) or the shipped ones
    (`lede_env.defaults.shipped_traces`); training traces: ``train_traces`` (one for all prompt sets, or one per
    prompt set) or the shipped ``<set>:train`` file when it exists (else none: the fitted agents then refuse,
    saying so). ``FileNotFoundError`` / ``ValueError`` name the missing file or the miscount (tagged with the
    argument: ``error.argument`` is ``"prompts"``, ``"traces"`` or ``"train_traces"``)."""
    from lede_env.defaults import shipped_traces

    with tag_argument("prompts"):
        names = _split_list(prompt_sets)
        if not names:
            raise ValueError("No prompt sets given: e.g. mixed:test or mixed:test,humaneval:test.")
        if len(set(names)) != len(names):
            raise ValueError(f"Prompt sets given twice: {names}.")
    with tag_argument("traces"):
        paths = None if traces is None else _split_list(traces)
        if paths is not None and len(paths) != len(names):
            raise ValueError(f"{len(paths)} trace files for {len(names)} prompt sets ({', '.join(names)}): give "
                             "one per prompt set, in the same order.")
    with tag_argument("train_traces"):
        train = None if train_traces is None else _split_list(train_traces)
        if train is not None and len(train) not in (1, len(names)):
            raise ValueError(f"{len(train)} training trace files for {len(names)} prompt sets: give one for all, "
                             "or one per prompt set in the same order.")
    out = []
    for i, name in enumerate(names):
        if paths is None:
            with tag_argument("prompts"):
                test = str(shipped_traces(name))
        else:
            test = paths[i]
            if not Path(test).is_file():
                with tag_argument("traces"):
                    raise FileNotFoundError(f"No trace file at {test} (record one with `lede trace`).")
        note = ""
        if train is not None:
            tr: str | None = train[0] if len(train) == 1 else train[i]
            if not Path(tr).is_file():
                with tag_argument("train_traces"):
                    raise FileNotFoundError(f"No training trace file at {tr} (record one with `lede trace`).")
        else:
            base, _, split = name.partition(":")
            tr = None
            if split in ("train", "test"):
                try:
                    tr = str(shipped_traces(f"{base}:train"))
                except (FileNotFoundError, ValueError) as e:
                    note = str(e)
            else:
                note = f"{name!r} names no shipped split, so no training traces are known: give --train-traces."
        out.append(PromptSetSpec(name=name, traces=test, train_traces=tr, train_note=note))
    return out


# ------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class EvaluationRow:
    """One agent on one prompt set (module docstring: the definitions). Means over no steps are NaN."""

    agent: str
    kind: str
    source: str
    prompt_set: str
    episodes: int
    steps: int
    tokens: int
    mean_return: float
    speedup: float
    share: float
    tokens_per_step: float
    speculative_steps: float
    mean_exit_layer: float
    mean_k: float
    mean_drafted: float
    acceptance: float
    stop_rule_steps: float          # share of speculative steps drafted under a stop rule other than "none"
    predict_us: float
    ar_time: float                  # sum_i N_i * c_ar, seconds
    total_cost: float               # sum_i C_i, seconds
    total_return: float             # R at lam = 1 (tokens saved), the numerator of the share
    exit_layers: tuple[int, ...] = field(repr=False, default=())
    spec_lengths: tuple[int, ...] = field(repr=False, default=())
    action_counts: tuple[tuple[int, ...], ...] = field(repr=False, default=())   # steps per (exit index, k index)

    def scalars(self) -> dict:
        """The row without its action counts (a CSV line)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("exit_layers", "spec_lengths", "action_counts")}


@dataclass(frozen=True)
class Reference:
    """A prompt set's yardsticks on its test traces: the oracle (hindsight DP, `lede_env.oracle.solve`), the best
    static setting in hindsight on the test traces (`lede_env.oracle.best_static`: the best a static agent could
    be) and the one fitted on the training traces (what ``best-static`` plays; None without training traces)."""

    prompt_set: str
    traces: str
    train_traces: str | None
    episodes: int
    tokens: int
    c_ar: float
    profile: str
    oracle_speedup: float
    oracle_return: float
    hindsight_static: tuple[int, int]
    hindsight_static_speedup: float
    train_static: tuple[int, int] | None
    train_static_speedup: float | None


@dataclass
class EvaluationResult:
    """The rows (one per agent and prompt set, agents in the order asked), the prompt sets' references and the run's
    description. `save` writes everything; `tables` gives the rich tables the command prints."""

    rows: list[EvaluationRow]
    references: dict[str, Reference]
    meta: dict

    def row(self, agent: str, prompt_set: str) -> EvaluationRow:
        for r in self.rows:
            if r.agent == agent and r.prompt_set == prompt_set:
                return r
        raise KeyError(f"No row for agent {agent!r} on {prompt_set!r}.")

    # -------------------------------------------------------------- files
    def to_json(self, path: str | Path) -> Path:
        """Everything: meta, references and rows (with their action counts); NaN written as null."""
        doc = {"meta": self.meta, "references": {k: asdict(v) for k, v in self.references.items()},
               "rows": [asdict(r) for r in self.rows]}
        path = Path(path)
        path.write_text(json.dumps(_nan_to_none(doc), indent=1) + "\n")
        return path

    def to_csv(self, path: str | Path) -> Path:
        """One line per agent and prompt set, the scalar fields of `EvaluationRow` (NaN written empty)."""
        path = Path(path)
        rows = [r.scalars() for r in self.rows]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[k for k in EvaluationRow.__dataclass_fields__
                                              if k not in ("exit_layers", "spec_lengths", "action_counts")])
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else
                                (f"{v:.10g}" if isinstance(v, float) else v)) for k, v in r.items()})
        return path

    def plot(self, folder: str | Path) -> list[Path]:
        """PNG plots into ``folder``: ``speedup.png`` (grouped bars per prompt set, the oracle and best static
        marked by lines) and ``actions-<set>.png`` (per agent, the share of its steps at each exit layer and
        requested ``k > 0``; its share of ``k = 0`` steps in the panel title)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return [_plot_speedup(self, folder / "speedup.png")] + [
            _plot_actions(self, ps, folder / f"actions-{_slug(ps)}.png") for ps in self.references]

    def save(self, folder: str | Path) -> dict[str, Path]:
        """``results.json``, ``results.csv`` and the plots into ``folder`` (made if missing)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = {"json": self.to_json(folder / "results.json"), "csv": self.to_csv(folder / "results.csv")}
        for p in self.plot(folder):
            out[p.stem] = p
        return out

    # -------------------------------------------------------------- tables
    def tables(self) -> list:
        """One `rich.table.Table` per prompt set."""
        from rich.table import Table

        out = []
        for ps, ref in self.references.items():
            train = (f"best static fitted on train L{ref.train_static[0]} k{ref.train_static[1]}: "
                     f"{ref.train_static_speedup:.3f}x" if ref.train_static else "no training traces")
            t = Table(title=f"{ps}: {ref.episodes} prompts, {ref.tokens} tokens\noracle {ref.oracle_speedup:.3f}x; "
                            f"{train}; best static in hindsight L{ref.hindsight_static[0]} "
                            f"k{ref.hindsight_static[1]}: {ref.hindsight_static_speedup:.3f}x",
                      caption=f"speedup: {SPEEDUP_DEFINITION}.\n{SHARE_DEFINITION}.\n"
                              "spec: share of steps with k > 0; L, k, drafted: means over those speculative steps; "
                              "accept: accepted / drafted tokens;\nµs/step: the agent's own time per step "
                              f"(predict and hooks). Latency profile {ref.profile}.", caption_justify="left")
            names = [r.agent for r in self.rows if r.prompt_set == ps]
            t.add_column("agent", no_wrap=True, min_width=max([5] + [len(n) for n in names]))
            for col in ("mean return", "speedup", "share of oracle gain", "tok/step", "spec", "L", "k", "drafted", "accept",
                        "µs/step"):
                t.add_column(col, justify="right", no_wrap=True)
            for r in (r for r in self.rows if r.prompt_set == ps):
                t.add_row(r.agent, _fmt(r.mean_return, ".2f"), _fmt(r.speedup, ".3f", "x"), _fmt(r.share, ".3f"),
                          _fmt(r.tokens_per_step, ".2f"), _fmt(100 * r.speculative_steps, ".0f", "%"),
                          _fmt(r.mean_exit_layer, ".1f"), _fmt(r.mean_k, ".2f"), _fmt(r.mean_drafted, ".2f"),
                          _fmt(r.acceptance, ".2f"), _fmt(r.predict_us, ".1f"))
            out.append(t)
        return out


def _fmt(x: float, spec: str, unit: str = "") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{spec}}{unit}"


def _nan_to_none(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", name).strip("-") or "set"


def default_out_folder(root: str | Path = "results") -> Path:
    """``results/evaluate-<YYYYmmdd-HHMMSS>`` (local time)."""
    return Path(root) / f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}"


# ------------------------------------------------------------------------------------------ the computation
class _Totals:
    """Sums over one agent's episodes on one prompt set."""

    def __init__(self, base) -> None:
        self.table = np.asarray(base.cost_table, dtype=np.float64)
        self.c_ar = float(base.c_ar)
        self.exits = tuple(int(x) for x in base.exit_layers)
        self.ks = tuple(int(x) for x in base.config.spec_lengths)
        self.counts = np.zeros((len(self.exits), len(self.ks)), dtype=np.int64)
        self.episodes: list[Rollout] = []
        self.steps = self.tokens = 0
        self.ar_time = self.cost = self.predict = 0.0
        self.spec_steps = self.drafted = self.accepted = self.stopped = 0
        self.sum_L = self.sum_k = 0

    def add(self, ep) -> None:
        acts = np.asarray(ep.actions, dtype=np.int64)
        j, kidx = acts[:, 0], acts[:, 1]
        drafted = ep.info_array("drafted", np.int64)[1:]           # row 0 is the reset's
        n = int(ep.info_array("tokens", np.int64)[1:].sum())
        cells = np.zeros(self.table.shape)          # steps per (exit column, drafted), priced like lede_env.oracle
        np.add.at(cells, (j, drafted), 1)
        np.add.at(self.counts, (j, kidx), 1)
        cost = float((cells * self.table).sum())
        self.episodes.append(Rollout(episode_return=ep.episode_return, tokens=n, total_cost=cost,
                                     speedup=n * self.c_ar / cost if n else 1.0, steps=ep.steps))
        self.cost += cost
        self.ar_time += n * self.c_ar
        self.tokens += n
        self.steps += ep.steps
        self.predict += ep.predict_seconds
        k = np.asarray(self.ks)[kidx]
        spec = k > 0
        self.spec_steps += int(spec.sum())
        self.sum_L += int(np.asarray(self.exits)[j][spec].sum())
        self.sum_k += int(k[spec].sum())
        self.drafted += int(drafted.sum())
        self.accepted += int(ep.info_array("accepted", np.int64)[1:].sum())
        self.stopped += int((spec & (ep.info_array("stop_rule", object)[1:] != "none")).sum())

    def row(self, spec: AgentSpec, prompt_set: str, oracle_return: float) -> EvaluationRow:
        nan = float("nan")
        ratio = lambda a, b: a / b if b else nan  # noqa: E731
        total_return = _saved_tokens(self.ar_time, self.cost, self.c_ar)
        return EvaluationRow(
            agent=spec.label, kind=spec.kind, source=spec.source, prompt_set=prompt_set,
            episodes=len(self.episodes), steps=self.steps, tokens=self.tokens,
            mean_return=float(np.mean([e.episode_return for e in self.episodes])) if self.episodes else nan,
            speedup=aggregate_speedup(self.episodes),
            share=total_return / oracle_return if oracle_return > 0 else nan,
            tokens_per_step=ratio(self.tokens, self.steps), speculative_steps=ratio(self.spec_steps, self.steps),
            mean_exit_layer=ratio(self.sum_L, self.spec_steps), mean_k=ratio(self.sum_k, self.spec_steps),
            mean_drafted=ratio(self.drafted, self.spec_steps), acceptance=ratio(self.accepted, self.drafted),
            stop_rule_steps=ratio(self.stopped, self.spec_steps), predict_us=1e6 * ratio(self.predict, self.steps),
            ar_time=self.ar_time, total_cost=self.cost, total_return=total_return, exit_layers=self.exits,
            spec_lengths=self.ks, action_counts=tuple(tuple(int(c) for c in r) for r in self.counts))


def _saved_tokens(ar_time: float, cost: float, c_ar: float) -> float:
    """``R = sum_i (N_i - C_i / c_ar)`` from ``sum_i N_i c_ar`` and ``sum_i C_i``: the total return at ``lam = 1``.
    The rows and the oracle's reference both compute it so (sums per episode, then over episodes in order), so that
    the oracle agent's share is exactly 1."""
    return (ar_time - cost) / c_ar


def _reference(ps: PromptSetSpec, base, trs, ctx: ZooContext) -> Reference:
    """The yardsticks of ``ps`` on its stepped test traces ``trs`` (restricted to the exit layers of the environment
    ``base``), under ``base``'s action lists and costs; ``ctx`` holds the best static setting fitted on the training
    traces (or none)."""
    exits = tuple(base.exit_layers)
    ks = tuple(base.config.spec_lengths)
    table = np.asarray(base.cost_table, dtype=np.float64)
    stops = None if base.stop_rules is None else list(base.stop_rules)
    results = [solve(t, table, ks, stop_rules=stops) for t in trs]   # the ceiling of the agents' action space
    c_ar = float(base.c_ar)
    ar_time = sum(r.tokens * c_ar for r in results)
    cost = sum(r.total_cost for r in results)
    j, kidx, hs = best_static(trs, table, ks)
    train_static = train_speed = None
    if ctx.best_static is not None:
        fitted = ctx.best_static
        fj = exits.index(int(fitted.exit_layer))
        train_static = (int(fitted.exit_layer), int(fitted.k))
        train_speed = aggregate_speedup([rollout_static(t, table, fj, int(fitted.k)) for t in trs])
    return Reference(prompt_set=ps.name, traces=ps.traces, train_traces=ps.train_traces, episodes=len(trs),
                     tokens=int(sum(r.tokens for r in results)), c_ar=c_ar, profile=str(base.profile.key),
                     oracle_speedup=aggregate_speedup(results), oracle_return=_saved_tokens(ar_time, cost, c_ar),
                     hindsight_static=(exits[j], ks[kidx]), hindsight_static_speedup=float(hs),
                     train_static=train_static, train_static_speedup=train_speed)


def evaluate(agents: Sequence[str] | str, prompt_sets: Sequence[str] | str, *,
             traces: Sequence[str] | str | None = None, train_traces: Sequence[str] | str | None = None,
             limit: int | None = None, progress: bool = True, env_kwargs: dict | None = None,
             ray: str | None = None, workers: int = 2) -> EvaluationResult:
    """Run every agent on every selected test prompt of every prompt set and return the rows (module docstring).

    Args:
        agents: zoo names, ``static-L<L>-k<k>``, saved agents' folders, or ``"all"`` (`resolve_agents`).
        prompt_sets: e.g. ``["mixed:test", "humaneval:test"]`` (`resolve_prompt_sets`).
        traces: the test trace files, one per prompt set (default: the shipped ones).
        train_traces: the training trace files the fitted agents are fitted on: one for all prompt sets or one per
            prompt set (default: the shipped ``<set>:train`` ones, when they exist).
        limit: only the first ``limit`` prompts of each trace set (traces of a single token, which have no step,
            are skipped).
        progress: a tqdm bar over agents x prompts (on stderr).
        env_kwargs: more ``gym.make`` arguments (``profile``, ``spec_lengths``, ``exit_layers``, ``lam``); saved
            agents get their own action lists whatever these say.
        ray: a Ray address, or ``"local"`` for a one-machine cluster: the agents run on ``workers`` Ray workers
            (`lede_env.distributed`), one agent on one prompt set per task. Not split further by prompt: some agents
            carry state from episode to episode (the bandit learns, the random agent's generator runs on), so their
            episodes must run in order for the rows to equal the single-process ones, which they do (every field
            but ``predict_us``).
    """
    from tqdm import tqdm

    import lede_env  # noqa: F401  (registers the ids)

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
        with tag_argument("limit"):
            raise ValueError(f"limit must be an integer >= 1, got {limit!r}.")
    specs = resolve_agents(agents)
    sets = resolve_prompt_sets(prompt_sets, traces, train_traces)
    extra = dict(env_kwargs or {})
    for key in ("backend", "traces"):
        if key in extra:
            raise ValueError(f"env_kwargs may not set {key!r}: the evaluation replays the prompt sets' traces.")
    base_kwargs = {"stop_rules": "default", **extra}
    t_start = time.time()

    plan = []            # (prompt set, agent spec, env, agent)
    made = []            # every environment, closed at the end
    references: dict[str, Reference] = {}
    indices: dict[str, list[int]] = {}
    for ps in sets:
        envs: dict[tuple, Any] = {}

        def env_for(spec: AgentSpec, ps=ps, envs=envs):
            if spec.env_key not in envs:
                envs[spec.env_key] = _make_env(ps, spec, base_kwargs)
                made.append(envs[spec.env_key])
            return envs[spec.env_key]

        main = env_for(AgentSpec(label="", source="", kind=""))
        ctx = ZooContext.from_traces(main, ps.train_traces) if ps.train_traces else ZooContext()
        trs = replay_traces(main)        # one per prompt index, at the environment's exit layers
        chosen = range(len(trs)) if limit is None else range(min(int(limit), len(trs)))
        indices[ps.name] = [i for i in chosen if trs[i].length > 1]
        references[ps.name] = _reference(ps, main.unwrapped, [trs[i] for i in indices[ps.name]], ctx)
        for spec in specs:
            env = env_for(spec)
            plan.append((ps, spec, env, build_agent(spec, env, ps, ctx)))

    rows: list[EvaluationRow] = []
    try:
        if ray is None:
            total = sum(len(indices[ps.name]) for ps, *_ in plan)
            with tqdm(total=total, disable=not progress, unit="episode", dynamic_ncols=True) as bar:
                for ps, spec, env, agent in plan:
                    bar.set_description(f"{spec.label} on {ps.name}")
                    rows.append(_run_agent(env, agent, spec, ps, indices[ps.name], references[ps.name].oracle_return,
                                           on_episode=lambda: bar.update(1)))
        else:
            from lede_env.distributed import PromptPool

            jobs = [(ps, spec, indices[ps.name], references[ps.name].oracle_return) for ps, spec, *_ in plan]
            pool = PromptPool(functools.partial(_EvaluationWorker, jobs, base_kwargs), workers=workers, address=ray,
                              threads=None)
            try:
                with tqdm(total=len(jobs), disable=not progress, unit="agent x set", dynamic_ncols=True,
                          desc=f"evaluating on {workers} Ray workers") as bar:
                    done = pool.map("run", range(len(jobs)), lambda n, row: bar.update(1))
            finally:
                pool.close()
            rows = [done[n] for n in range(len(jobs))]
    finally:
        for env in made:
            env.close()
    meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "lede_version": lede_env.__version__,
            "agents": [asdict(s) for s in specs], "prompt_sets": [asdict(s) for s in sets], "limit": limit,
            "env_kwargs": base_kwargs, "speedup": SPEEDUP_DEFINITION, "share": SHARE_DEFINITION,
            "seconds": round(time.time() - t_start, 3),
            "reproducible": "every field of every row but predict_us (wall time of the agent)"}
    return EvaluationResult(rows=rows, references=references, meta=meta)


def _make_env(ps: PromptSetSpec, spec: AgentSpec, base_kwargs: dict):
    """The replay environment of prompt set ``ps`` with the action lists agent ``spec`` needs."""
    import gymnasium as gym

    import lede_env  # noqa: F401  (registers the ids)

    kw = dict(base_kwargs)
    if spec.env_key:
        key = spec.env_key
        kw.update(exit_layers=list(key[0]), spec_lengths=list(key[1]),
                  stop_rules=None if key[2] is None else list(key[2]))
    return gym.make(ENV_ID, backend="replay", traces=ps.traces, **kw)


def _run_agent(env, agent, spec: AgentSpec, ps: PromptSetSpec, indices: Sequence[int], oracle_return: float,
               on_episode=lambda: None) -> EvaluationRow:
    """One agent's row on one prompt set: its episodes on ``indices``, in order."""
    from lede_env.rollout import rollout

    totals = _Totals(env.unwrapped)
    for i in indices:
        totals.add(rollout(env, agent, options={"prompt_index": i}, info_keys=_INFO_KEYS))
        on_episode()
    return totals.row(spec, ps.name, oracle_return)


class _EvaluationWorker:
    """A Ray worker of `evaluate`: runs job ``n`` (one agent on one prompt set), building what it needs itself and
    keeping each prompt set's environments and fitted zoo context for its later jobs."""

    def __init__(self, jobs: list, base_kwargs: dict):
        self.jobs, self.base_kwargs = jobs, base_kwargs
        self.envs: dict[tuple, Any] = {}
        self.contexts: dict[str, ZooContext] = {}

    def _env(self, ps: PromptSetSpec, spec: AgentSpec):
        key = (ps.name, spec.env_key)
        if key not in self.envs:
            self.envs[key] = _make_env(ps, spec, self.base_kwargs)
        return self.envs[key]

    def run(self, n: int) -> EvaluationRow:
        ps, spec, indices, oracle_return = self.jobs[n]
        if ps.name not in self.contexts:
            main = self._env(ps, AgentSpec(label="", source="", kind=""))
            self.contexts[ps.name] = ZooContext.from_traces(main, ps.train_traces) if ps.train_traces else ZooContext()
        env = self._env(ps, spec)
        return _run_agent(env, build_agent(spec, env, ps, self.contexts[ps.name]), spec, ps, indices, oracle_return)


def build_agent(spec: AgentSpec, env, ps: PromptSetSpec, ctx: ZooContext):
    """The agent of ``spec`` for ``env`` (zoo agents fitted from ``ctx``); a ``ValueError`` that names the agent and
    the prompt set."""
    try:
        if spec.folder is not None:
            return load(spec.folder, env)
        if spec.arguments is not None:
            return agent_class(spec.kind).from_arguments(env, spec.arguments)
        return build(spec.kind, env, ctx)
    except ValueError as e:
        note = f" (no training traces for {ps.name}: {ps.train_note})" if ps.train_traces is None and \
            ps.train_note else ""
        raise ValueError(f"Cannot build agent {spec.label!r} for {ps.name}: {e}{note}") from None


# ------------------------------------------------------------------------------------------ plots
def _plot_speedup(result: EvaluationResult, path: Path) -> Path:
    sets = list(result.references)
    agents = list(dict.fromkeys(r.agent for r in result.rows))
    fig = new_figure(max(8.0, 3.5 + 0.4 * len(agents) * len(sets)), 4.5)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(agents))
    import matplotlib

    palette = matplotlib.colormaps["tab20"].colors     # 20 distinct colours: agents do not share one
    colors = [palette[i % len(palette)] for i in range(len(agents))]
    for g, ps in enumerate(sets):
        ref = result.references[ps]
        for a, name in enumerate(agents):
            try:
                r = result.row(name, ps)
            except KeyError:
                continue
            x = g - 0.4 + width * (a + 0.5)
            ax.bar(x, r.speedup, width * 0.92, color=colors[a], label=name if g == 0 else None,
                   hatch={"oracle": "xx", "best-static": "//"}.get(r.kind), edgecolor="white", linewidth=0)
        lo, hi = g - 0.45, g + 0.45
        ax.hlines(ref.oracle_speedup, lo, hi, colors="black", linewidth=1.6,
                  label="oracle (hindsight DP)" if g == 0 else None)
        if ref.train_static_speedup is not None:
            ax.hlines(ref.train_static_speedup, lo, hi, colors="dimgray", linestyles="--", linewidth=1.3,
                      label="best static (fitted on train)" if g == 0 else None)
        ax.hlines(ref.hindsight_static_speedup, lo, hi, colors="gray", linestyles=":", linewidth=1.3,
                  label="best static in hindsight (test)" if g == 0 else None)
    ax.axhline(1.0, color="black", linewidth=0.6, alpha=0.5)
    ax.set_xticks(range(len(sets)), sets)
    ax.set_ylabel("speedup over autoregressive (profiled)")
    ax.set_title("Speedup over autoregressive: sum N c_ar / sum cost", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path)
    return path


def _plot_actions(result: EvaluationResult, prompt_set: str, path: Path) -> Path:
    rows = [r for r in result.rows if r.prompt_set == prompt_set]
    cols = min(4, max(1, len(rows)))
    nrows = max(1, math.ceil(len(rows) / cols))
    fig = new_figure(3.2 * cols, 2.9 * nrows)
    fig.suptitle(f"{prompt_set}: share of steps at each exit layer L and requested k > 0")
    for i, r in enumerate(rows):
        ax = fig.add_subplot(nrows, cols, i + 1)
        counts = np.asarray(r.action_counts, dtype=np.float64)
        ks = np.asarray(r.spec_lengths)
        spec = ks > 0
        total = counts.sum()
        share = counts / total if total else counts
        k0 = float(share[:, ~spec].sum()) if total else 0.0
        grid = share[:, spec]
        order = np.argsort(ks[spec])
        im = ax.imshow(grid[:, order], aspect="auto", origin="lower", cmap="viridis", vmin=0,
                       vmax=max(1e-9, float(grid.max()) if grid.size else 1.0))
        if grid.size and grid.max() > 0:
            bar = fig.colorbar(im, ax=ax, shrink=0.9)
            bar.ax.tick_params(labelsize=6)
        else:
            ax.text(0.5, 0.5, "no speculative step", transform=ax.transAxes, ha="center", va="center",
                    color="white", fontsize=8)
        ax.set_title(f"{r.agent} (k=0: {100 * k0:.0f}% of steps)", fontsize=8)
        kvals = ks[spec][order]
        ax.set_xticks(range(len(kvals)), [str(k) for k in kvals], fontsize=6)
        ax.set_yticks(range(len(r.exit_layers)), [str(L) for L in r.exit_layers], fontsize=6)
        ax.set_xlabel("k", fontsize=7)
        ax.set_ylabel("exit layer L", fontsize=7)
    fig.savefig(path)
    return path
