"""Latency profile: the cost of the pieces of a decoding step, measured once per model and machine.

Measured (medians over repeats, at a realistic context length):
  draft_cost[L]    one draft token at exit layer L: embedding, layers 0..L-1, exit head, norm, LM head, pick
  verify_cost[q]   a full-model forward over q = 1..Q positions plus norm, LM head and the accept bookkeeping
  layer_cost[q]    one decoder layer over q positions (the stack's time divided by its depth)
  head_cost[q]     final norm + LM head + confidences over q positions
From them the cost of a step at exit L that drafted d tokens is modelled as

  step_cost(L, d) = d * draft_cost[L] + L * layer_cost[1] + (N - L) * layer_cost[d + 1] + head_cost[d + 1]
                    + overhead            (d > 0: layers below L only process the last draft in verification)
  step_cost(L, 0) = verify_cost[1]        (a plain autoregressive step; this is c_ar)

where ``overhead = verify_cost[1] - N * layer_cost[1] - head_cost[1]`` (embedding, crop, Python). The profile
gives deterministic, reproducible costs for replay, training and tests; `lede profile` measures it.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from lede_env.paths import PACKAGE_DATA, artifacts_dir

PROFILE_VERSION = 1


@dataclass(frozen=True)
class LatencyProfile:
    """Measured costs (seconds) of one model on one machine, keyed by model, dtype, device, threads, path."""

    model: str
    dtype: str
    device: str
    threads: int
    path: str                          # execution path the costs were measured on (e.g. "eager")
    exit_heads: str                    # exit-head kind the draft costs include
    num_layers: int
    draft_cost: dict[int, float]       # exit layer -> seconds per drafted token
    verify_cost: tuple[float, ...]     # index q-1 -> seconds for verifying q positions (full model)
    layer_cost: tuple[float, ...]      # index q-1 -> seconds per decoder layer over q positions
    head_cost: tuple[float, ...]       # index q-1 -> seconds for norm + LM head over q positions
    context: int = 0                   # context length the costs were measured at
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "draft_cost", {int(k): float(v) for k, v in self.draft_cost.items()})
        n = len(self.verify_cost)
        if not (len(self.layer_cost) == len(self.head_cost) == n and n >= 2):
            raise ValueError("verify_cost, layer_cost and head_cost must have the same length (>= 2).")

    @property
    def key(self) -> str:
        return profile_key(self.model, self.dtype, self.device, self.threads, self.path, self.exit_heads)

    @property
    def max_verify(self) -> int:
        return len(self.verify_cost)

    @property
    def c_ar(self) -> float:
        """Cost of one plain autoregressive step."""
        return self.verify_cost[0]

    @property
    def overhead(self) -> float:
        return self.verify_cost[0] - self.num_layers * self.layer_cost[0] - self.head_cost[0]

    def step_cost(self, exit_layer: int, drafted: int) -> float:
        """Modelled cost of one step at ``exit_layer`` that drafted ``drafted`` tokens (module docstring)."""
        if drafted == 0:
            return self.c_ar
        if exit_layer not in self.draft_cost:
            raise ValueError(f"The latency profile {self.key} has no draft cost for exit layer {exit_layer}; "
                             f"it covers {sorted(self.draft_cost)}. Re-run `lede profile`.")
        q = drafted + 1
        if q > self.max_verify:
            raise ValueError(f"The latency profile covers verification of up to {self.max_verify} positions, "
                             f"not {q}: re-run `lede profile --max-verify {q}` or use shorter drafts.")
        L, N = exit_layer, self.num_layers
        return (drafted * self.draft_cost[L] + L * self.layer_cost[0] + (N - L) * self.layer_cost[q - 1]
                + self.head_cost[q - 1] + self.overhead)

    def cost_table(self, exit_layers: Sequence[int], max_drafted: int) -> np.ndarray:
        """``table[j, d]`` = step_cost(exit_layers[j], d) for d = 0..max_drafted."""
        return np.array([[self.step_cost(L, d) for d in range(max_drafted + 1)] for L in exit_layers])

    # ---------------------------------------------------------------- storage
    def save(self, path: str | Path | None = None) -> Path:
        path = Path(path) if path else artifacts_dir() / "profiles" / f"{self.key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        data["version"] = PROFILE_VERSION
        path.write_text(json.dumps(data, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LatencyProfile":
        data = json.loads(Path(path).read_text())
        if data.pop("version", None) != PROFILE_VERSION:
            raise ValueError(f"{path} is a latency profile of another format version; re-run `lede profile`.")
        data["verify_cost"] = tuple(data["verify_cost"])
        data["layer_cost"] = tuple(data["layer_cost"])
        data["head_cost"] = tuple(data["head_cost"])
        return cls(**data)


def heads_label(heads) -> str:
    """How exit heads key a profile or a trace: their ``label`` (kind, "+vocab" with a draft vocabulary)."""
    return getattr(heads, "label", getattr(heads, "kind", "identity"))


def profile_key(model: str, dtype: str, device: str, threads: int, path: str = "eager",
                exit_heads: str = "identity") -> str:
    return f"{model}_{dtype}_{device}_t{threads}_{path}_{exit_heads}".replace("/", "-")


def find_profile(model: str, dtype: str = "float32", device: str = "cpu", threads: int = 2, path: str = "auto",
                 exit_heads: str = "identity") -> LatencyProfile:
    """The user's measured profile for this key, else the one shipped in the package, else a clear error.
    ``path="auto"`` looks up the path the engine would run by default (`lede_env.engine.stack.resolve_path`)."""
    from lede_env.engine.stack import resolve_path

    path = resolve_path(path, device, dtype)
    key = profile_key(model, dtype, device, threads, path, exit_heads)
    for folder in (artifacts_dir() / "profiles", PACKAGE_DATA / "profiles"):
        if (folder / f"{key}.json").is_file():
            return LatencyProfile.load(folder / f"{key}.json")
    raise FileNotFoundError(f"No latency profile for {key}. Measure one with `lede profile --model {model} "
                            f"--dtype {dtype} --threads {threads} --path {path} --heads {exit_heads}` (about a minute), or pass "
                            "cost_model='wallclock'.")


def _median_time(fn, repeats: int, sync) -> float:
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_profile(decoder, model_name: str, exit_layers: Sequence[int], max_verify: int = 13,
                    context: int = 128, repeats: int = 15, progress: bool = True
                    ) -> LatencyProfile:
    """Measure a `LatencyProfile` with a `SelfSpeculativeDecoder` (its model, exit heads and dtype)."""
    import torch
    from tqdm import tqdm

    from lede_env.engine.decoder import _confidence, _sync

    model, N, dev = decoder.model, decoder.num_layers, decoder.device
    vocab = model.config.vocab_size
    prompt = [int(t) for t in torch.randint(3, vocab, (context,), generator=torch.Generator().manual_seed(0))]
    decoder.start(prompt, max_new_tokens=max_verify + 4)
    base = len(decoder.tokens) - 1
    sync = lambda: _sync(dev)  # noqa: E731
    hidden = model.config.hidden_size
    dtype = next(model.parameters()).dtype
    tasks = list(exit_layers) + [f"q={q}" for q in range(1, max_verify + 1)]
    bar = tqdm(tasks, desc="profiling", disable=not progress)
    draft_cost, verify_cost, layer_cost, head_cost = {}, [], [], []
    with torch.inference_mode():
        warm = torch.tensor([prompt[:4]], device=dev)
        for _ in range(20):  # warm-up: first calls pay for allocations and kernel selection
            decoder._run_layers(model.model.embed_tokens(warm[:, :1]), 0, N, 1)
            decoder._run_layers(model.model.embed_tokens(warm), 0, N, 4)
            decoder._crop(base)
        for task in bar:
            if isinstance(task, int):
                L = task

                def draft_once():
                    h, _ = decoder._run_layers(decoder._embed(decoder.tokens[-1]), 0, L, 1)
                    logits = decoder._draft_logits(decoder.heads.apply(L, h[:, -1]))
                    int(decoder._pick(logits)[0])
                    _confidence(logits[0], entropy=False)
                    decoder._crop(base)

                draft_once()
                draft_cost[L] = _median_time(draft_once, repeats, sync)
                continue
            q = int(task[2:])
            ids = torch.tensor([prompt[:q]], device=dev)
            h0 = torch.randn(1, q, hidden, dtype=dtype, device=dev)

            def verify_once():
                h, _ = decoder._run_layers(model.model.embed_tokens(ids), 0, N, q)
                logits = decoder._logits(h[0])
                logits.argmax(dim=-1).tolist()
                _confidence(logits[:1])
                decoder._crop(base)

            def layers_once():
                decoder._run_layers(h0, 0, N, q)
                decoder._crop(base)

            def head_once():
                logits = decoder._logits(h0[0])
                logits.argmax(dim=-1).tolist()
                _confidence(logits[:1])

            verify_once()
            verify_cost.append(_median_time(verify_once, repeats, sync))
            layer_cost.append(_median_time(layers_once, repeats, sync) / N)
            head_cost.append(_median_time(head_once, repeats, sync))
    return LatencyProfile(
        model=model_name, dtype=str(dtype).removeprefix("torch."), device=dev.type, threads=torch.get_num_threads(),
        path=decoder.path, exit_heads=heads_label(decoder.heads), num_layers=N, draft_cost=draft_cost,
        verify_cost=tuple(verify_cost), layer_cost=tuple(layer_cost), head_cost=tuple(head_cost), context=context,
        meta={"repeats": repeats, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "torch": torch.__version__})
