"""Fitting exit heads (`lede_env.heads_fitting`): self-generated text, hidden states, ridge and KL fits judged on
held-out sequences, agreement, the `lede fit-heads` report."""

import pytest
import torch

from lede_env.engine.heads import ExitHeads, identity_heads
from lede_env.heads_fitting import (
    SelfText,
    agreement,
    agreement_on_data,
    collect_hidden_states,
    fit_heads_report,
    fit_kl,
    fit_ridge,
    generate_self_text,
)
from tests.conftest import TINY_HEAD_LAYERS as TINY_LAYERS
from tests.conftest import TINY_HEAD_TEXTS as TINY_TEXTS
from tests.conftest import readout as _readout


def test_generate_self_text_is_greedy_generate(tiny):
    model, tok = tiny
    seqs = generate_self_text(model, tok, TINY_TEXTS[:2], max_new_tokens=10, chat_template=False,
                              batch_size=1, progress=False)
    for text, seq in zip(TINY_TEXTS[:2], seqs):
        ids = tok.encode(text)
        assert seq.prompt_ids == ids
        ref = model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, pad_token_id=0)
        ref = ref[0, len(ids):]
        assert seq.new_ids == ref.tolist()[: len(seq.new_ids)]
        assert 1 <= len(seq.new_ids) <= 10


def test_collect_hidden_states_matches_model(tiny, tiny_selftext):
    model, _ = tiny
    seqs, data = tiny_selftext
    seq = seqs[0]
    n_new = len(seq.new_ids)
    with torch.no_grad():
        out = model(torch.tensor([seq.ids]), output_hidden_states=True)
    pos = slice(len(seq.prompt_ids) - 1, len(seq.ids) - 1)
    first = data.seq_index == 0
    assert int(first.sum()) == n_new
    for L in TINY_LAYERS:  # hidden_states[L] = output of layer L-1 for L < N
        torch.testing.assert_close(data.h[L][first], out.hidden_states[L][0, pos], rtol=0, atol=0)
    # h_N is pre-norm: the model's logits are lm_head(norm(h_N)); the targets are their argmax.
    torch.testing.assert_close(_readout(model, data.h_final[first]), out.logits[0, pos], rtol=1e-5, atol=1e-5)
    assert torch.equal(data.target[first], out.logits[0, pos].argmax(-1))


def test_ridge_improves_train_agreement(tiny, tiny_selftext):
    model, _ = tiny
    _, data = tiny_selftext
    ridge = fit_ridge(data, TINY_LAYERS, alpha=1e-4, progress=False)
    assert ridge.kind == "ridge" and ridge.layers == TINY_LAYERS
    base = agreement_on_data(model, identity_heads(), data)
    fitted = agreement_on_data(model, ridge, data)
    for L in TINY_LAYERS:
        assert fitted[L] >= base[L] - 1e-9, (L, base[L], fitted[L])
    assert sum(fitted.values()) > sum(base.values())


def test_agreement_on_sequences(tiny, tiny_selftext):
    model, _ = tiny
    seqs, data = tiny_selftext
    direct = agreement(model, identity_heads(), seqs, (2, 5))
    assert direct == pytest.approx(agreement_on_data(model, identity_heads(), data, (2, 5)))
    empty = collect_hidden_states(model, [SelfText([1, 5, 6], [])], (2,), progress=False)
    assert len(empty) == 0


def test_fit_heads_report_end_to_end(tmp_path, tiny):
    model, tok = tiny
    lines = []
    report = fit_heads_report(model, tok, out=tmp_path / "heads", model_name="tiny-random", kinds=("ridge", "kl"),
                              layers=(2, 4), train_prompts=TINY_TEXTS[:16], test_prompts=TINY_TEXTS[16:],
                              n_positions=200, max_new_tokens=16, chat_template=False, kl_epochs=1, threads=None,
                              cache_dir=tmp_path / "cache", progress=False, echo=lines.append)
    assert report["train_positions"] <= 200 and report["test_positions"] > 0
    assert set(report["agreement"]) == {"identity", "ridge", "kl", "identity+vocab", "ridge+vocab", "kl+vocab"}
    assert 0 < report["draft_vocab"]["size"] <= 64 and 0 < report["draft_vocab"]["heldout_coverage"] <= 1
    assert any(line.startswith("    2 ") for line in lines) and any("head cost" in line for line in lines)
    best = ExitHeads.load(tmp_path / "heads")
    assert best.kind == report["best"] and best.layers == (2, 4)
    assert best.draft_vocab is not None and len(best.draft_vocab) == report["draft_vocab"]["size"]
    assert best.meta["model"] == "tiny-random" and best.meta["training_data"]["positions"] <= 200
    assert "heldout_agreement" in best.meta["fit"]
    for kind in ("ridge", "kl"):
        assert ExitHeads.load(tmp_path / "heads" / kind).kind == kind
    assert (tmp_path / "heads" / "report.json").is_file()
    assert (tmp_path / "cache" / "selftext_train.json").is_file()


@pytest.mark.slow
def test_ridge_beats_identity_on_smollm2(smollm2, smollm2_prompts):
    """Ridge heads fitted on a small self-generated sample beat the plain early exit at L=24 on other
    prompts."""
    model, tok = smollm2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads on a busy 2-core machine ran this test ~20x slower
    try:
        _ridge_vs_identity(model, tok, smollm2_prompts)
    finally:
        torch.set_num_threads(threads)


def _ridge_vs_identity(model, tok, smollm2_prompts):
    train_texts = ["Write a Python function that checks whether a string is a palindrome.",
                   "Explain what a hash table is.", "Give three tips for writing clear emails.",
                   "Write a Python function that merges two sorted lists.",
                   "What causes the seasons on Earth?", "Describe how a bicycle works.",
                   "Write a Python class for a stack with push and pop.", "Summarise the water cycle.",
                   "Write a function that counts vowels in a string.",
                   "Why do leaves change colour in autumn?",
                   "Write a Python function to compute the factorial of n.", "What is photosynthesis?"]
    train = generate_self_text(model, tok, train_texts, max_new_tokens=64, batch_size=12, progress=False)
    test_seqs = []
    for p in smollm2_prompts:
        g = model.generate(torch.tensor([p]), max_new_tokens=48, do_sample=False)[0, len(p):].tolist()
        test_seqs.append(SelfText(p, g))
    data = collect_hidden_states(model, train, (24,), progress=False)
    assert len(data) > 300
    ridge = fit_ridge(data, (24,), alpha=1e-2, progress=False)
    base = agreement(model, identity_heads(), test_seqs, (24,))
    fitted = agreement(model, ridge, test_seqs, (24,))
    assert fitted[24] > base[24], (base, fitted)


def _heldout_kl(model, heads, data, L):
    """Mean KL(p_full || p_head) over the full vocabulary on ``data``."""
    with torch.no_grad():
        logp_t = torch.log_softmax(_readout(model, data.h_final), -1)
        logp_s = torch.log_softmax(_readout(model, heads.apply(L, data.h[L])), -1)
        return float((logp_t.exp() * (logp_t - logp_s)).sum(-1).mean())


@pytest.fixture(scope="module")
def split_data(tiny, tiny_selftext):
    """Hidden states of two disjoint sets of sequences: fit on the first, judge on the second."""
    model, _ = tiny
    seqs, _ = tiny_selftext
    return (collect_hidden_states(model, seqs[:16], TINY_LAYERS, progress=False),
            collect_hidden_states(model, seqs[16:], TINY_LAYERS, progress=False))


def test_kl_fit_improves_heldout_loss_over_its_init(tiny, split_data):
    """Trained on one set of sequences, KL heads have a lower KL to the full model on other sequences than
    where they started (identity, and ridge); without the optimiser's steps they would equal their init."""
    model, _ = tiny
    train, test = split_data
    assert len(train) > 200 and len(test) > 100
    torch.set_num_threads(1)
    start = identity_heads()
    kl = fit_kl(model, train, start, (2, 4), epochs=4, batch_size=64, lr=3e-3, vocab="full", progress=False)
    for L in (2, 4):
        before, after = _heldout_kl(model, start, test, L), _heldout_kl(model, kl, test, L)
        assert after < 0.95 * before, (L, before, after)
    ridge = fit_ridge(train, (2, 4), progress=False)
    kl = fit_kl(model, train, ridge, (2, 4), epochs=4, batch_size=64, lr=1e-3, vocab="full", progress=False)
    before = sum(_heldout_kl(model, ridge, test, L) for L in (2, 4))
    after = sum(_heldout_kl(model, kl, test, L) for L in (2, 4))
    assert after < 0.99 * before, (before, after)
    # the default restricted vocabulary trains too
    act = fit_kl(model, train, start, (2,), epochs=4, batch_size=64, lr=3e-3, progress=False)
    assert _heldout_kl(model, act, test, 2) < 0.95 * _heldout_kl(model, start, test, 2)
    assert act.meta["fit"]["kl_vocab"] == "active" and 0 < act.meta["fit"]["kl_vocab_size"] <= 64


def test_kl_fit_keeps_the_best_validation_epoch(tiny, split_data):
    """With ``val``, each layer keeps the epoch (0 = the init) with the best agreement on the validation set,
    and its heads reproduce that agreement; the history has one entry per epoch plus the init."""
    model, _ = tiny
    train, test = split_data
    torch.set_num_threads(1)
    ridge = fit_ridge(train, (2, 4), progress=False)
    for arch, kind in (("affine", "kl"), ("affine_mlp", "kl-mlp")):
        heads = fit_kl(model, train, ridge, (2, 4), arch=arch, mlp_width=16, epochs=3, batch_size=64, lr=3e-3,
                       val=test, progress=False)
        assert heads.kind == kind and heads.layers == (2, 4) and heads.arch == arch
        fit = heads.meta["fit"]
        agree = agreement_on_data(model, heads, test, (2, 4))
        for L in (2, 4):
            history = fit["kl_val_agreement_by_epoch"][str(L)]
            best = fit["kl_best_epoch"][str(L)]
            assert len(history) == 4 and history[0] == pytest.approx(agreement_on_data(model, ridge, test, (L,))[L],
                                                                      abs=1e-4)
            assert history[best] == max(history) and history.index(max(history)) == best
            assert agree[L] == pytest.approx(history[best], abs=1e-4)
        assert not any(p.requires_grad for p in heads.modules.parameters())


def test_ridge_recovers_an_exact_affine_map():
    """On data where ``h_N = A h_L + c`` exactly, ridge (tiny penalty) finds ``A`` and ``c``, bias included."""
    from lede_env.heads_fitting import HiddenData

    g = torch.Generator().manual_seed(0)
    n, d = 400, 8
    X = torch.randn(n, d, generator=g) + 3.0          # off-centre inputs: a wrong bias shows
    A, c = torch.randn(d, d, generator=g), torch.randn(d, generator=g)
    data = HiddenData({2: X}, X @ A.T + c, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long))
    heads = fit_ridge(data, (2,), alpha=1e-9, progress=False)
    head = heads.modules["2"].affine
    torch.testing.assert_close(head.weight, A, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(head.bias, c, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(heads.apply(2, X[:5]), data.h_final[:5], rtol=1e-4, atol=1e-4)
    assert heads.meta["fit"]["ridge_alpha"] == 1e-9


def test_eagle_heads_fit_the_first_draft_on_the_verified_feature(tiny, tiny_selftext, tmp_path):
    """``eagle``: the later drafts' map is the kl heads' (reused as they are), the first-draft map starts from ridge on
    ``[h_L, h_prev]`` and is distilled; it fits the training positions better than the map without the feature,
    survives save/load, and agreement is measured on the first draft (with ``h_prev``) or the later ones."""
    from lede_env.engine.heads import ExitHeads
    from lede_env.heads_fitting import agreement_on_data, fit_heads

    model, tok = tiny
    _, data = tiny_selftext
    assert data.h_prev is not None and data.h_prev.shape == data.h_final.shape
    layers = (2, 3)
    kl = fit_heads(model, tok, "kl", layers, prompts="tiny", data=data, kl_epochs=1, progress=False)
    eagle = fit_heads(model, tok, "eagle", layers, prompts="tiny", data=data, kl_epochs=2, progress=False, init=kl)
    assert eagle.kind == "eagle" and eagle.uses_context and not kl.uses_context
    h = data.h[2][:7]
    assert torch.equal(eagle.apply(2, h), kl.apply(2, h))                      # later drafts: the kl map
    assert not torch.allclose(eagle.apply(2, h, data.h_prev[:7]), kl.apply(2, h))
    for L in layers:   # the feature is informative on the training text: the first-draft map fits it better
        with torch.no_grad():
            err_first = (eagle.apply(L, data.h[L], data.h_prev) - data.h_final).pow(2).mean()
            err_later = (eagle.apply(L, data.h[L]) - data.h_final).pow(2).mean()
        assert err_first < err_later
    first = agreement_on_data(model, eagle, data, layers)
    later = agreement_on_data(model, eagle, data, layers, first=False)
    assert later == agreement_on_data(model, kl, data, layers)
    assert first != later
    assert "first_draft" in eagle.meta["fit"] and "kl_val_agreement_by_epoch" in eagle.meta["fit"]
    eagle.save(tmp_path / "eagle")
    back = ExitHeads.load(tmp_path / "eagle")
    assert back.kind == "eagle" and back.uses_context
    assert torch.equal(back.apply(3, h, data.h_prev[:7]), eagle.apply(3, h, data.h_prev[:7]))
    with pytest.raises(ValueError, match="h_prev"):
        agreement_on_data(model, eagle, type(data)(data.h, data.h_final, data.target, data.seq_index), layers)
    with pytest.raises(ValueError, match="init must be kl heads covering"):
        fit_heads(model, tok, "eagle", (2, 4), prompts="tiny", data=data, kl_epochs=1, progress=False, init=kl)
    with pytest.raises(ValueError, match="init must be kl heads"):
        fit_heads(model, tok, "eagle", layers, prompts="tiny", data=data, kl_epochs=1, progress=False, init=eagle)
