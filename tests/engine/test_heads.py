"""Exit heads (`lede_env.engine.heads`): the identity head as the plain early exit, storage, dtypes, error
messages, and exact decoding with fitted heads. Fitting itself is tested in tests/heads_fitting/."""

import pytest
import torch

from lede_env.engine.heads import ExitHeads, identity_heads
from lede_env.heads_fitting import (
    agreement_on_data,
    fit_kl,
    fit_ridge,
    head_cost,
)
from tests.conftest import TINY_HEAD_LAYERS as TINY_LAYERS
from tests.conftest import TINY_HEAD_TEXTS as TINY_TEXTS
from tests.conftest import readout as _readout


def test_identity_head_is_plain_early_exit(tiny, tiny_selftext):
    model, _ = tiny
    seqs, data = tiny_selftext
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


def test_save_load_round_trip(tmp_path, tiny, tiny_selftext):
    model, _ = tiny
    _, data = tiny_selftext
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
    assert ExitHeads.load(tmp_path / "id").draft_vocab is None
    ridge.save(tmp_path / "half", dtype=torch.float16)
    half = ExitHeads.load(tmp_path / "half")
    assert (tmp_path / "half" / "heads.safetensors").stat().st_size < 0.6 * (tmp_path / "ridge" / "heads.safetensors").stat().st_size
    for L in ridge.layers:
        assert half.apply(L, h).dtype == torch.float32
        torch.testing.assert_close(half.apply(L, h), ridge.apply(L, h), rtol=2e-3, atol=2e-3)
    vocab = torch.tensor([5, 3, 9, 3])
    for heads, where in ((ridge.with_draft_vocab(vocab), tmp_path / "rv"), (identity_heads(vocab), tmp_path / "iv")):
        heads.save(where)
        back = ExitHeads.load(where)
        assert back.kind == heads.kind and back.draft_vocab.tolist() == [3, 5, 9]
        assert back.meta["draft_vocab_size"] == 3


def test_dtype_and_to(tiny_selftext):
    _, data = tiny_selftext
    heads = fit_ridge(data, (3,), progress=False)
    h = torch.randn(2, data.h_final.shape[1], dtype=torch.bfloat16)
    out = heads.apply(3, h)
    assert out.dtype == torch.bfloat16 and out.shape == h.shape
    heads.to(dtype=torch.bfloat16)
    assert heads.apply(3, h).dtype == torch.bfloat16
    assert head_cost(heads.to(dtype=torch.float32), 3, repeats=5) > 0


def test_bad_draft_vocab_is_refused(tiny):
    from lede_env.engine.decoder import SelfSpeculativeDecoder

    model, _ = tiny
    with pytest.raises(ValueError, match="draft vocabulary"):
        SelfSpeculativeDecoder(model, exit_heads=identity_heads(torch.tensor([1, 64])))


def test_missing_layer_error(tiny_selftext):
    _, data = tiny_selftext
    heads = fit_ridge(data, (2, 4), progress=False)
    with pytest.raises(ValueError, match=r"layer 3.*available layers: \[2, 4\]"):
        heads.apply(3, torch.randn(1, data.h_final.shape[1]))
    with pytest.raises(ValueError, match="Unknown exit-head kind"):
        ExitHeads("nope")


@pytest.mark.parametrize("path", ["eager", "auto"])
def test_decoding_with_fitted_heads_is_exact(tiny, tiny_selftext, path):
    """Heads only change drafts: with ridge and KL heads (and a random-perturbed copy, whose drafts are often
    wrong), random (L, k) sequences give plain greedy decoding token for token."""
    import random

    from lede_env.engine.decoder import SelfSpeculativeDecoder

    model, tok = tiny
    _, data = tiny_selftext
    ridge = fit_ridge(data, TINY_LAYERS, progress=False)
    kl = fit_kl(model, data, ridge, TINY_LAYERS, epochs=1, progress=False)
    noisy = fit_ridge(data, TINY_LAYERS, progress=False)
    with torch.no_grad():
        for m in noisy.modules.values():
            m.affine.weight.add_(torch.randn(m.affine.weight.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
    # a draft vocabulary of half the tokens: drafts outside it are impossible, so more of them are rejected
    half = ridge.with_draft_vocab(torch.arange(0, 64, 2))
    for heads in (ridge, kl, noisy, half, identity_heads(draft_vocab=torch.arange(32))):
        dec = SelfSpeculativeDecoder(model, exit_heads=heads, eos_token_id=tok.eos_token_id, path=path)
        drafted = accepted = 0
        for i, text in enumerate(TINY_TEXTS[:4]):
            ids = tok.encode(text)
            ref = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                                 pad_token_id=0)[0, len(ids):].tolist()
            rng = random.Random(i)
            actions = [(rng.choice(TINY_LAYERS), rng.randint(0, 5)) for _ in range(40)]
            out, steps = dec.generate(ids, 24, actions=actions)
            assert out == ref, (heads, text)
            drafted += sum(s.drafted for s in steps)
            accepted += sum(s.accepted for s in steps)
        assert drafted > 20 and accepted < drafted   # drafts were made, and some were wrong
        if heads is ridge:
            assert accepted > 0
