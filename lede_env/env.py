"""`LEDEEnv`: self-speculative decoding as a Gymnasium environment (DESIGN.md section 2)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from lede_env.backends.base import BackendStep
from lede_env.engine.limits import check_layer_range, default_exit_layers, default_probe_layers  # noqa: F401
from lede_env.features import FeatureTracker, ObservationLayout
from lede_env.render import LEGEND, mark_text, token_kinds, token_pieces
from lede_env.reward import step_reward

BACKENDS = ("live", "replay")
COST_MODELS = ("profile", "wallclock")
DEFAULT_MAX_NEW_TOKENS = 128


@dataclass(frozen=True)
class EnvConfig:
    """Validated arguments of `LEDEEnv` (all JSON-safe, so `gym.make` kwargs and dataset metadata agree)."""

    model: str = "smollm2-135m"
    prompts: str = "mixed:train"
    backend: str = "live"
    traces: str | None = None
    max_new_tokens: int | None = None   # default 128 (live) or the traces' value (replay)
    chat_template: bool = True
    exit_layers: tuple[int, ...] | None = None
    spec_lengths: tuple[int, ...] = tuple(range(13))
    probe_layers: tuple[int, ...] | None = None
    cost_model: str = "profile"
    profile: str | None = None
    lam: float = 1.0
    exit_heads: str = "default"
    dtype: str = "float32"
    device: str = "cpu"         # live backend: where the model runs ("cuda" for a GPU, bf16 advised)
    engine_path: str = "auto"
    threads: int | None = None
    max_context: int | None = None
    text_in_info: bool | None = None
    stop_rules: tuple[str, ...] | None = None
    prompt_indices: tuple[int, ...] | None = None   # reset draws its prompts from these only (default: all)
    temperature: float = 0.0    # 0: greedy; > 0: speculative sampling (live backend only)
    top_p: float = 1.0          # nucleus sampling under temperature > 0 (live backend only)

    def __post_init__(self) -> None:
        for name in ("model", "prompts", "exit_heads"):   # names, or paths (a local model, a .jsonl, heads)
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))   # JSON-safe
        for name in ("model", "prompts", "exit_heads", "dtype", "device", "engine_path", "backend", "cost_model"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}.")
        for name in ("traces", "profile"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (str, os.PathLike)) or not str(value)):
                raise ValueError(f"{name} must be a path, got {value!r}.")
            if value is not None:
                object.__setattr__(self, name, str(value))   # JSON-safe
        for name in ("chat_template", "text_in_info"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)) and not (name == "text_in_info" and value is None):
                raise ValueError(f"{name} must be true or false, got {value!r}.")
        for name, low in (("max_new_tokens", 2), ("threads", 1), ("max_context", 2)):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                    raise ValueError(f"{name} must be an integer, got {value!r}.")
                if value < low:
                    raise ValueError(f"{name} must be >= {low}, got {value}.")
                object.__setattr__(self, name, int(value))
        for name in ("exit_layers", "spec_lengths", "probe_layers", "prompt_indices"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, (int, str)) or not hasattr(value, "__len__") or len(value) == 0:
                    raise ValueError(f"{name} must be a non-empty list of integers, got {value!r}.")
                if any(isinstance(v, (bool, float, str)) or not isinstance(v, (int, np.integer)) for v in value):
                    raise ValueError(f"{name} must be a non-empty list of integers, got {list(value)!r}.")
                object.__setattr__(self, name, tuple(int(v) for v in value))
        for name in ("exit_layers", "probe_layers"):
            value = getattr(self, name)
            if value is not None and min(value) < 1:
                raise ValueError(f"{name} must be layer numbers >= 1, got {list(value)}.")
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float, np.integer, np.floating)):
            raise ValueError(f"lam must be a number, got {self.lam!r}.")
        if not np.isfinite(self.lam):
            raise ValueError(f"lam must be finite, got {self.lam}.")
        object.__setattr__(self, "lam", float(self.lam))
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or \
                    not np.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}.")
            object.__setattr__(self, name, float(value))
        from lede_env.engine.sampling import SamplingConfig

        SamplingConfig(self.temperature, self.top_p)   # temperature >= 0, top_p in (0, 1]: a clear error
        if self.backend == "replay" and (self.temperature != 0 or self.top_p != 1):
            raise ValueError(f"The replay backend is greedy: its traces hold the greedy continuation, so "
                             f"temperature={self.temperature} and top_p={self.top_p} cannot be replayed. Sample on "
                             "backend='live', or leave temperature at 0 and top_p at 1.")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}.")
        if self.cost_model not in COST_MODELS:
            raise ValueError(f"cost_model must be one of {COST_MODELS}, got {self.cost_model!r}.")
        if self.backend == "replay" and self.cost_model == "wallclock":
            raise ValueError("The replay backend has no wall clock: use cost_model='profile' with backend='replay'.")
        if self.backend == "replay" and not self.traces:
            raise ValueError("backend='replay' needs traces=<path of a .npz recorded with `lede trace`>.")
        if self.backend == "live":    # the prompt selection, before any model is loaded (never empty)
            from lede_env.prompts import load_prompts

            load_prompts(self.prompts)
        if min(self.spec_lengths) < 0 or len(set(self.spec_lengths)) != len(self.spec_lengths):
            raise ValueError(f"spec_lengths must be distinct integers >= 0, got {self.spec_lengths}.")
        if self.prompt_indices is not None and (min(self.prompt_indices) < 0
                                                or len(set(self.prompt_indices)) != len(self.prompt_indices)):
            raise ValueError(f"prompt_indices must be distinct prompt numbers >= 0, got {list(self.prompt_indices)}.")
        if self.exit_layers is not None and len(set(self.exit_layers)) != len(self.exit_layers):
            raise ValueError(f"exit_layers must be distinct, got {self.exit_layers}.")
        if self.stop_rules is not None:
            from lede_env.engine.stop_rules import parse_stop_rules

            object.__setattr__(self, "stop_rules", parse_stop_rules(self.stop_rules))
        from lede_env.engine.path_names import resolve_path

        resolve_path(self.engine_path)   # a clear error for an unknown path
        if not self.lam >= 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}.")


class LEDEEnv(gym.Env):
    """Self-speculative decoding of a real Llama model, one decoding step per environment step.

    ## Description
    Each episode is one greedy generation for one prompt. At every step the agent picks an exit layer ``L``
    and a speculation length ``k``: the model drafts ``k`` tokens with its first ``L`` layers (plus an exit head,
    the final norm and the LM head), verifies them with one full forward pass and keeps the longest matching
    prefix plus one token. The output is always exactly the plain greedy output; only the time changes.
    With ``temperature > 0`` (live backend only) the episode is one *sampled* generation by speculative sampling:
    drafts are accepted by the speculative-sampling rule, so the output follows the full model's own (temperature,
    top-p) distribution exactly; ``reset`` seeds the sampler from ``self.np_random``.

    ## Action Space
    ``MultiDiscrete([len(exit_layers), len(spec_lengths)])``: an index into ``exit_layers`` and one into
    ``spec_lengths`` (``k = 0`` is a plain autoregressive step; the exit layer is then irrelevant).
    `lede_env.wrappers.FlattenAction` turns it into ``Discrete(len(exit_layers) * len(spec_lengths))``.

    With ``stop_rules`` (a list such as ``["none", "p<0.6", "prod<0.7", "H>2"]``, or ``"default"``:
    `lede_env.engine.stop_rules`), the draft length is decided *while* drafting: the action is
    ``MultiDiscrete([J, K, len(stop_rules)])`` and its third index picks the rule that stops the draft from its own
    confidence, ``k`` being the cap. Live, the output is still exactly the greedy output. In replay, the accepted
    counts and the tokens produced are exact; the drafted count (and so the cost) is exact up to the first rejected
    draft and approximate past it (`lede_env.traces.Trace.drafted_under` says which approximation;
    ``benchmarks/stop_rules_replay.py`` measures it against live).

    ## Observation Space
    ``Box(low, high, (8 + P + J,), float32)`` of local-context features, documented in `lede_env.features`
    (``env.unwrapped.layout.table()`` prints index, name and range): the last action and its acceptance, the
    full model's confidence and entropy, the draft's confidence, probe layers' cosine similarity to the final
    hidden state, a running acceptance rate per exit layer and the budget used.

    ## Rewards
    ``r = n - lam * cost / c_ar``: ``n`` tokens produced by the step, ``cost`` its cost and ``c_ar`` the cost of
    one plain autoregressive step under the same cost model (``"profile"``: the stored latency profile,
    deterministic; ``"wallclock"``: measured). With ``lam = 1`` the return is the number of tokens saved
    versus autoregressive decoding, and the speedup of an episode is ``N / (N - return)``.

    ## Starting State
    ``reset`` picks a prompt with ``self.np_random`` (or ``options={"prompt_index": i}``), prefills it (its cost
    is not in the reward; its wall time is in ``env.unwrapped.timing["prefill_time"]``) and the full model's
    first token becomes pending. If the prefill alone ends the generation (EOS first), the next prompt is taken.

    ## Info
    The same keys at ``reset`` and every ``step``: ``prompt_index``, ``tokens`` (produced by the step), ``accepted``,
    ``drafted``, ``cost`` (seconds, under the cost model), ``c_ar``, ``exit_layer``, ``k`` (-1 at reset),
    ``stop_rule`` (the rule the step drafted under, ``"none"`` without one or at reset), ``draft_maxprob`` (the
    draft's max probability of each draft token on the committed prefix: the accepted drafts and the first rejected
    one; empty when nothing was drafted), ``prompt_ids`` (the tokens fed, after any chat template),
    ``generated_ids`` and ``text`` (their decoding).
    The wall-clock variant adds ``wall_time`` and ``prefill_time``; ``LEDE-v0`` keeps measured times out of
    ``info`` (in ``env.unwrapped.timing``) so that its steps are deterministic.

    ## Public attributes (what agents may read)
    ``config`` (the `EnvConfig`: ``spec_lengths``, ``backend``, ``traces``, ``lam``, ...), ``exit_layers``,
    ``stop_rules`` (tuple or None), ``layout`` (the observation layout),
    ``cost_table`` (profiled cost in seconds of a step at exit index ``j`` that drafted ``d`` tokens,
    ``cost_table[j, d]``; None under the wall clock), ``c_ar`` (cost of an autoregressive step), ``max_new_tokens``,
    ``num_layers``.

    ## Episode End
    ``terminated`` at EOS or after ``max_new_tokens`` generated tokens; ``truncated`` when the context window
    is full.

    ## Arguments
    ``model`` ("smollm2-135m", "tiny-random" or a local Llama directory), ``prompts`` (a prompt set with optional
    split such as "mixed:train" or "humaneval:test", or a .jsonl path), ``backend`` ("live" or "replay"),
    ``traces`` (replay: path of a trace file from `lede trace`), ``max_new_tokens``, ``chat_template``,
    ``exit_layers``, ``spec_lengths``, ``probe_layers``, ``cost_model``, ``profile`` (path of a latency profile
    JSON; default: the stored one for this model and machine), ``lam``, ``exit_heads`` ("default", "identity"
    or a path), ``dtype``, ``engine_path`` (execution path of the engine: "auto", "eager", "fast", ...; live
    backend, and the latency profile looked up for either backend), ``threads``, ``max_context``, ``text_in_info``
    (decode the text into ``info`` at every step; default on for live, off for replay where it would dominate the
    step time), ``stop_rules`` (adaptive drafting inside a step, above), ``prompt_indices`` (the prompts ``reset``
    draws from, by index; default all: how a training set holds prompts out for evaluation), ``temperature`` and
    ``top_p`` (live backend: speculative sampling; default 0 and 1, greedy; the replay backend is greedy and refuses
    them), ``render_mode`` ("ansi"). Not a configuration field: ``loaded``, an already loaded ``(model, tokenizer)``
    of ``model`` for the live backend to decode with instead of loading it (several environments over one model, as
    `lede bench` builds them; construct ``LEDEEnv(loaded=..., ...)`` directly, since ``gym.make`` would keep the model
    in the environment's spec).

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None, loaded: tuple | None = None, **kwargs: Any):
        self.config = cfg = EnvConfig(**kwargs)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}.")
        if loaded is not None and cfg.backend != "live":
            raise ValueError("loaded=(model, tokenizer) is for the live backend; the replay backend loads no model.")
        self.render_mode = render_mode
        self._tokenizer = None
        if cfg.backend == "live":
            self._init_live(cfg, loaded)
        else:
            self._init_replay(cfg)
        J, K = len(self.exit_layers), len(cfg.spec_lengths)
        self.stop_rules = cfg.stop_rules
        self._stops = None
        if cfg.stop_rules is not None:
            from lede_env.engine.stop_rules import parse_stop_rule

            self._stops = [parse_stop_rule(r) for r in cfg.stop_rules]
            self._stops = [None if r.kind == "none" else r for r in self._stops]
            if cfg.backend == "replay" and any(r is not None and r.needs_entropy for r in self._stops) and \
                    not all(tr.has_entropy for tr in self.backend.traces.traces):
                raise ValueError(f"{cfg.traces} has no draft entropies (trace format 1): re-record it with `lede "
                                 "trace`, or leave the entropy rules (H>...) out of stop_rules.")
        self.action_space = spaces.MultiDiscrete([J, K] if self._stops is None else [J, K, len(self._stops)])
        self.layout = ObservationLayout(self.exit_layers, cfg.spec_lengths, self.probe_layers, self.vocab_size)
        low, high = self.layout.bounds()
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.features = FeatureTracker(self.layout)
        self.text_in_info = cfg.text_in_info if cfg.text_in_info is not None else cfg.backend == "live"
        self._wallclock = cfg.cost_model == "wallclock"
        self._nvec = (J, K) if self._stops is None else (J, K, len(self._stops))
        self._c_ar = self._cost_of_ar()
        self._generated: list[int] = []
        self._kinds: list[tuple[int, int, int]] = []
        n = self.backend.num_prompts
        if cfg.prompt_indices is not None and max(cfg.prompt_indices) >= n:
            raise ValueError(f"prompt_indices {[i for i in cfg.prompt_indices if i >= n]} out of range: the prompt set "
                             f"has {n} prompts (0..{n - 1}).")
        self._pool = list(cfg.prompt_indices) if cfg.prompt_indices is not None else list(range(n))

    # ------------------------------------------------------------------ construction
    def _init_live(self, cfg: EnvConfig, loaded: tuple | None = None) -> None:
        from lede_env.backends.live import LiveBackend
        from lede_env.prompts import load_prompts
        from lede_env.wiring import build_decoder

        self.prompt_list = load_prompts(cfg.prompts)   # before the model: a bad selection fails at once
        from lede_env.engine.sampling import SamplingConfig

        setup = build_decoder(cfg.model, heads=cfg.exit_heads, path=cfg.engine_path, dtype=cfg.dtype,
                              probe_layers=cfg.probe_layers, max_context=cfg.max_context,
                              chat_template=cfg.chat_template, threads=cfg.threads,
                              sampling=SamplingConfig(cfg.temperature, cfg.top_p), loaded=loaded, device=cfg.device)
        N = setup.num_layers
        self.exit_layers = check_layer_range(cfg.exit_layers or default_exit_layers(N), N, "exit_layers", cfg.model)
        self.probe_layers = setup.decoder.probe_layers
        self.heads = setup.heads
        for L in self.exit_layers:
            if not self.heads.has(L):
                raise ValueError(f"The exit heads ({self.heads.kind}) have no head for exit layer {L}; they cover "
                                 f"{list(self.heads.layers)}. Choose exit_layers among those or fit heads for them.")
        self._tokenizer = setup.tokenizer
        self.vocab_size = setup.model.config.vocab_size
        self.num_layers = N
        self.max_new_tokens = cfg.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        self.backend = LiveBackend(setup.decoder, setup.encode([p.text for p in self.prompt_list]),
                                   self.max_new_tokens)
        self.heads_kind = self.heads.label

    def _init_replay(self, cfg: EnvConfig) -> None:
        from lede_env.backends.replay import ReplayBackend
        from lede_env.traces import TraceSet

        traces = TraceSet.load(cfg.traces)
        meta = traces.meta
        recorded = tuple(meta["exit_layers"])
        self.exit_layers = cfg.exit_layers or recorded
        missing = [L for L in self.exit_layers if L not in recorded]
        if missing:
            raise ValueError(f"exit_layers {missing} were not recorded in {cfg.traces} (recorded: {list(recorded)}). "
                             "Re-record with `lede trace --exit-layers ...` or choose among the recorded ones.")
        if cfg.probe_layers and tuple(cfg.probe_layers) != tuple(meta["probe_layers"]):
            raise ValueError(f"probe_layers {list(cfg.probe_layers)} differ from the traces' {meta['probe_layers']}.")
        if cfg.max_new_tokens not in (None, meta["max_new_tokens"]):
            raise ValueError(f"The traces were recorded with max_new_tokens={meta['max_new_tokens']}, not "
                             f"{cfg.max_new_tokens}: re-record them or leave max_new_tokens unset.")
        self.probe_layers = tuple(meta["probe_layers"])
        self.vocab_size = int(meta["vocab_size"])
        self.num_layers = int(meta["num_layers"])
        self.heads_kind = meta["exit_heads"]
        self.trace_meta = meta
        self.backend = ReplayBackend(traces, self.exit_layers)
        self.prompt_list = None
        self.max_new_tokens = int(meta["max_new_tokens"])

    @property
    def c_ar(self) -> float:
        """Cost in seconds of one plain autoregressive step under the cost model."""
        return self._c_ar

    def _cost_of_ar(self) -> float:
        cfg = self.config
        if cfg.cost_model == "wallclock":
            self.cost_table = None
            return self.backend.measure_ar_cost()
        from lede_env.engine.profile import LatencyProfile, find_profile

        if cfg.profile:
            self.profile = LatencyProfile.load(cfg.profile)
        else:
            model = cfg.model if cfg.backend == "live" else self.trace_meta["model"]
            dtype = cfg.dtype if cfg.backend == "live" else self.trace_meta["dtype"]
            device = cfg.device if cfg.backend == "live" else self.trace_meta.get("device", "cpu")
            self.profile = find_profile(model, dtype, device.split(":")[0], cfg.threads or 2, cfg.engine_path,
                                        self.heads_kind)
        if cfg.backend == "live":
            self.profile.check_build(self.backend.decoder.stack.build)
        if self.profile.num_layers != self.num_layers:
            raise ValueError(f"The latency profile is for a {self.profile.num_layers}-layer model, this one has "
                             f"{self.num_layers}.")
        kmax = max(cfg.spec_lengths)
        self.cost_table = self.profile.cost_table(self.exit_layers, kmax)
        self.cost_table.setflags(write=False)
        self._cost_rows = self.cost_table.tolist()  # Python floats: no numpy indexing per step
        return self.profile.c_ar

    # ------------------------------------------------------------------ Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        n = self.backend.num_prompts
        if "prompt_index" in options:
            index = int(options["prompt_index"])
            if not 0 <= index < n:
                raise ValueError(f"prompt_index {index} out of range: the prompt set has {n} prompts.")
        else:
            index = self._pool[int(self.np_random.integers(len(self._pool)))]
        r = self.backend.reset(index) if self.config.backend == "replay" else self.backend.reset(
            index, seed=int(self.np_random.integers(2**31)))
        tries = 0
        while r.done and "prompt_index" not in options and tries < 100:  # the prefill already ended it: next prompt
            index = self._pool[(self._pool.index(index) + 1) % len(self._pool)] if index in self._pool else index
            r = self.backend.reset(index)
            tries += 1
        if r.done:
            raise ValueError(f"Prompt {index} ends at its first token (EOS or budget): no step to take.")
        self._prompt_index = index
        self._prompt_ids = list(r.prompt_ids)
        self._generated = [r.first_token]
        self._kinds = []
        self._prefill_time = r.prefill_time
        obs = self.features.reset(1, self.max_new_tokens)
        info = self._info(None, 0.0)
        return obs, info

    def step(self, action):
        j, kidx, sidx = self._action_indices(action)
        cfg = self.config
        L, k = self.exit_layers[j], cfg.spec_lengths[kidx]
        stop = self._stops[sidx] if self._stops is not None else None
        s = self.backend.step(L, k, stop)
        n = len(s.tokens)
        cost = s.wall_time if self._wallclock else self._cost_rows[j][s.drafted]
        reward = step_reward(n, cost, self._c_ar, cfg.lam)
        self._generated.extend(s.tokens)
        self._kinds.append((s.drafted, s.accepted, n))
        verified = None if stop is None else min(s.drafted, s.accepted + 1)   # exact in replay (features docstring)
        obs = self.features.update(s, len(self._generated), self.max_new_tokens, verified)
        return obs, float(reward), bool(s.finished), bool(s.truncated), self._info(s, cost, stop)

    def _action_indices(self, action) -> tuple[int, int, int]:
        """``[exit index, length index(, stop-rule index)]`` as ints (stop index 0 without stop rules), or a
        ``ValueError`` that says what the action space is (the same test as ``action_space.contains`` after a cast
        to int64, without its per-call overhead)."""
        a = action if type(action) is np.ndarray else np.asarray(action)
        nvec = self._nvec
        if a.size == len(nvec) and a.dtype != object:
            try:
                idx = a.reshape(-1).tolist()
                j, kidx, s = int(idx[0]), int(idx[1]), (int(idx[2]) if len(idx) == 3 else 0)
            except (TypeError, ValueError, OverflowError):
                pass
            else:
                if 0 <= j < nvec[0] and 0 <= kidx < nvec[1] and (len(nvec) == 2 or 0 <= s < nvec[2]):
                    return j, kidx, s
        J, K = nvec[:2]
        parts = (f"exit index in 0..{J - 1} (exit layers {list(self.exit_layers)}), length index in 0..{K - 1} "
                 f"(speculation lengths {list(self.config.spec_lengths)})")
        if len(nvec) == 3:
            parts += f", stop-rule index in 0..{nvec[2] - 1} (stop rules {list(self.stop_rules)})"
        raise ValueError(f"Action {action!r} is outside MultiDiscrete({list(nvec)}): give [{parts}]. For a flat "
                         "action use lede_env.wrappers.FlattenAction.")

    def _info(self, s: BackendStep | None, cost: float, stop=None) -> dict:
        """The step's info. ``prompt_ids`` and ``generated_ids`` are fresh lists (an info never changes after
        it was returned); the text is decoded only when ``text_in_info``."""
        text = self._decode(self._generated) if self.text_in_info else ""
        if s is None:
            self.timing = {"wall_time": 0.0, "prefill_time": self._prefill_time}
            info = {"prompt_index": self._prompt_index, "tokens": 0, "accepted": 0, "drafted": 0, "cost": cost,
                    "c_ar": self._c_ar, "exit_layer": -1, "k": -1, "stop_rule": "none", "draft_maxprob": []}
        else:
            self.timing = {"wall_time": s.wall_time or 0.0, "prefill_time": self._prefill_time}
            info = {"prompt_index": self._prompt_index, "tokens": len(s.tokens), "accepted": s.accepted,
                    "drafted": s.drafted, "cost": cost, "c_ar": self._c_ar, "exit_layer": s.exit_layer, "k": s.k,
                    "stop_rule": "none" if stop is None else stop.text, "draft_maxprob": list(s.draft_confidences)}
        info["prompt_ids"] = self._prompt_ids.copy()
        info["generated_ids"] = self._generated.copy()
        info["text"] = text
        if self._wallclock:  # measured times make the info nondeterministic
            info.update(self.timing)
        return info

    # ------------------------------------------------------------------ rendering
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from lede_env.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.trace_meta["model"])
        return self._tokenizer

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        kinds = ["first"] + token_kinds(self._kinds)
        text = mark_text(token_pieces(self.tokenizer, self._generated), kinds, color=True)
        return f"{text}\n({LEGEND})"
