"""Measuring a latency profile (`lede profile`): the costs `lede_env.engine.profile.LatencyProfile` stores, timed
through the decoder's public phases. Model code; the profile itself (`profile.py`) is pure Python, so that replay
prices steps without torch."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

from lede_env.engine.profile import LatencyProfile, cpu_signature, heads_label


def interleaved_medians(timers: dict[str, Callable[[], None]], repeats: int, sync: Callable[[], None] = lambda: None,
                        progress: bool = False) -> dict[str, float]:
    """Median seconds of each timer over ``repeats`` rounds, the timers taken in turn within each round (round-robin),
    not one block of repeats per timer: a machine whose speed drifts during the measurement (a thread pool still
    spinning, a neighbour on a shared host, the clock) then shifts every component alike, and the ratios the profile
    is used for (a draft against a plain step, a long verification against a short one) stay right."""
    from tqdm import tqdm

    times: dict[str, list[float]] = {name: [] for name in timers}
    for _ in tqdm(range(repeats), desc="profiling", disable=not progress):
        for name, fn in timers.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def component_timers(decoder, exit_layers: Sequence[int], positions: Sequence[int], context: int = 128
                     ) -> dict[str, Callable[[], None]]:
    """Functions that each run one component of a step once, through the decoder's public phases, and leave the
    decoder as they found it: ``"draft L=<L>"`` (one draft token at exit L: layers, exit head, draft LM head, pick,
    confidence), ``"verify q=<q>"`` (`verify` of q positions with the accept bookkeeping; q - 1 drafts at exit 1,
    so layer 0 processes one position and the others q), ``"layers q=<q>"`` (all layers over q positions, as
    verification runs them) and ``"head q=<q>"`` (final norm, LM head, argmax, confidence over q rows).
    The decoder is started on a random prompt of ``context`` tokens (ending any generation in progress); run the
    timers before stepping it again."""
    if not positions or min(positions) < 1:
        raise ValueError(f"positions must be a non-empty list of counts >= 1, got {list(positions)}.")
    import torch

    from lede_env.engine.decoder import Draft, confidence

    model, N, dev = decoder.model, decoder.num_layers, decoder.device
    gen = torch.Generator().manual_seed(0)
    prompt = [int(t) for t in torch.randint(3, model.config.vocab_size, (context,), generator=gen)]
    decoder.start(prompt, max_new_tokens=max(positions) + 4)
    out_dtype = getattr(decoder.stack, "out_dtype", next(model.parameters()).dtype)
    timers: dict[str, Callable[[], None]] = {}

    def draft(L: int):
        def run():
            d = decoder.draft(L, 1)
            confidence(d.logits[0], entropy=False)
            decoder.rollback()
        return run

    def positions_of(q: int):
        h0 = torch.randn(1, q, model.config.hidden_size, dtype=out_dtype, device=dev)
        fake = Draft(exit_layer=1, k_requested=q - 1, tokens=[prompt[0]] * (q - 1),
                     hidden=[h0[:, i:i + 1] for i in range(q - 1)], probes=[{} for _ in range(q - 1)], logits=[],
                     time=0.0, committed=len(decoder.tokens))

        def verify():
            v = decoder.verify(fake)
            v.logits.argmax(dim=-1).tolist()
            confidence(v.logits[:1])
            decoder.rollback()

        def layers():
            decoder.run_positions(h0, 0, N)
            decoder.rollback()

        def head():
            logits = decoder.verify_logits(h0[0])
            logits.argmax(dim=-1).tolist()
            confidence(logits[:1])
        return verify, layers, head

    for L in exit_layers:
        timers[f"draft L={L}"] = draft(L)
    for q in positions:
        timers[f"verify q={q}"], timers[f"layers q={q}"], timers[f"head q={q}"] = positions_of(q)
    return timers


def measure_profile(decoder, model_name: str, exit_layers: Sequence[int], max_verify: int = 13,
                    context: int = 128, repeats: int = 15, progress: bool = True
                    ) -> LatencyProfile:
    """Measure a `LatencyProfile` with a `SelfSpeculativeDecoder` (its model, exit heads, dtype and path), with
    `component_timers` (medians over ``repeats`` rounds, the components interleaved: `interleaved_medians`)."""
    import torch

    from lede_env.engine.decoder import _sync

    dev, N = decoder.device, decoder.num_layers
    sync = lambda: _sync(dev)  # noqa: E731
    qs = range(1, max_verify + 1)
    timers = component_timers(decoder, exit_layers, qs, context)
    draft_cost, verify_cost, layer_cost, head_cost = {}, [], [], []
    with torch.inference_mode():
        for _ in range(20):  # warm-up: first calls pay for allocations and kernel selection
            timers["verify q=1"]()
            timers[f"verify q={min(4, max_verify)}"]()
        for fn in timers.values():   # each component once before timing
            fn()
        medians = interleaved_medians(timers, repeats, sync, progress)
        for name, t in medians.items():
            kind, value = name.split(" ")
            n = int(value.split("=")[1])
            if kind == "draft":
                draft_cost[n] = t
            elif kind == "verify":
                verify_cost.append(t)
            elif kind == "layers":
                layer_cost.append(t / N)
            else:
                head_cost.append(t)
    dtype = next(decoder.model.parameters()).dtype
    return LatencyProfile(
        model=model_name, dtype=str(dtype).removeprefix("torch."), device=dev.type, threads=torch.get_num_threads(),
        path=decoder.path, exit_heads=heads_label(decoder.heads), num_layers=N, draft_cost=draft_cost,
        verify_cost=tuple(verify_cost), layer_cost=tuple(layer_cost), head_cost=tuple(head_cost), context=context,
        cpu=cpu_signature(), build=decoder.stack.build, meta={"repeats": repeats, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                   "torch": torch.__version__})
