"""Hugging Face's own self-speculative decoding on SmolLM2: ``model.generate(assistant_early_exit=L)`` against plain
``model.generate`` (prints a table; not a test). The groundwork of `lede bench`'s Hugging Face rows.

    .venv/bin/python benchmarks/hf_early_exit.py --prompts mixed:test --limit 4 --exits 2,4,8 --max-new-tokens 64

The schedule is read from ``model.generation_config`` (``num_assistant_tokens``, ``num_assistant_tokens_schedule``:
``constant`` or ``heuristic``; ``assistant_confidence_threshold`` for the dynamic one), set there and not as
``generate`` keywords. Its drafts are the model's plain early exits (no exit heads: transformers applies the final
norm and LM head to layer L's state). For each prompt plain ``generate`` and every (exit, schedule) run one after the
other, the order reversed on every other prompt; exact means identical token ids.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", default="mixed:test")
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--exits", default="2,4,8")
    ap.add_argument("--schedules", default="constant,heuristic")
    ap.add_argument("--num-assistant-tokens", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from lede_env.models import load_model
    from lede_env.prompts import load_prompts

    torch.set_num_threads(args.threads)
    model, tok = load_model("smollm2-135m")
    ids = []
    for p in load_prompts(args.prompts)[: args.limit]:
        t = tok.apply_chat_template([{"role": "user", "content": p.text}], add_generation_prompt=True,
                                    return_tensors="pt")
        ids.append(t["input_ids"] if hasattr(t, "keys") else t)
    base_config = copy.deepcopy(model.generation_config)
    methods = [("generate", None, None)] + [(f"L{L} {s}", int(L), s) for L in args.exits.split(",")
                                            for s in args.schedules.split(",")]

    def run(x, L, schedule):
        model.generation_config = copy.deepcopy(base_config)
        kw = {}
        if L is not None:
            model.generation_config.num_assistant_tokens = args.num_assistant_tokens
            model.generation_config.num_assistant_tokens_schedule = schedule
            kw["assistant_early_exit"] = L
        t0 = time.perf_counter()
        out = model.generate(x, max_new_tokens=args.max_new_tokens, do_sample=False, **kw)
        return out, time.perf_counter() - t0

    run(ids[0], None, None)   # warm-up
    times = {m[0]: [] for m in methods}
    exact = {m[0]: 0 for m in methods}
    for i, x in enumerate(ids):
        outs = {}
        for name, L, s in (methods if i % 2 == 0 else methods[::-1]):
            outs[name], t = run(x, L, s)
            times[name].append(t)
        for name, _, _ in methods:
            exact[name] += bool(torch.equal(outs[name], outs["generate"]))
    model.generation_config = base_config
    print(f"{len(ids)} prompts of {args.prompts} x {args.max_new_tokens} new tokens, k = {args.num_assistant_tokens}")
    print("| method | exact | median ratio to generate | aggregate |\n|---|---|---|---|")
    for name, _, _ in methods[1:]:
        ratios = [a / b for a, b in zip(times["generate"], times[name])]
        print(f"| {name} | {exact[name]} of {len(ids)} | {statistics.median(ratios):.3f}x | "
              f"{sum(times['generate']) / sum(times[name]):.3f}x |")


if __name__ == "__main__":
    main()
