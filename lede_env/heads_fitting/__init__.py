"""Fitting exit heads by self-distillation (DESIGN.md, "Exit heads"); the heads themselves, and what decoding
needs of them, live in `lede_env.engine.heads`.

Pipeline: the model's own greedy continuations of the TRAIN prompts -> per exit layer ``h_L`` and the final
pre-norm ``h_N`` at the generated positions, and ``h_N`` of the position before (`data`) -> a ridge map
``h_L -> h_N``, then optionally KL distillation through the frozen final norm and LM head, and for ``eagle`` heads
the same for the first draft's map of ``[h_L, h_N(prev)]`` (`fit`) -> top-1 agreement with the full model's argmax,
the draft vocabulary, the head's cost (`evaluate`) -> `fit_heads_report`, what ``lede fit-heads`` runs (`report`).
Nothing here is model-specific: the SmolLM2 exit layers, prompt sets and sizes are the defaults of ``lede fit-heads``.
"""

from lede_env.heads_fitting.data import (
    HiddenData,
    SelfText,
    build_training_data,
    collect_hidden_states,
    generate_for_positions,
    generate_self_text,
    split_by_sequence,
)
from lede_env.heads_fitting.evaluate import (
    active_vocab,
    agreement,
    agreement_on_data,
    draft_vocabulary,
    head_cost,
    vocab_coverage,
)
from lede_env.heads_fitting.fit import fit_heads, fit_kl, fit_ridge
from lede_env.heads_fitting.report import fit_heads_report

__all__ = ["HiddenData", "SelfText", "active_vocab", "agreement", "agreement_on_data", "build_training_data",
           "collect_hidden_states", "draft_vocabulary", "fit_heads", "fit_heads_report", "fit_kl", "fit_ridge",
           "generate_for_positions", "generate_self_text", "head_cost", "split_by_sequence", "vocab_coverage"]
