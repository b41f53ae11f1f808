"""The methods `lede bench` times, each one generation per call: `PlainGreedy` (our engine, ``k = 0``),
`HFGenerate` (Hugging Face ``model.generate``, plain or with its own self-speculation ``assistant_early_exit``) and
`AgentMethod` (an agent on the live ``LEDE-v0``, through the project's one episode loop).

Every ``run(prompt_index)`` returns a `Run` with the same fields, counted the same way for every method:

``tokens``
    the generated ids (the prefill's first token included); ``seconds``: the wall clock of the whole generation,
    prefill included (an agent's ``predict`` and the environment's step included).
``passes``
    full-model forward passes, the prefill counted as one (it produces the first token): tokens per pass is then the
    mean accepted tokens per verification step counting the bonus token, exactly 1.00 for autoregressive decoding.
    For `HFGenerate` it is counted with a forward hook on the model's last decoder layer, which only full passes run
    (transformers' early-exit assistant runs ``layers[:L]``).
``drafted``, ``draft_steps``, ``exit_sum``
    tokens drafted, steps that drafted, and the sum of their exit layers. `HFGenerate` counts the drafts as the calls
    of layer ``L``'s last module beyond the full passes (each assistant call drafts one token), and every pass as a
    drafting step at exit ``L``.
``produced``
    tokens per step (engine and agents; empty for `HFGenerate`, whose steps are not observed one by one).
``modelled_cost``
    the latency profile's price of the steps taken (`AgentMethod`: the environment's ``info["cost"]`` under
    ``cost_model="profile"``; `PlainGreedy`: its steps at ``c_ar``), None for `HFGenerate`.

Model code (torch, transformers); it knows no agent class: agents act through ``predict`` and the Gymnasium API.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = ["Run", "PlainGreedy", "HFGenerate", "AgentMethod", "HF_SCHEDULES"]

HF_SCHEDULES = ("constant", "heuristic", "dynamic")


@dataclass(frozen=True)
class Run:
    """One generation by one method (module docstring: how each field is counted)."""

    tokens: list[int]
    seconds: float
    passes: int
    drafted: int = 0
    draft_steps: int = 0
    exit_sum: int = 0
    produced: list[int] = field(default_factory=list, repr=False)
    predict_seconds: float = 0.0
    modelled_cost: float | None = None


def _clock(device) -> float:
    """``time.perf_counter()`` once the device's queued work is done (a no-op on CPU): every timing ends on it."""
    from lede_env.engine.decoder import _sync

    _sync(device)
    return time.perf_counter()


class PlainGreedy:
    """Plain autoregressive decoding with our engine (the reference every speedup is divided by): one full pass per
    token, ``SelfSpeculativeDecoder.generate(ids, n, k=0)``. Under a sampling decoder it samples."""

    family = "engine"

    def __init__(self, decoder, prompts: Sequence[Sequence[int]], max_new_tokens: int, c_ar: float | None = None,
                 name: str = "plain greedy (engine)"):
        self.decoder, self.prompts, self.max_new_tokens, self.c_ar, self.name = (
            decoder, prompts, int(max_new_tokens), c_ar, name)

    def run(self, prompt_index: int) -> Run:
        ids = self.prompts[prompt_index]
        t0 = _clock(self.decoder.device)
        out, steps = self.decoder.generate(ids, self.max_new_tokens, exit_layer=1, k=0)
        seconds = _clock(self.decoder.device) - t0
        return Run(tokens=list(out), seconds=seconds, passes=len(steps) + 1, produced=[s.produced for s in steps],
                   modelled_cost=None if self.c_ar is None else len(steps) * self.c_ar)


class HFGenerate:
    """``model.generate`` of transformers: plain (``early_exit=None``) or self-speculative with
    ``assistant_early_exit=L`` and one of its schedules, set on ``model.generation_config`` for the call (the
    documented way; `generate` keywords would not reach the assistant's copy of the config) and restored after:

    ``constant``
        ``num_assistant_tokens = n`` drafts every step, ``num_assistant_tokens_schedule = "constant"``, the
        confidence stop off (``assistant_confidence_threshold = 0``).
    ``heuristic``
        ``num_assistant_tokens_schedule = "heuristic"`` starting from ``n`` (+2 after a fully accepted draft, -1
        otherwise), the confidence stop off.
    ``dynamic``
        the confidence stop: drafting stops after a draft token whose probability is below
        ``assistant_confidence_threshold`` (default 0.4, Hugging Face's), at most ``n`` (default 20, Hugging Face's
        ``num_assistant_tokens``) per step, constant schedule. transformers 5 re-fits the threshold on a ROC curve only
        for a separate assistant model (``type(self) is AssistedCandidateGenerator``) and with scikit-learn installed,
        so with ``assistant_early_exit`` the threshold stays at the value set.

    ``sampling``: a `lede_env.engine.sampling.SamplingConfig`; greedy (``do_sample=False``) when it is greedy."""

    family = "hf"

    def __init__(self, model, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling=None,
                 early_exit: int | None = None, schedule: str = "constant", num_assistant_tokens: int | None = None,
                 confidence_threshold: float = 0.4, eos_token_id: int | None = None, name: str | None = None):
        if schedule not in HF_SCHEDULES:
            raise ValueError(f"schedule must be one of {HF_SCHEDULES}, got {schedule!r}.")
        N = model.config.num_hidden_layers
        if early_exit is not None and not 1 <= int(early_exit) <= N - 1:
            raise ValueError(f"The Hugging Face early exit {early_exit} is out of range: this model has {N} layers, so "
                             f"exits run from 1 to {N - 1}.")
        self.model, self.prompts, self.max_new_tokens = model, prompts, int(max_new_tokens)
        self.sampling, self.early_exit, self.schedule = sampling, early_exit, schedule
        self.n = int(num_assistant_tokens if num_assistant_tokens is not None else
                     (20 if schedule == "dynamic" else 3))
        self.threshold = float(confidence_threshold)
        self.eos_token_id = eos_token_id
        if name is None:
            name = "model.generate" if early_exit is None else self.default_name(int(early_exit), schedule, self.n,
                                                                                  self.threshold)
        self.name = name

    @staticmethod
    def default_name(exit_layer: int, schedule: str, n: int, threshold: float) -> str:
        what = {"constant": f"n={n}", "heuristic": f"from n={n}", "dynamic": f"p<{threshold:g}, max {n}"}[schedule]
        return f"HF early exit L{exit_layer} {schedule} ({what})"

    def _config(self):
        g = copy.deepcopy(self.model.generation_config)
        if self.eos_token_id is not None:
            g.eos_token_id = self.eos_token_id
        if g.pad_token_id is None:
            g.pad_token_id = g.eos_token_id if isinstance(g.eos_token_id, int) else 0
        if self.early_exit is not None:
            g.num_assistant_tokens = self.n
            g.num_assistant_tokens_schedule = "heuristic" if self.schedule == "heuristic" else "constant"
            g.assistant_confidence_threshold = self.threshold if self.schedule == "dynamic" else 0.0
        return g

    def run(self, prompt_index: int) -> Run:
        import torch

        ids = self.prompts[prompt_index]
        layers = self.model.model.layers
        calls = {"full": 0, "exit": 0}

        def count(key):
            def hook(module, args, output):
                calls[key] += 1
            return hook

        handles = [layers[-1].register_forward_hook(count("full"))]
        if self.early_exit is not None:
            handles.append(layers[int(self.early_exit) - 1].register_forward_hook(count("exit")))
        saved = self.model.generation_config
        self.model.generation_config = self._config()
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if self.sampling is not None and not self.sampling.greedy:
            kwargs.update(do_sample=True, temperature=self.sampling.temperature, top_p=self.sampling.top_p, top_k=0)
        else:
            kwargs["do_sample"] = False
        if self.early_exit is not None:
            kwargs["assistant_early_exit"] = int(self.early_exit)
        x = torch.tensor([list(ids)], device=self.model.device)
        try:
            t0 = _clock(self.model.device)
            with torch.inference_mode():
                out = self.model.generate(x, attention_mask=torch.ones_like(x), **kwargs)
            seconds = _clock(self.model.device) - t0
        finally:
            self.model.generation_config = saved
            for h in handles:
                h.remove()
        tokens = out[0, len(ids):].tolist()
        passes = calls["full"]
        drafted = max(0, calls["exit"] - passes) if self.early_exit is not None else 0
        steps = passes if self.early_exit is not None else 0
        return Run(tokens=tokens, seconds=seconds, passes=passes, drafted=drafted, draft_steps=steps,
                   exit_sum=steps * int(self.early_exit or 0))


class AgentMethod:
    """An agent on a live ``LEDE-v0`` (cost model ``"profile"``, so ``info["cost"]`` prices each step by the latency
    profile), one episode per call through `lede_env.rollout.rollout`: the agent's ``predict`` and hooks and the
    environment's observation are in its wall clock, as for any user of the environment."""

    family = "agent"
    _KEYS = ("generated_ids", "tokens", "drafted", "exit_layer", "k", "cost")

    def __init__(self, env, agent, name: str):
        self.env, self.agent, self.name = env, agent, name

    def run(self, prompt_index: int) -> Run:
        from lede_env.rollout import rollout

        device = self.env.unwrapped.backend.decoder.device
        t0 = _clock(device)
        ep = rollout(self.env, self.agent, options={"prompt_index": int(prompt_index)}, info_keys=self._KEYS)
        seconds = _clock(device) - t0
        steps = ep.infos[1:]
        drafting = [i for i in steps if i["drafted"] > 0]
        return Run(tokens=list(ep.infos[-1]["generated_ids"]), seconds=seconds, passes=len(steps) + 1,
                   drafted=sum(i["drafted"] for i in steps), draft_steps=len(drafting),
                   exit_sum=sum(i["exit_layer"] for i in drafting), produced=[i["tokens"] for i in steps],
                   predict_seconds=ep.predict_seconds, modelled_cost=sum(i["cost"] for i in steps))
