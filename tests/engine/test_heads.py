"""Exit heads: storage, the identity head as the plain early exit, ridge / KL fitting, error messages."""

import pytest
import torch

from lede_env.engine.fit_heads import (
    SelfText,
    agreement,
    agreement_on_data,
    collect_hidden_states,
    fit_kl,
    fit_ridge,
    generate_self_text,
    head_cost,
)
from lede_env.engine.heads import ExitHeads, identity_heads

TINY_TEXTS = [f"prompt number {i} says {'abcdefgh'[i % 8] * (i % 5 + 1)} then stops" for i in range(24)]
TINY_LAYERS = (1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def tiny_data(tiny):
    model, tok = tiny
    seqs = generate_self_text(model, tok, TINY_TEXTS, max_new_tokens=24, chat_template=False, batch_size=1,
                              progress=False)
    return seqs, collect_hidden_states(model, seqs, TINY_LAYERS, progress=False)


def _readout(model, h):
    return model.lm_head(model.model.norm(h))


def test_generate_self_text_is_greedy_generate(tiny):
    model, tok = tiny
    seqs = generate_self_text(model, tok, TINY_TEXTS[:2], max_new_tokens=10, chat_template=False, batch_size=1,
                              progress=False)
    for text, seq in zip(TINY_TEXTS[:2], seqs):
        ids = tok.encode(text)
        assert seq.prompt_ids == ids
        ref = model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, pad_token_id=0)[0, len(ids):]
        assert seq.new_ids == ref.tolist()[: len(seq.new_ids)]
        assert 1 <= len(seq.new_ids) <= 10


def test_collect_hidden_states_matches_model(tiny, tiny_data):
    model, _ = tiny
    seqs, data = tiny_data
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


def test_identity_head_is_plain_early_exit(tiny, tiny_data):
    model, _ = tiny
    seqs, data = tiny_data
    heads = identity_heads()
    assert heads.kind == "identity"
    h = torch.randn(3, 7, model.config.hidden_size)
    assert heads.apply(4, h) is h  # any layer, exactly
    seq = seqs[1]
    with torch.no_grad():
        out = model(torch.tensor([seq.ids]), output_hidden_states=True)
        for L in TINY_LAYERS:
            hL = out.hidden_states[L]
            assert torch.equal(_readout(model, heads.apply(L, hL)), _readout(model, hL))
    agree = agreement_on_data(model, heads, data)
    for L in TINY_LAYERS:
        with torch.no_grad():
            manual = (_readout(model, data.h[L]).argmax(-1) == data.target).float().mean().item()
        assert agree[L] == pytest.approx(manual)


def test_ridge_improves_train_agreement(tiny, tiny_data):
    model, _ = tiny
    _, data = tiny_data
    ridge = fit_ridge(data, TINY_LAYERS, alpha=1e-4, progress=False)
    assert ridge.kind == "ridge" and ridge.layers == TINY_LAYERS
    base = agreement_on_data(model, identity_heads(), data)
    fitted = agreement_on_data(model, ridge, data)
    for L in TINY_LAYERS:
        assert fitted[L] >= base[L] - 1e-9, (L, base[L], fitted[L])
    assert sum(fitted.values()) > sum(base.values())


def test_kl_fit_runs_and_keeps_best(tiny, tiny_data):
    model, _ = tiny
    _, data = tiny_data
    torch.set_num_threads(1)
    ridge = fit_ridge(data, (2, 4), progress=False)
    for arch, kind in (("affine", "kl"), ("affine_mlp", "kl-mlp")):
        heads = fit_kl(model, data, ridge, (2, 4), arch=arch, mlp_width=16, epochs=2, batch_size=64, lr=1e-3,
                       val=data, progress=False)
        assert heads.kind == kind and heads.layers == (2, 4)
        agree = agreement_on_data(model, heads, data, (2, 4))
        base = agreement_on_data(model, ridge, data, (2, 4))
        for L in (2, 4):  # validation = train here; epoch 0 (the ridge init) is a candidate
            assert agree[L] >= base[L] - 1e-9
        assert not any(p.requires_grad for p in heads.modules.parameters())


def test_save_load_round_trip(tmp_path, tiny, tiny_data):
    model, _ = tiny
    _, data = tiny_data
    ridge = fit_ridge(data, (2, 3), progress=False, meta={"model": "tiny-random"})
    mlp = fit_kl(model, data, ridge, (2, 3), arch="affine_mlp", mlp_width=8, epochs=1, batch_size=128,
                 progress=False)
    h = torch.randn(5, model.config.hidden_size)
    for heads, where in ((ridge, tmp_path / "ridge"), (mlp, tmp_path / "mlp" / "h.safetensors")):
        heads.save(where)
        back = ExitHeads.load(where)
        assert back.kind == heads.kind and back.layers == heads.layers and back.arch == heads.arch
        assert back.meta["hidden_size"] == model.config.hidden_size
        for L in heads.layers:
            assert torch.equal(back.apply(L, h), heads.apply(L, h))
    assert ExitHeads.load(tmp_path / "ridge").meta["model"] == "tiny-random"
    identity_heads().save(tmp_path / "id")
    assert ExitHeads.load(tmp_path / "id").kind == "identity"


def test_dtype_and_to(tiny_data):
    _, data = tiny_data
    heads = fit_ridge(data, (3,), progress=False)
    h = torch.randn(2, data.h_final.shape[1], dtype=torch.bfloat16)
    out = heads.apply(3, h)
    assert out.dtype == torch.bfloat16 and out.shape == h.shape
    heads.to(dtype=torch.bfloat16)
    assert heads.apply(3, h).dtype == torch.bfloat16
    assert head_cost(heads.to(dtype=torch.float32), 3, repeats=5) > 0


def test_missing_layer_error(tiny_data):
    _, data = tiny_data
    heads = fit_ridge(data, (2, 4), progress=False)
    with pytest.raises(ValueError, match=r"layer 3.*available layers: \[2, 4\]"):
        heads.apply(3, torch.randn(1, data.h_final.shape[1]))
    with pytest.raises(ValueError, match="Unknown exit-head kind"):
        ExitHeads("nope")


def test_agreement_on_sequences(tiny, tiny_data):
    model, _ = tiny
    seqs, data = tiny_data
    direct = agreement(model, identity_heads(), seqs, (2, 5))
    assert direct == pytest.approx(agreement_on_data(model, identity_heads(), data, (2, 5)))
    empty = collect_hidden_states(model, [SelfText([1, 5, 6], [])], (2,), progress=False)
    assert len(empty) == 0


@pytest.mark.slow
def test_ridge_beats_identity_on_smollm2(smollm2, smollm2_prompts):
    """Ridge heads fitted on a small self-generated sample beat the plain early exit at L=24 on other prompts."""
    model, tok = smollm2
    torch.set_num_threads(2)
    train_texts = ["Write a Python function that checks whether a string is a palindrome.",
                   "Explain what a hash table is.", "Give three tips for writing clear emails.",
                   "Write a Python function that merges two sorted lists.",
                   "What causes the seasons on Earth?", "Describe how a bicycle works.",
                   "Write a Python class for a stack with push and pop.", "Summarise the water cycle.",
                   "Write a function that counts vowels in a string.", "Why do leaves change colour in autumn?",
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
