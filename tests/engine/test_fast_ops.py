"""The fast path's C++ operations (`lede_env.engine.fast_ops`): they build here, agree with torch's operations
up to rounding, give each row the same bits whatever the number of rows and threads, and the stack falls back
to torch operations where they cannot be built."""

import os

import pytest
import torch
import torch.nn.functional as F

from lede_env.engine import fast_ops
from lede_env.engine.fast_stack import FastLayerStack

H, KV, D, HID = 6, 2, 16, 48


@pytest.fixture(scope="module")
def ops():
    if os.environ.get("LEDE_FAST_OPS") == "0":
        pytest.skip("the C++ operations are turned off (LEDE_FAST_OPS=0)")
    return fast_ops.load(required=True)


def _order_revealing(n: int, k: int, rows: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of +-1 and weights with cancelling pairs of huge terms (2^20) at random places: their products
    are exact, so a row's result is decided by the rounding of the running sum, which differs, visibly even
    in bf16, as soon as two kernels sum in different orders."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randint(0, 2, (rows, k), generator=gen) * 2 - 1).to(dtype)
    w = torch.randn(n, k, generator=gen)
    idx = torch.arange(n)
    for _ in range(4):
        w[idx, torch.randint(0, k, (n,), generator=gen)] += 2.0 ** 20
        w[idx, torch.randint(0, k, (n,), generator=gen)] -= 2.0 ** 20
    return x, w.to(dtype)


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pointwise_ops_match_torch(ops, dtype):
    gen = torch.Generator().manual_seed(0)
    x, y = (torch.randn(5, HID, generator=gen).to(dtype) for _ in range(2))
    w = torch.randn(HID, generator=gen).to(dtype)
    ref = lambda t: F.rms_norm(t.float(), (HID,), w.float(), 1e-5)  # noqa: E731
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-5).float(), ref(x), **_tol(dtype))
    s, normed = ops.add_rms_norm(x, y, w, 1e-5)
    torch.testing.assert_close(s, x + y, **_tol(dtype))
    torch.testing.assert_close(normed.float(), ref(s), **_tol(dtype))
    gu = (torch.randn(5, 2 * HID, generator=gen) * 30).to(dtype)     # large |g|: the exp's clamped range
    torch.testing.assert_close(ops.silu_mul(gu).float(), (F.silu(gu[:, :HID].float()) * gu[:, HID:].float()),
                               **_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_append_and_attention_match_sdpa(ops, dtype):
    gen = torch.Generator().manual_seed(1)
    cap, past, rows = 32, 9, 5
    kc, vc = torch.zeros(KV, cap, D), torch.zeros(KV, cap, D)
    kc[:, :past], vc[:, :past] = torch.randn(KV, past, D, generator=gen), torch.randn(KV, past, D, generator=gen)
    angle = torch.randn(cap, D // 2, generator=gen)
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
    folded = torch.cat([-sin[:, :D // 2], sin[:, D // 2:]], -1).contiguous()
    qkv = torch.randn(rows, (H + 2 * KV) * D, generator=gen).to(dtype)
    q = ops.rope_append(qkv, kc, vc, past, cos.contiguous(), folded, H, KV)
    heads = qkv.float().view(rows, H + 2 * KV, D)
    pos = torch.arange(past, past + rows)
    rot = lambda t: t * cos[pos, None] + torch.cat([-t[..., D // 2:], t[..., :D // 2]], -1) * sin[pos, None]  # noqa: E731
    torch.testing.assert_close(q, rot(heads[:, :H]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kc[:, past:past + rows], rot(heads[:, H:H + KV]).transpose(0, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vc[:, past:past + rows], heads[:, H + KV:].transpose(0, 1))
    out = ops.attention(q, kc, vc, past, D ** -0.5, dtype)
    end = past + rows
    mask = torch.ones(rows, end, dtype=torch.bool).tril(past)
    ref = F.scaled_dot_product_attention(q.transpose(0, 1)[None], kc[None, :, :end], vc[None, :, :end],
                                         attn_mask=mask, scale=D ** -0.5, enable_gqa=True)
    torch.testing.assert_close(out.float(), ref[0].transpose(0, 1).reshape(rows, H * D), **_tol(dtype))


@pytest.mark.parametrize("d", [16, 64, 24])   # vectors of 16 (one per key, four per key) and the portable loops
def test_attention_rows_independent_of_batch_and_threads(ops, d):
    """Each row's bits depend on its own query and position only: 40 rows on 2 threads (split in parallel)
    equal one row at a time on 1 thread; and the rows agree with SDPA."""
    gen = torch.Generator().manual_seed(2)
    cap, past, rows = 256, 180, 40
    kc, vc = torch.randn(KV, cap, d, generator=gen), torch.randn(KV, cap, d, generator=gen)
    q = torch.randn(rows, H, d, generator=gen)
    for short in (0, 3):   # rows with fewer than 16 keys, and a block of 16 that ends inside the rows
        few = ops.attention(q[:20].contiguous(), kc, vc, short, 0.25, torch.float32)
        for r in (0, 5, 12, 19):
            assert torch.equal(ops.attention(q[r:r + 1].contiguous(), kc, vc, short + r, 0.25, torch.float32)[0],
                               few[r]), (short, r)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        batch = ops.attention(q, kc, vc, past, 0.25, torch.float32)
        torch.set_num_threads(1)
        for r in range(rows):
            assert torch.equal(ops.attention(q[r:r + 1].contiguous(), kc, vc, past + r, 0.25, torch.float32)[0],
                               batch[r]), r
    finally:
        torch.set_num_threads(threads)
    end = past + rows
    ref = F.scaled_dot_product_attention(q.transpose(0, 1)[None], kc[None, :, :end], vc[None, :, :end], scale=0.25,
                                         attn_mask=torch.ones(rows, end, dtype=torch.bool).tril(past), enable_gqa=True)
    torch.testing.assert_close(batch, ref[0].transpose(0, 1).reshape(rows, H * d), rtol=1e-5, atol=1e-5)


def test_bad_input_is_refused(ops):
    kc = torch.zeros(KV, 4, D)
    with pytest.raises(RuntimeError, match="cache holds 4 positions"):
        ops.rope_append(torch.zeros(2, (H + 2 * KV) * D), kc, kc.clone(), 3, torch.zeros(4, D), torch.zeros(4, D),
                        H, KV)
    with pytest.raises(RuntimeError, match="fp32 or bf16"):
        ops.rms_norm(torch.zeros(2, 4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64), 1e-5)
    with pytest.raises(RuntimeError, match="norm weight"):
        ops.rms_norm(torch.zeros(2, 4), torch.zeros(3), 1e-5)
    with pytest.raises(RuntimeError, match="norm weight"):
        ops.add_rms_norm(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(4, dtype=torch.bfloat16), 1e-5)
    kc, qkv, table = torch.zeros(KV, 8, D), torch.zeros(2, (H + 2 * KV) * D), torch.zeros(8, D)
    with pytest.raises(RuntimeError, match="past must be >= 0"):
        ops.rope_append(qkv, kc, kc.clone(), -1, table, table, H, KV)
    with pytest.raises(RuntimeError, match="cos and sin"):
        ops.rope_append(qkv, kc, kc.clone(), 0, table[:, :D // 2].contiguous(), table, H, KV)
    with pytest.raises(RuntimeError, match="one shape"):
        ops.rope_append(qkv, kc, torch.zeros(KV, 6, D), 0, table, table, H, KV)
    q = torch.zeros(2, H, D)
    with pytest.raises(RuntimeError, match="multiple of the kv heads"):
        ops.attention(torch.zeros(2, H - 1, D), kc, kc.clone(), 0, 1.0, torch.float32)
    with pytest.raises(RuntimeError, match="head_dim"):
        ops.attention(torch.zeros(2, H, D // 2), kc, kc.clone(), 0, 1.0, torch.float32)
    with pytest.raises(RuntimeError, match="past must be >= 0"):
        ops.attention(q, kc, kc.clone(), -1, 1.0, torch.float32)
    assert ops.attention(torch.zeros(0, H, D), kc, kc.clone(), 0, 1.0, torch.float32).shape == (0, H * D)


def test_stack_falls_back_to_torch_ops(tiny, ops, monkeypatch):
    model, _ = tiny
    assert FastLayerStack(model).ops == "native"
    monkeypatch.setattr(fast_ops, "_STATE", {"module": None, "error": "no compiler (test)"})
    assert FastLayerStack(model).ops == "torch"
    with pytest.raises(RuntimeError, match="no compiler"):
        FastLayerStack(model, ops="native")
    with pytest.raises(ValueError, match="'native' or 'torch'"):
        FastLayerStack(model, ops="cuda")


@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16])
def test_native_linear_matches_and_is_row_invariant(ops, wdtype):
    """The native product (fp32 inputs, fp32 or bf16 weights) agrees with the fp32 product of the same values,
    and each row's bits do not depend on the other rows, for every row count of decoding and verification
    (one pass over the weights) and of a prefill (tiles of rows), on 1 or 2 threads (inputs built so that any
    change in the order of summation shows)."""
    gen = torch.Generator().manual_seed(3)
    for n, k in [(37, 48), (8, 100), (96, 1536), (19, 31)]:      # tails in n (blocks of 2..8) and in k
        for m in (1, 2, 5, 13, 40):
            x, w = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen).to(wdtype)
            torch.testing.assert_close(ops.linear(x, w), x @ w.float().T, rtol=1e-5, atol=1e-4)
    threads = torch.get_num_threads()
    try:
        for n, k in [(64, 1536), (37, 100)]:                  # (37, 100): tails in n and in k
            x, w = _order_revealing(n, k, 40, wdtype)
            x = x.float()
            torch.set_num_threads(2)
            batch = ops.linear(x, w)
            torch.set_num_threads(1)
            for m in range(1, 41):
                assert torch.equal(ops.linear(x[:m].contiguous(), w), batch[:m]), (n, k, m)
            assert all(torch.equal(ops.linear(x[i:i + 1].contiguous(), w)[0], batch[i]) for i in range(40))
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(RuntimeError, match="x in fp32 and w in fp32 or bf16"):
        ops.linear(x.double(), w)
    with pytest.raises(RuntimeError, match="x in fp32 and w in fp32 or bf16"):
        ops.linear(x.bfloat16(), w)


def test_stack_kernel_choice(tiny, ops):
    model, _ = tiny
    stack = FastLayerStack(model, dtype=torch.bfloat16)
    assert stack.batch_invariant and stack.kernel == "native"
    fp32 = FastLayerStack(model)
    assert fp32.batch_invariant and fp32.kernel == "native"     # native operations and products: by construction
    with pytest.raises(ValueError, match="kernel=.native."):
        FastLayerStack(model, ops="torch", kernel="native")         # the native product needs the C++ ops
    with pytest.raises(ValueError, match="kernel must be"):
        FastLayerStack(model, kernel="amx")


# ------------------------------------------------------------------------------------------ build lock
def test_build_lock_removes_a_stale_torch_lock(tmp_path):
    """A torch `lock` file left by a stopped build is removed once our flock is held (torch would wait on it
    forever)."""
    (tmp_path / "lock").write_text("")
    said = []
    with fast_ops.build_lock(tmp_path, timeout=5, echo=said.append):
        assert not (tmp_path / "lock").exists()
    assert len(said) == 1 and "stopped part-way" in said[0] and str(tmp_path / "lock") in said[0]


def test_build_lock_waits_with_a_word_and_is_freed_when_its_holder_dies(tmp_path):
    import signal
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(tmp_path / 'lede.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('HOLDING', flush=True)\ntime.sleep(120)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HOLDING"
        (tmp_path / "lock").write_text("")       # the holder's build is running: its torch lock is not stale
        said = []
        with pytest.raises(TimeoutError, match="build lock"):
            with fast_ops.build_lock(tmp_path, timeout=1.0, poll=0.05, echo=said.append):
                pass
        assert len(said) == 1 and "Waiting for another process" in said[0]
        assert (tmp_path / "lock").exists()
        holder.send_signal(signal.SIGKILL)        # dies mid-build: the OS releases its flock
        holder.wait(10)
        with fast_ops.build_lock(tmp_path, timeout=5, poll=0.05, echo=said.append):
            assert not (tmp_path / "lock").exists()
    finally:
        holder.kill()
        holder.wait()


def test_load_recovers_from_a_stale_lock(tmp_path):
    """`load()` with a stale torch `lock` in its build folder returns the module (before the fix it waited forever,
    silently). The folder is a copy of this machine's build when there is one (no rebuild: a few seconds)."""
    import subprocess
    import sys

    if os.environ.get("LEDE_FAST_OPS") == "0":
        pytest.skip("the C++ operations are turned off (LEDE_FAST_OPS=0)")
    child = (
        "import shutil, sys\n"
        "from pathlib import Path\n"
        "from lede_env.engine import fast_ops\n"
        "target = fast_ops.module_dir()\n"
        "built = Path(sys.argv[1]) / target.name\n"
        "if any(built.glob('*.so')):\n"
        "    shutil.copytree(built, target, ignore=shutil.ignore_patterns('lock', 'lede.lock'))\n"
        "target.mkdir(parents=True, exist_ok=True)\n"
        "(target / 'lock').write_text('')\n"
        "print('LOADED', fast_ops.load(required=True) is not None, flush=True)\n"
        "print('STALE LOCK LEFT', (target / 'lock').exists())\n")
    env = dict(os.environ, LEDE_CACHE_DIR=str(tmp_path), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", child, str(fast_ops.build_dir())], capture_output=True, text=True,
                         env=env, timeout=240)
    assert "LOADED True" in out.stdout and "STALE LOCK LEFT False" in out.stdout, out.stdout + out.stderr
    assert "stopped part-way" in out.stderr


def test_the_build_is_the_one_asked_for(ops):
    """``LEDE_FAST_OPS=portable`` builds the portable loops (what CPUs without AVX-512 run); otherwise the AVX-512
    kernels are built where the CPU has them."""
    if os.environ.get("LEDE_FAST_OPS") == "portable":
        assert ops.isa == "portable"
    else:
        flags = fast_ops._cpu_flags()
        assert ops.isa == ("avx512" if " avx512f" in flags and " avx512bw" in flags else "portable")
