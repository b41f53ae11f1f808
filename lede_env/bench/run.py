"""The protocol of `lede bench` (`run_bench`): every method on the live backend, the methods interleaved prompt by
prompt, Spec-Bench style. `BenchConfig` holds the arguments, validated before any model is loaded.

For each prompt set, in one run over one loaded model:
  1. the environments: a live ``LEDE-v0`` per action-list set the agents need (`agents.evaluation.AgentSpec.env_key`;
     all over the one model, ``LEDEEnv(loaded=...)``), cost model ``"profile"`` (the step prices the clock is compared
     with), ``stop_rules="default"`` for the zoo;
  2. the methods (`lede_env.bench.methods`): plain greedy with our engine (the reference), ``model.generate``,
     Hugging Face's own self-speculation at the exit and draft length found on training prompts (`fit_hf_exit`) with
     its three schedules, then the agents: the zoo's fitted on the prompt set's training traces as `lede evaluate`
     fits them (`agents.evaluation.build_agent`), the shipped or saved trained ones;
  3. ``warmup`` untimed runs of every method on the first prompt;
  4. ``repeats`` rounds over the prompts; on each prompt every method once, the order rotated by one on every prompt
     and reversed on every other, so that machine drift hits every method alike;
  5. per method, from the runs (`lede_env.bench.report.summarise`): tokens/s, speedup (tokens/s over plain greedy's on
     the same prompt and round; median over prompts of the median over rounds, with the spread), tokens per full pass,
     mean exit and draft length, the agent's ``predict`` time, exactness against plain greedy (identical ids, counted
     per prompt), the latency profile's price of the steps taken, and the oracle's modelled speedup per prompt (the
     hindsight optimum on the prompt's replay trace) beside it.

With ``ray`` (`lede bench --ray`) each prompt set is split by prompt over Ray workers, one model each (`_Bench`, what
one process holds too): a worker runs steps 3-4 on its prompt, its rounds back to back, and the driver merges the
runs into the same rows (`run_bench`).

Under ``temperature > 0`` every method samples (our engine by speculative sampling, whose output distribution is the
full model's: ``tests/engine/test_decoder.py`` tests it; transformers by its own), exactness is distributional and
not counted, and the oracle (greedy traces) is left out.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = ["BenchConfig", "DEFAULT_AGENTS", "run_bench", "fit_hf_exit"]

# our best static setting, every heuristic of the zoo, the best stable-baselines3 agent and the LEDE agent
DEFAULT_AGENTS = ("best-static", "hf-heuristic", "hf-dynamic", "draft-verify", "specdec++", "svip", "kangaroo", "del",
                  "swift", "ucb", "sb3", "lede")
HF_LENGTHS = (1, 2, 4)


def _ints(value, name: str, low: int, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    return value


@dataclass(frozen=True)
class BenchConfig:
    """Arguments of `run_bench` (`lede bench`'s options).

    ``prompts``: prompt sets (held-out splits: ``mixed:test``, ``humaneval:test``; a ``.jsonl`` set needs ``traces`` and
    ``train_traces``). ``agents``: zoo names, ``static-L<L>-k<k>``, shipped agents (``lede``, ``sb3``) or saved agents'
    folders. ``limit``: the first prompts of each set. ``repeats`` (>= 1; Spec-Bench asks for 3) and ``warmup`` rounds.
    ``temperature``/``top_p``: sampling instead of greedy. ``hf``: include Hugging Face's rows; ``hf_exit``/``hf_length``
    fix its exit and draft length (default: found on ``hf_train_prompts`` training prompts, ``fit_hf_exit``, among
    ``hf_exits``: default every fourth layer). ``traces``/``train_traces``: one per prompt set (default: the shipped
    ones). ``env``: more ``LEDE-v0`` arguments for every environment (``exit_heads``, ``profile``, ...)."""

    prompts: tuple[str, ...] = ("mixed:test", "humaneval:test")
    agents: tuple[str, ...] = DEFAULT_AGENTS
    limit: int | None = 8
    max_new_tokens: int = 128
    repeats: int = 3
    warmup: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    hf: bool = True
    hf_exit: int | None = None
    hf_length: int | None = None
    hf_exits: tuple[int, ...] | None = None
    hf_train_prompts: int = 2
    hf_train_tokens: int = 32
    model: str = "smollm2-135m"
    traces: tuple[str, ...] | None = None
    train_traces: tuple[str, ...] | None = None
    threads: int = 2
    env: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("prompts", "agents", "traces", "train_traces", "hf_exits"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(x.strip() for x in value.split(",") if x.strip())
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        if not self.prompts:
            raise ValueError("No prompt sets given: e.g. mixed:test,humaneval:test.")
        _ints(self.limit, "limit", 1, allow_none=True)
        _ints(self.max_new_tokens, "max_new_tokens", 2)
        _ints(self.repeats, "repeats", 1)
        _ints(self.warmup, "warmup", 0)
        _ints(self.threads, "threads", 1)
        _ints(self.hf_train_prompts, "hf_train_prompts", 1)
        _ints(self.hf_train_tokens, "hf_train_tokens", 2)
        _ints(self.hf_exit, "hf_exit", 1, allow_none=True)
        _ints(self.hf_length, "hf_length", 1, allow_none=True)
        for L in self.hf_exits or ():
            _ints(L, "hf_exits", 1)
        from lede_env.engine.sampling import SamplingConfig

        SamplingConfig(float(self.temperature), float(self.top_p))
        reserved = {"backend", "prompts", "model", "max_new_tokens", "temperature", "top_p", "threads", "traces",
                    "cost_model"}
        bad = sorted(reserved & set(self.env))
        if bad:
            raise ValueError(f"env may not set {bad}: the bench sets them (its own options do).")
        for name in ("traces", "train_traces"):
            value = getattr(self, name)
            if value is not None and len(value) not in ((1, len(self.prompts)) if name == "train_traces"
                                                        else (len(self.prompts),)):
                raise ValueError(f"{len(value)} {name} files for {len(self.prompts)} prompt sets: give one per prompt "
                                 "set, in the same order.")

    @property
    def sampling(self):
        from lede_env.engine.sampling import SamplingConfig

        return SamplingConfig(float(self.temperature), float(self.top_p))


def fit_hf_exit(model, prompts: Sequence[Sequence[int]], exits: Sequence[int], lengths: Sequence[int],
                max_new_tokens: int, eos_token_id: int | None = None, progress: bool = True
                ) -> tuple[int, int, list[dict]]:
    """Hugging Face's best self-speculative setting on training prompts: every (exit ``L``, ``n``) of ``exits`` x
    ``lengths`` with the constant schedule, timed against plain ``model.generate`` on each prompt, the settings
    interleaved (the order reversed on every other prompt). Returns the ``(L, n)`` with the highest median speedup
    and the table of every setting (``exit``, ``n``, ``speedup``, ``exact``)."""
    from tqdm import tqdm

    from lede_env.bench.methods import HFGenerate

    plain = HFGenerate(model, prompts, max_new_tokens, eos_token_id=eos_token_id)
    cands = [HFGenerate(model, prompts, max_new_tokens, early_exit=L, schedule="constant", num_assistant_tokens=n,
                        eos_token_id=eos_token_id) for L in exits for n in lengths]
    plain.run(0)
    ratios: dict[str, list[float]] = {c.name: [] for c in cands}
    exact: dict[str, int] = {c.name: 0 for c in cands}
    for i in tqdm(range(len(prompts)), desc="HF early exit on training prompts", disable=not progress):
        order = [plain] + cands
        runs = {m.name: m.run(i) for m in (order if i % 2 == 0 else order[::-1])}
        for c in cands:
            ratios[c.name].append(runs[plain.name].seconds / runs[c.name].seconds)
            exact[c.name] += runs[c.name].tokens == runs[plain.name].tokens
    table = [{"exit": c.early_exit, "n": c.n, "speedup": statistics.median(ratios[c.name]),
              "exact": exact[c.name], "prompts": len(prompts)} for c in cands]
    best = max(table, key=lambda r: r["speedup"])
    return int(best["exit"]), int(best["n"]), table


def _train_split(name: str) -> str | None:
    base, _, split = name.partition(":")
    return f"{base}:train" if split in ("train", "test") else None


def _order(methods: list, r: int, i: int, count: int) -> list:
    """The methods' order on prompt ``i`` of round ``r``: rotated by one on every prompt, reversed on every other."""
    shift = (r * count + i) % len(methods)
    order = methods[shift:] + methods[:shift]
    return order if (r + i) % 2 == 0 else order[::-1]


class _Bench:
    """The model and, per prompt set, its environments and methods (built once, on first use): what one process, or one
    Ray worker, of `run_bench` holds."""

    def __init__(self, config: BenchConfig, threads: int | None = None, progress: bool = False):
        import torch

        from agents.evaluation import resolve_agents, resolve_prompt_sets
        from lede_env.engine.limits import check_layer_range
        from lede_env.models import load_model

        self.config, self.progress = config, progress
        self.specs = resolve_agents(config.agents) if config.agents else []
        self.prompt_sets = resolve_prompt_sets(config.prompts, config.traces, config.train_traces)
        self.threads = threads or config.threads
        torch.set_num_threads(self.threads)
        self.loaded = load_model(config.model, dtype=config.env.get("dtype", "float32"),
                                 device=config.env.get("device", "cpu"))
        N = self.loaded[0].config.num_hidden_layers
        if config.hf_exit is not None:
            check_layer_range((config.hf_exit,), N, "hf_exit", config.model)
        self.hf_exits = config.hf_exits or tuple(range(4, N, 4))
        check_layer_range(self.hf_exits, N, "hf_exits", config.model)
        self.made: list = []            # every environment, closed by `close`
        self._sets: dict[int, dict] = {}

    def prompt_set(self, k: int, hf_choice: tuple[int, int] | None = None) -> dict:
        """Prompt set ``k``'s ``methods`` (plain greedy first), ``main`` environment, ``count`` of prompts, ``oracle``
        per prompt and its ``note``, ``hf_fit`` (the search's table, when it ran) and ``hf_choice`` (its exit and
        length; ``hf_choice`` given: used without a search)."""
        if k in self._sets:
            return self._sets[k]
        from agents.evaluation import AgentSpec, build_agent
        from agents.zoo import ZooContext
        from lede_env.bench.methods import AgentMethod, HFGenerate, PlainGreedy
        from lede_env.env import LEDEEnv
        from lede_env.prompts import encode_prompt, load_prompts

        config, ps = self.config, self.prompt_sets[k]
        model, tok = self.loaded
        sampling = config.sampling
        base_kw: dict[str, Any] = {"stop_rules": "default", **config.env, "model": config.model, "backend": "live",
                                   "max_new_tokens": config.max_new_tokens, "threads": self.threads,
                                   "text_in_info": False, "temperature": sampling.temperature, "top_p": sampling.top_p}
        envs: dict[tuple, Any] = {}

        def env_for(spec: AgentSpec):
            key = spec.env_key
            if key not in envs:
                kw = dict(base_kw, prompts=ps.name)
                if key:
                    kw.update(exit_layers=list(key[0]), spec_lengths=list(key[1]),
                              stop_rules=None if key[2] is None else list(key[2]))
                envs[key] = LEDEEnv(loaded=self.loaded, **kw)
                self.made.append(envs[key])
            return envs[key]

        main = env_for(AgentSpec(label="", source="", kind=""))
        ids = main.backend.prompts[: config.limit or None]
        count = len(ids)
        ctx = ZooContext.from_traces(main, ps.train_traces) if ps.train_traces else ZooContext()
        methods: list = [PlainGreedy(main.backend.decoder, ids, config.max_new_tokens, c_ar=main.c_ar),
                         HFGenerate(model, ids, config.max_new_tokens, sampling, eos_token_id=tok.eos_token_id)]
        hf_fit = None
        if config.hf:
            L, n = hf_choice or (config.hf_exit, config.hf_length)
            if L is None or n is None:
                train = _train_split(ps.name)
                if train is None:
                    raise ValueError(f"{ps.name} has no training split to find Hugging Face's exit on: give hf_exit "
                                     "and hf_length (--hf-exit, --hf-length), or leave Hugging Face out (--no-hf).")
                texts = [p.text for p in load_prompts(train)[: config.hf_train_prompts]]
                train_ids = [encode_prompt(tok, t, main.config.chat_template) for t in texts]
                L, n, table = fit_hf_exit(model, train_ids, (L,) if L is not None else self.hf_exits,
                                          (n,) if n is not None else HF_LENGTHS, config.hf_train_tokens,
                                          tok.eos_token_id, self.progress)
                hf_fit = {"prompts": train, "count": len(train_ids), "tokens": config.hf_train_tokens,
                          "chosen": {"exit": L, "n": n}, "table": table}
            hf_choice = (L, n)
            for schedule in ("constant", "heuristic", "dynamic"):
                methods.append(HFGenerate(model, ids, config.max_new_tokens, sampling, early_exit=L, schedule=schedule,
                                          num_assistant_tokens=None if schedule == "dynamic" else n,
                                          eos_token_id=tok.eos_token_id))
        for spec in self.specs:
            env = env_for(spec)
            methods.append(AgentMethod(env, build_agent(spec, env, ps, ctx), spec.label))
        oracle, note = _oracle_per_prompt(ps, main, count, config)
        self._sets[k] = dict(methods=methods, main=main, count=count, oracle=oracle, note=note, hf_fit=hf_fit,
                             hf_choice=hf_choice, warm=False)
        return self._sets[k]

    def describe(self, k: int) -> dict:
        """What the driver of a Ray bench needs of set ``k`` (built here, Hugging Face's setting searched if needed):
        the methods' names and families, the prompt count, the oracle, ``c_ar``, the HF search and choice, and the
        engine's description for the metadata."""
        s = self.prompt_set(k)
        return dict(methods=[(m.name, m.family) for m in s["methods"]], count=s["count"], oracle=s["oracle"],
                    note=s["note"], c_ar=s["main"].c_ar, hf_fit=s["hf_fit"], hf_choice=s["hf_choice"],
                    engine=self.engine())

    def engine(self) -> dict:
        e = self.made[0] if self.made else None
        from lede_env.engine.profile import cpu_signature

        return {"engine_path": e.backend.decoder.path if e else None, "exit_heads": e.heads_kind if e else None,
                "profile": str(e.profile.key) if e else None, "cpu": cpu_signature()}

    def warm_up(self, k: int, on_run=None) -> None:
        """``warmup`` untimed runs of every method of set ``k`` on its first prompt, once; ``on_run()`` after each."""
        s = self.prompt_set(k)
        if not s["warm"]:
            for _ in range(self.config.warmup):
                for m in s["methods"]:
                    m.run(0)
                    if on_run is not None:
                        on_run()
            s["warm"] = True

    def prompt(self, task: tuple[int, int, tuple[int, int] | None]) -> dict[str, list]:
        """A Ray task ``(set, prompt, hf_choice)``: the set's warm-up (once per worker: ``warmup`` runs of every method
        on the set's first prompt), then ``repeats`` rounds of every method on the prompt, the order rotated and
        reversed as in one process (module docstring). Returns ``{method: [Run per round]}``."""
        k, i, hf_choice = task
        s = self.prompt_set(k, hf_choice)
        methods, count = s["methods"], s["count"]
        self.warm_up(k)
        runs: dict[str, list] = {m.name: [] for m in methods}
        for r in range(self.config.repeats):
            for m in _order(methods, r, i, count):
                runs[m.name].append(m.run(i))
        return runs

    def close(self) -> None:
        for env in self.made:
            env.close()
        self.made = []


def run_bench(config: BenchConfig, progress: bool = True, ray: str | None = None, workers: int = 2,
              threads: int = 1):
    """Run the benchmark of `config` (module docstring) and return its `lede_env.bench.report.BenchResult`.

    ``ray``: split every prompt set by prompt over ``workers`` Ray workers (`lede_env.distributed.PromptPool`; a Ray
    address or ``"local"``) of ``threads`` torch threads each, every one with its own model: a worker runs all the
    methods on its prompt, interleaved as here, so each speedup is a ratio taken on one worker; Hugging Face's
    setting is searched once, on the first worker. The rounds of a prompt then run back to back (here: a round over
    all the prompts at a time), and agents that carry statistics across episodes (UCB, SWIFT, Hugging Face's
    heuristic) see only their worker's prompts. Workers sharing a machine share its memory bandwidth: time on
    machines of their own."""
    import torch
    import transformers
    from tqdm import tqdm

    from lede_env.bench.report import BenchResult, summarise

    t_start = time.time()
    load_start = os.getloadavg()
    results, hf_fits = [], {}
    if ray is None:
        bench = _Bench(config, progress=progress)
        try:
            for k, ps in enumerate(bench.prompt_sets):
                s = bench.prompt_set(k)
                methods, count = s["methods"], s["count"]
                if s["hf_fit"]:
                    hf_fits[ps.name] = s["hf_fit"]
                runs: dict[str, list[list]] = {m.name: [[] for _ in range(count)] for m in methods}
                total = len(methods) * (config.warmup + config.repeats * count)
                with tqdm(total=total, desc=f"bench {ps.name}", unit="run", disable=not progress,
                          dynamic_ncols=True) as bar:
                    bench.warm_up(k, on_run=lambda: bar.update(1))
                    for r in range(config.repeats):
                        for i in range(count):
                            for m in _order(methods, r, i, count):
                                bar.set_postfix_str(m.name[:24])
                                runs[m.name][i].append(m.run(i))
                                bar.update(1)
                results.append(summarise(ps.name, methods, runs, s["oracle"], c_ar=s["main"].c_ar,
                                         greedy=config.sampling.greedy, note=s["note"]))
            engine = bench.engine()
        finally:
            bench.close()
    else:
        from functools import partial
        from types import SimpleNamespace

        from agents.evaluation import resolve_prompt_sets
        from lede_env.distributed import PromptPool

        sets = resolve_prompt_sets(config.prompts, config.traces, config.train_traces)
        pool = PromptPool(partial(_Bench, config, threads), workers=workers, address=ray, threads=threads)
        try:
            for k, ps in enumerate(sets):
                d = pool.call_one("describe", k)
                if d["hf_fit"]:
                    hf_fits[ps.name] = d["hf_fit"]
                methods = [SimpleNamespace(name=name, family=family) for name, family in d["methods"]]
                runs = {m.name: [None] * d["count"] for m in methods}
                with tqdm(total=d["count"], desc=f"bench {ps.name} on {workers} Ray workers", unit="prompt",
                          disable=not progress, dynamic_ncols=True) as bar:
                    def on_result(task, value) -> None:
                        for name, rounds in value.items():
                            runs[name][task[1]] = rounds
                        bar.update(1)

                    pool.map("prompt", [(k, i, d["hf_choice"]) for i in range(d["count"])], on_result, keep=False)
                results.append(summarise(ps.name, methods, runs, d["oracle"], c_ar=d["c_ar"],
                                         greedy=config.sampling.greedy, note=d["note"]))
                engine = d["engine"]
        finally:
            pool.close()
    meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": config.model,
            "threads": config.threads if ray is None else threads, **engine,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()},
            "hf_fits": hf_fits, "seconds": round(time.time() - t_start, 1),
            "loadavg_start": [round(x, 2) for x in load_start], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "torch": torch.__version__, "transformers": transformers.__version__}
    if ray is not None:
        meta["ray"] = {"address": ray, "workers": workers, "worker_threads": threads}
    return BenchResult(sets=results, meta=meta)


def _oracle_per_prompt(ps, main, count: int, config: BenchConfig) -> tuple[list[float] | None, str]:
    """The oracle's modelled speedup on each of the first ``count`` prompts (the hindsight optimum on its replay trace,
    priced by the live environment's cost table), or None and the reason."""
    if not config.sampling.greedy:
        return None, "sampling: the oracle's traces are greedy"
    if not ps.traces:
        return None, "no test traces"
    from agents.oracle import replay_traces
    from lede_env.env import LEDEEnv
    from lede_env.oracle import solve

    kw = {k: v for k, v in config.env.items() if k in ("profile", "dtype", "engine_path")}
    replay = LEDEEnv(backend="replay", traces=ps.traces, exit_layers=list(main.exit_layers),
                     spec_lengths=list(main.config.spec_lengths), **kw)
    try:
        if replay.max_new_tokens != config.max_new_tokens:
            return None, (f"the traces were recorded with max_new_tokens={replay.max_new_tokens}, the bench ran "
                          f"{config.max_new_tokens}")
        trs = replay_traces(replay)
    finally:
        replay.close()
    prompts = main.backend.prompts
    if len(trs) < count or any(list(trs[i].prompt_ids) != list(prompts[i]) for i in range(count)):
        return None, f"the traces {ps.traces} hold other prompts than {ps.name}"
    ks = list(main.config.spec_lengths)
    out = []
    for i in range(count):
        r = solve(trs[i], main.cost_table, ks)
        out.append(r.tokens * main.c_ar / r.total_cost if r.total_cost > 0 else 1.0)
    return out, ""
