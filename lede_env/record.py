"""Recording traces with the real model (`lede trace`): the greedy continuation of each prompt and, per
position, every candidate exit layer's prediction and the observation's per-position quantities."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from lede_env.engine.profile import heads_label
from lede_env.traces import Trace, TraceSet


def record_trace(decoder, prompt_ids: list[int], prompt_index: int, exit_layers: tuple[int, ...],
                 max_new_tokens: int) -> Trace:
    """Decode ``prompt_ids`` greedily, one plain step at a time, reading all exits at every position.
    The decoder's ``probe_layers`` become the trace's probe layers."""
    decoder.start(prompt_ids, max_new_tokens)
    rows = []
    while not decoder.done:
        result, args, maxp = decoder.step_with_exits(exit_layers)
        rows.append((args, maxp, result.full_maxprob[0], result.full_entropy[0], result.probe_cos))
    tokens = np.array(decoder.generated, dtype=np.int64)
    J, P = len(exit_layers), len(decoder.probe_layers)
    col = lambda i, dt, shape: np.array([r[i] for r in rows], dtype=dt).reshape(shape)  # noqa: E731
    n = len(rows)
    return Trace(prompt_index=prompt_index, prompt_ids=np.array(prompt_ids, dtype=np.int64), tokens=tokens,
                 exit_layers=tuple(exit_layers), probe_layers=tuple(decoder.probe_layers),
                 draft_tokens=col(0, np.int64, (n, J)), draft_maxprob=col(1, np.float32, (n, J)),
                 full_maxprob=col(2, np.float32, (n,)), full_entropy=col(3, np.float32, (n,)),
                 probe_cos=col(4, np.float32, (n, P)), eos=bool(tokens[-1] in decoder.eos_ids),
                 max_new_tokens=max_new_tokens, max_context=decoder.max_context)


def record_traces(decoder, prompts: list[list[int]], prompt_indices: list[int], exit_layers: tuple[int, ...],
                  max_new_tokens: int, meta: dict, progress: bool = True) -> TraceSet:
    """Record one trace per prompt, with a progress bar."""
    traces = []
    bar = tqdm(list(zip(prompt_indices, prompts)), desc="recording traces", disable=not progress)
    for index, ids in bar:
        traces.append(record_trace(decoder, ids, index, exit_layers, max_new_tokens))
        bar.set_postfix(tokens=sum(t.length for t in traces))
    return TraceSet(traces=tuple(traces), meta=dict(meta))


def record_traces_for(model: str, prompts: str, out: str, limit: int | None = None, max_new_tokens: int = 128,
                      heads: str = "default", exit_layers: tuple[int, ...] | None = None,
                      probe_layers: tuple[int, ...] | None = None, chat_template: bool = True,
                      dtype: str = "float32", max_context: int | None = None, progress: bool = True):
    """Load the model, record the traces of a prompt set (optionally its first ``limit`` prompts), save them.
    Returns ``(TraceSet, path)``."""
    from lede_env.defaults import resolve_exit_heads
    from lede_env.engine.decoder import SelfSpeculativeDecoder
    from lede_env.env import default_exit_layers, default_probe_layers
    from lede_env.models import load_model
    from lede_env.prompts import encode_prompt, load_prompts

    mdl, tok = load_model(model, dtype=dtype)
    N = mdl.config.num_hidden_layers
    exit_layers = tuple(exit_layers or default_exit_layers(N))
    probe_layers = tuple(probe_layers or default_probe_layers(N))
    exit_heads = resolve_exit_heads(heads, model, mdl)
    dec = SelfSpeculativeDecoder(mdl, exit_heads=exit_heads, eos_token_id=tok.eos_token_id,
                                 probe_layers=probe_layers, max_context=max_context)
    plist = load_prompts(prompts)[:limit] if limit else load_prompts(prompts)
    ids = [encode_prompt(tok, p.text, chat_template) for p in plist]
    meta = {"model": model, "dtype": dtype, "exit_heads": heads_label(exit_heads), "exit_heads_spec": heads,
            "exit_layers": list(exit_layers), "probe_layers": list(probe_layers), "max_new_tokens": max_new_tokens,
            "vocab_size": mdl.config.vocab_size, "num_layers": N, "prompts": prompts,
            "prompt_ids": [p.id for p in plist], "chat_template": chat_template, "max_context": dec.max_context}
    ts = record_traces(dec, ids, list(range(len(ids))), exit_layers, max_new_tokens, meta, progress=progress)
    return ts, ts.save(out)
