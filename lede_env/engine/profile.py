"""Latency profile: the cost of the pieces of a decoding step, measured once per model and machine.

Measured (medians over repeats, at a realistic context length):
  draft_cost[L]    one draft token at exit layer L: embedding, layers 0..L-1, exit head, norm, LM head, pick
  verify_cost[q]   the decoder's verification of q = 1..Q positions (q - 1 drafts at exit 1: layer 0 on one
                   position, the others on q) plus the accept bookkeeping
  layer_cost[q]    one decoder layer over q positions as verification runs them (the stack's time divided by its
                   depth; one position at a time on a stack that is not batch-invariant)
  head_cost[q]     final norm + LM head + confidences over q positions (the same way)
From them the cost of a step at exit L that drafted d tokens is modelled as

  step_cost(L, d) = d * draft_cost[L] + L * layer_cost[1] + (N - L) * layer_cost[d + 1] + head_cost[d + 1]
                    + overhead            (d > 0: layers below L only process the last draft in verification)
  step_cost(L, 0) = verify_cost[1]        (a plain autoregressive step; this is c_ar)

where ``overhead = verify_cost[1] - N * layer_cost[1] - head_cost[1]`` (embedding, crop, Python). The profile
gives deterministic, reproducible costs for replay, training and tests; `lede profile` measures it. It records the
CPU (`cpu`) and the build of the layer stack (`build`: "eager", "native-avx512", "native-portable", "torch-...")
it was measured with; a live environment whose stack is another build, or any use on another CPU, warns.
"""

from __future__ import annotations

import json
import os
import platform
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from lede_env.paths import PACKAGE_DATA, artifacts_dir

PROFILE_VERSION = 1
UNKNOWN_CPU = "unknown"


def cpu_flags() -> str:
    """The CPU's instruction-set flags line of /proc/cpuinfo (``flags`` on x86, ``Features`` on ARM), else
    `platform`'s processor name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_signature() -> str:
    """What this machine's CPU is, as far as it sets the costs: model name, cores, L3 size and AVX-512
    (from /proc/cpuinfo and sysfs on Linux, `platform` elsewhere). Profiles store it (`LatencyProfile.cpu`)."""
    name, flags = platform.processor() or platform.machine(), cpu_flags()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        l3 = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
    except OSError:
        l3 = "?"
    isa = "avx512" if " avx512f" in flags else ("avx2" if " avx2" in flags else platform.machine())
    return f"{name}; {os.cpu_count()} cores; L3 {l3}; {isa}"


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
    cpu: str = UNKNOWN_CPU             # `cpu_signature()` of the machine it was measured on
    build: str = "unknown"             # the layer stack's `build` (which kernels) it was measured on
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
        profile = cls(**data)
        profile.check_machine(path)
        return profile

    def check_machine(self, source: str | Path | None = None) -> bool:
        """Warn (once per profile file) when this profile was measured on another CPU than this one: its costs
        then price rewards for a machine that is not this one. Returns whether the CPU matches."""
        here = cpu_signature()
        if self.cpu == here:
            return True
        where = f" ({source})" if source else ""
        warnings.warn(f"The latency profile {self.key}{where} was measured on another CPU ({self.cpu}); this one is "
                      f"{here}. Its costs do not describe this machine: measure one here with `lede profile "
                      f"--model {self.model} --path {self.path} --heads ...` (about a minute), or pass "
                      "cost_model='wallclock'.", StaleProfileWarning, stacklevel=3)
        return False

    def check_build(self, build: str) -> bool:
        """Warn when the layer stack that will run (``build``, `stack.build`) is not the one this profile measured:
        the AVX-512, portable and torch builds of one path differ several-fold in cost."""
        if self.build == build:
            return True
        warnings.warn(f"The latency profile {self.key} was measured on the {self.build!r} build of the layer stack; "
                      f"this engine runs {build!r}. Measure one for it with `lede profile --path {self.path}` "
                      "(about a minute).", StaleProfileWarning, stacklevel=3)
        return False


class StaleProfileWarning(UserWarning):
    """A latency profile measured on another CPU is in use."""


def heads_label(heads) -> str:
    """How exit heads key a profile or a trace: their ``label`` (kind, "+vocab" with a draft vocabulary)."""
    return getattr(heads, "label", getattr(heads, "kind", "identity"))


def profile_key(model: str, dtype: str, device: str, threads: int, path: str = "eager",
                exit_heads: str = "identity") -> str:
    return f"{model}_{dtype}_{device}_t{threads}_{path}_{exit_heads}".replace("/", "-")


def find_profile(model: str, dtype: str = "float32", device: str = "cpu", threads: int = 2, path: str = "auto",
                 exit_heads: str = "identity") -> LatencyProfile:
    """The user's measured profile for this key, else the one shipped in the package, else a clear error.
    ``path="auto"`` looks up the path the engine would run by default (`lede_env.engine.path_names.resolve_path`)."""
    from lede_env.engine.path_names import resolve_path

    path = resolve_path(path, device, dtype)
    key = profile_key(model, dtype, device, threads, path, exit_heads)
    for folder in (artifacts_dir() / "profiles", PACKAGE_DATA / "profiles"):
        if (folder / f"{key}.json").is_file():
            return LatencyProfile.load(folder / f"{key}.json")
    raise FileNotFoundError(f"No latency profile for {key}. Measure one with `lede profile --model {model} "
                            f"--dtype {dtype} --threads {threads} --path {path} --heads {_heads_option(model, exit_heads)}"
                            "` (about a minute), or pass cost_model='wallclock'.")


def _heads_option(model: str, label: str) -> str:
    """What `lede profile --heads` takes for heads with this label: identity, default (the model's shipped heads)
    or a placeholder for their folder."""
    from lede_env.defaults import model_defaults

    if label == "identity":
        return "identity"
    if model_defaults(model).get("heads_label") == label:
        return "default"
    return f"<the folder of the {label} heads>"
