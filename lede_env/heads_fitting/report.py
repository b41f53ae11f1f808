"""`fit_heads_report`, what ``lede fit-heads`` runs: fit exit heads on the train prompts' self-generated text,
evaluate them on the test prompts' continuations (never used for fitting), print a table, save the heads."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from lede_env.engine.heads import ExitHeads, identity_heads
from lede_env.heads_fitting.data import HiddenData, _spec_list, build_training_data
from lede_env.heads_fitting.evaluate import agreement_on_data, draft_vocabulary, head_cost, vocab_coverage
from lede_env.heads_fitting.fit import fit_heads


def fit_heads_report(model=None, tok=None, out: str | Path | None = None, *, model_name: str,
                     layers: Iterable[int], train_prompts, test_prompts, kinds: Sequence[str] = ("ridge", "kl"),
                     n_positions: int | None = None, n_test_positions: int | None = None, max_new_tokens: int = 128,
                     chat_template: bool = True, kl_epochs: int = 4, save_all: bool = True, seed: int = 0,
                     threads: int | None = 2, draft_vocab_top_k: int = 8,
                     cache_dir: str | Path | None = None, train_data: HiddenData | None = None,
                     test_data: HiddenData | None = None, progress: bool = True, echo=print) -> dict:
    """What ``lede fit-heads`` runs (the SmolLM2 values of ``layers``, the prompts and ``n_positions`` are the
    command's defaults). Fit each of ``kinds`` on the train prompts' self-generated text (``n_positions``
    generated tokens; ``None``: every train prompt), evaluate top-1 agreement on the TEST prompts'
    continuations (never used for fitting; ``n_test_positions=None``: all test prompts), print a table per exit layer
    (identity vs each kind; for ``eagle``, a step's first draft: its later drafts are its ``kl`` map) and the head
    cost per token, save the
    best kind (highest mean held-out agreement) to ``out`` and, with ``save_all``, every kind to
    ``out/<kind>/``, plus ``out/report.json``. ``cache_dir`` keeps the generated text for reruns;
    ``train_data`` / ``test_data`` reuse collected hidden states (they must hold every layer). ``threads``:
    torch threads; on a CPU shared with other jobs use 1 (2 threads on 2 busy cores ran ~10x slower here).
    ``draft_vocab_top_k > 0``: every saved kind carries a draft vocabulary (`draft_vocabulary` of the train
    positions; its held-out coverage and the agreement through it are reported). Returns the report dict
    (with the fitted heads under ``"heads"``)."""
    if threads is not None:
        torch.set_num_threads(threads)
    if model is None:
        from lede_env.models import load_model

        model, tok = load_model(model_name)
    layers = sorted(int(L) for L in layers)
    def cache(name: str) -> Path | None:
        return Path(cache_dir) / f"selftext_{name}.json" if cache_dir is not None else None

    t0 = time.perf_counter()
    train, test = train_data, test_data
    if train is None:
        _, train = build_training_data(model, tok, train_prompts, layers, n_positions, max_new_tokens,
                                       chat_template, seed=seed, progress=progress, desc="train",
                                       cache=cache("train"))
    t_train_data = time.perf_counter() - t0
    if test is None:
        _, test = build_training_data(model, tok, test_prompts, layers, n_test_positions, max_new_tokens,
                                      chat_template, seed=seed, progress=progress, desc="test",
                                      cache=cache("test"))
    t_test_data = time.perf_counter() - t0 - t_train_data
    results: dict[str, dict[int, float]] = {
        "identity": agreement_on_data(model, identity_heads(), test, layers)}
    fitted: dict[str, ExitHeads] = {}
    seconds: dict[str, float] = {}
    for kind in sorted(kinds, key=lambda k: k == "eagle"):   # eagle reuses the kl heads when they are fitted
        t = time.perf_counter()
        heads = fit_heads(model, tok, kind, layers, train_prompts, data=train, max_new_tokens=max_new_tokens,
                          chat_template=chat_template, kl_epochs=kl_epochs, seed=seed, progress=progress,
                          model_name=model_name, init=fitted.get("kl") if kind == "eagle" else None)
        seconds[kind] = round(time.perf_counter() - t, 1)
        results[kind] = agreement_on_data(model, heads, test, layers)
        fit = heads.meta.setdefault("fit", {})
        fit["heldout_agreement"] = {str(L): round(a, 4) for L, a in results[kind].items()}
        fit["heldout_identity_agreement"] = {str(L): round(a, 4) for L, a in results["identity"].items()}
        fit["heldout_prompts"] = _spec_list(test_prompts)
        fit["heldout_positions"] = len(test)
        fit["head_seconds_per_token"] = head_cost(heads, layers[len(layers) // 2], threads=1)
        fitted[kind] = heads
    if threads is not None:
        torch.set_num_threads(threads)
    vocab_info = None
    if draft_vocab_top_k > 0:
        vocab = draft_vocabulary(model, train, draft_vocab_top_k)
        vocab_info = {"top_k": draft_vocab_top_k, "size": len(vocab), "heldout_coverage": vocab_coverage(vocab, test)}
        for kind in ["identity", *kinds]:
            heads = fitted[kind] if kind in fitted else identity_heads()
            heads = heads.with_draft_vocab(vocab)
            results[f"{kind}+vocab"] = agreement_on_data(model, heads, test, layers)
            if kind in fitted:
                heads.meta.setdefault("fit", {})["draft_vocab"] = dict(
                    vocab_info, heldout_agreement={str(L): round(a, 4) for L, a in results[f"{kind}+vocab"].items()})
                fitted[kind] = heads
    costs = {k: fitted[k].meta["fit"]["head_seconds_per_token"] for k in fitted}
    cols = ["identity", *kinds]
    if vocab_info is not None:
        cols += [f"{k}+vocab" for k in ["identity", *kinds]]
    echo(f"Held-out top-1 agreement with the full model's greedy token ({len(test)} positions of test-prompt "
         f"continuations; fitted on {len(train)} train positions)")
    width = max(9, *(len(c) for c in cols))
    echo("layer " + " ".join(f"{c:>{width}}" for c in cols))
    for L in layers:
        echo(f"{L:>5} " + " ".join(f"{results[c][L]:{width}.3f}" for c in cols))
    echo("mean  " + " ".join(f"{statistics.mean(results[c].values()):{width}.3f}" for c in cols))
    if vocab_info is not None:
        echo(f"draft vocabulary ('+vocab'): the full model's top-{vocab_info['top_k']} tokens at the train positions, "
             f"{vocab_info['size']} tokens, covering {vocab_info['heldout_coverage']:.4f} of the held-out greedy "
             "tokens; saved heads carry it")
    echo("head cost per token (median, 1 thread): "
         + ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in costs.items()))
    echo(f"time: train text+states {t_train_data:.0f} s, test text+states {t_test_data:.0f} s, fits "
         + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    best = max(fitted, key=lambda k: statistics.mean(results[k].values())) if fitted else "identity"
    report = {"layers": layers, "draft_vocab": vocab_info,
              "agreement": {k: {str(L): a for L, a in v.items()} for k, v in results.items()},
              "head_seconds_per_token": costs, "fit_seconds": seconds, "best": best,
              "train_positions": len(train), "test_positions": len(test),
              "data_seconds": {"train": round(t_train_data, 1), "test": round(t_test_data, 1)}}
    if out is not None and fitted:
        out = Path(out)
        fitted[best].save(out)
        if save_all:
            for k, h in fitted.items():
                h.save(out / k)
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        echo(f"saved {best} heads to {out}" + (f" (every kind under {out}/<kind>/)" if save_all else ""))
    report["heads"] = fitted
    return report
