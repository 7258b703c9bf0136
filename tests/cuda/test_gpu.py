"""CUDA kernels against their CPU references, bit for bit. Marker `gpu`; skipped without CuPy + GPU."""

from __future__ import annotations

import numpy as np
import pytest

from seqkv.coding import gpu
from seqkv.cuda import runtime as cuda_runtime
from seqkv.kv import gpu as kvgpu
from seqkv.kv import quantizers as Q
from seqkv.kv import residual as R
from seqkv.errors import InvalidInputError

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_runtime.available(), reason="needs CuPy and a CUDA GPU"),
]


@pytest.fixture(scope="module")
def cp():
    import cupy

    return cupy


def _ref_tables(x: np.ndarray, precision: int) -> np.ndarray:
    """Quantizer-v1 tables of f32 rows from the NumPy reference (and the Rust one where built)."""
    from seqkv.coding import _quantize_ref

    ref = np.asarray(_quantize_ref.quantize_logits_ref(x, precision), dtype=np.uint32)
    try:
        from seqkv.coding import coder

        rust = np.asarray(coder.quantize_logits(x, precision), dtype=np.uint32)
        assert (rust == ref).all(), "Rust and NumPy references disagree"
    except (ImportError, AttributeError):
        pass
    return ref


def _rows_cases() -> list[tuple[str, np.ndarray, int]]:
    rng = np.random.default_rng(0)
    V = 49152
    cases = [
        ("lm-like", (rng.standard_normal((6, V)) * 3).astype(np.float32), 24),
        ("peaked", np.where(rng.random((3, V)) < 0.001, 30.0, rng.standard_normal((3, V))).astype(np.float32), 24),
        ("small-V", rng.standard_normal((5, 7)).astype(np.float32), 16),
        ("V=1", rng.standard_normal((2, 1)).astype(np.float32), 3),
        ("V not /4", rng.standard_normal((4, 1001)).astype(np.float32) * 50, 20),
        ("V = 2^P", rng.standard_normal((2, 256)).astype(np.float32), 8),
    ]
    ties = np.zeros((3, 300), np.float32)
    ties[0, [5, 17, 299]] = 2.0  # first max is index 5
    ties[1] = -0.0
    ties[1, 7] = 0.0  # -0 == +0: a = 0
    ties[2, ::2] = -np.inf
    cases.append(("ties/-0/-inf", ties, 16))
    allninf = np.full((2, 100), -np.inf, np.float32)
    allninf[1, 3] = 1.0
    cases.append(("all -inf", allninf, 12))
    huge = rng.standard_normal((3, 5000)).astype(np.float32)
    huge[0] *= 1e30
    huge[1, :10] = np.float32(3.4e38)
    huge[1, 10:20] = np.float32(-3.4e38)
    huge[2] = np.float32(1e-30) * huge[2]
    cases.append(("huge ranges", huge, 24))
    return cases


@pytest.mark.parametrize("name,x,P", _rows_cases(), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("block", [256, 512, 1024])
@pytest.mark.parametrize("cache", [0, 1, 2])
def test_quantize_matches_reference(cp, name, x, P, block, cache):
    ref = _ref_tables(x, P)
    freqs, cum = gpu.quantize_logits_gpu(cp.asarray(x), P, block=block, cache=cache)
    f = cp.asnumpy(freqs)
    assert (f == ref).all(), name
    assert (f.sum(axis=1, dtype=np.uint64) == 1 << P).all()
    c = cp.asnumpy(cum)
    assert (c[:, 0] == 0).all() and (c[:, 1:] == np.cumsum(ref, axis=1)[:, :-1]).all()


_CLUSTERS = [None, (256, 8, 6), (512, 4, 6), (128, 8, 12), (1024, 2, 6), (512, 8, 3), (64, 8, 24)]


def _check_gather(cp, xd, ref, syms, P, **kw):
    n = ref.shape[0]
    cum = np.concatenate([np.zeros((n, 1), np.uint64), np.cumsum(ref, axis=1, dtype=np.uint64)], axis=1)
    for s in syms:
        s = np.asarray(s, np.int64)
        lo, fr = gpu.gather_cdf(xd, s, P, **kw)
        assert (lo == cum[np.arange(n), s]).all() and (fr == ref[np.arange(n), s]).all(), (s, kw)


@pytest.mark.parametrize("name,x,P", _rows_cases(), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("cluster", _CLUSTERS, ids=str)
def test_cluster_kernel_matches_reference(cp, name, x, P, cluster):
    """The register-resident cluster kernel (default): tables and gather, every shape."""
    ref = _ref_tables(x, P)
    xd = cp.asarray(x)
    freqs, _ = gpu.quantize_logits_gpu(xd, P, cluster=cluster)
    assert (cp.asnumpy(freqs) == ref).all(), name
    n, V = x.shape
    rng = np.random.default_rng(V)
    syms = [np.zeros(n, np.int64), np.full(n, V - 1), rng.integers(0, V, n), np.argmax(ref, axis=1),
            np.argmax(x, axis=1), np.minimum(np.argmax(x, axis=1) + 1, V - 1)]
    _check_gather(cp, xd, ref, syms, P, cluster=cluster)


def test_cluster_kernel_unaligned_rows_and_half_kinds(cp):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((5, 49153)) * 3).astype(np.float32)
    view = cp.asarray(x)[:, 1:]  # row starts not 16-byte aligned: element-wise loads
    ref = _ref_tables(np.ascontiguousarray(x[:, 1:]), 24)
    _check_gather(cp, view, ref, [rng.integers(0, 49152, 5), np.argmax(ref, axis=1)], 24)
    f, _ = gpu.quantize_logits_gpu(view, 24)
    assert (cp.asnumpy(f) == ref).all()
    # bf16 bits (exactly widened), odd V, one row and many
    for V in (49152, 1001, 7):
        xb = (rng.standard_normal((3, V)) * 4).astype(np.float32)
        bits = ((xb.view(np.uint32) + 0x8000) >> 16).astype(np.uint16)
        wide = (bits.astype(np.uint32) << 16).view(np.float32)
        ref = _ref_tables(wide, 24)
        f, _ = gpu.quantize_logits_gpu(cp.asarray(bits), 24, kind="bf16")
        assert (cp.asnumpy(f) == ref).all(), V
        _check_gather(cp, cp.asarray(bits), ref, [rng.integers(0, V, 3), np.argmax(ref, axis=1)], 24, kind="bf16")
        f1, _ = gpu.quantize_logits_gpu(cp.asarray(bits[1]), 24, kind="bf16")
        assert (cp.asnumpy(f1)[0] == ref[1]).all()


def test_cluster_config_choice():
    assert gpu.cluster_config(49152, "f32") == (128, 8, 12)
    assert gpu.cluster_config(49152, "bf16") == (128, 8, 6)
    assert gpu.cluster_config(7, "f32") == (128, 1, 1)
    assert gpu.cluster_config(100_000, "f32") == (512, 8, 8)
    assert gpu.cluster_config(1 << 20, "f32") is None  # the row kernel takes over


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
def test_half_inputs_are_widened_exactly(cp, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x32 = (rng.standard_normal((4, 49152)) * 4).astype(np.float32)
    t = torch.from_numpy(x32).to("cuda").to(torch.bfloat16 if dtype == "bf16" else torch.float16)
    t[0, 100] = float("-inf")
    widened = t.float().cpu().numpy()
    ref = _ref_tables(widened, 24)
    freqs, _ = gpu.quantize_logits_gpu(t, 24)
    assert (cp.asnumpy(freqs) == ref).all()
    # the same bits through a raw uint16 CuPy view
    raw = cp.from_dlpack(t.view(torch.int16)).view(cp.uint16)
    freqs2, _ = gpu.quantize_logits_gpu(raw, 24, kind=dtype)
    assert (cp.asnumpy(freqs2) == ref).all()


def test_gather_and_search_match_the_table(cp):
    rng = np.random.default_rng(2)
    n, V, P = 64, 49152, 24
    x = (rng.standard_normal((n, V)) * 3).astype(np.float32)
    ref = _ref_tables(x, P)
    cum = np.concatenate([np.zeros((n, 1), np.uint64), np.cumsum(ref, axis=1, dtype=np.uint64)], axis=1)
    sym = rng.integers(0, V, n)
    sym[0] = int(np.argmax(x[0]))  # the symbol that also holds the remainder
    sym[1] = V - 1
    sym[2] = 0
    xd = cp.asarray(x)
    lo, fr = gpu.gather_cdf(xd, sym, P)
    assert (lo == cum[np.arange(n), sym]).all() and (fr == ref[np.arange(n), sym]).all()
    # search: targets at both ends of the slices and random ones
    for targets, cache in ((lo, 0), (lo + fr - 1, 1), (rng.integers(0, 1 << P, n), 2), (lo, None)):
        s, l2, f2 = gpu.search_cdf(xd, targets, P, cache=cache)
        assert (l2 <= targets).all() and (targets < l2.astype(np.uint64) + f2).all()
        assert (l2 == cum[np.arange(n), s]).all() and (f2 == ref[np.arange(n), s]).all()
    s, _, _ = gpu.search_cdf(xd, lo, P)
    assert (s == sym).all()
    # symbols on the device
    lo2, fr2 = gpu.gather_cdf(xd, cp.asarray(sym), P, cache=0)
    assert (lo2 == lo).all() and (fr2 == fr).all()


def test_torch_cuda_logits(cp):
    torch = pytest.importorskip("torch")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(8, 49152, device="cuda", generator=g) * 3
    sym = torch.randint(0, 49152, (8,), device="cuda", generator=g)
    lo, fr = gpu.gather_cdf(x, sym, 24)
    ref = _ref_tables(x.cpu().numpy(), 24)
    s = sym.cpu().numpy()
    cum = np.cumsum(ref, axis=1) - ref
    assert (lo == cum[np.arange(8), s]).all() and (fr == ref[np.arange(8), s]).all()
    # a non-contiguous view (every other row)
    lo2, fr2 = gpu.gather_cdf(x[::2], sym[::2], 24)
    assert (lo2 == lo[::2]).all() and (fr2 == fr[::2]).all()


def test_invalid_inputs(cp):
    x = np.zeros((3, 100), np.float32)
    x[1, 5] = np.nan
    with pytest.raises(InvalidInputError, match="row 1"):
        gpu.gather_cdf(cp.asarray(x), [0, 0, 0], 16)
    with pytest.raises(InvalidInputError, match="row 1"):
        gpu.gather_cdf(cp.asarray(x), [0, 0, 0], 16, cache=0)
    with pytest.raises(InvalidInputError, match="row 1"):
        gpu.quantize_logits_gpu(cp.asarray(x), 16)
    with pytest.raises(InvalidInputError):
        gpu.gather_cdf(cp.asarray(np.zeros((1, 4096), np.float32)), [0], 16, cluster=(128, 1, 1))  # 512 < 4096
    x[1, 5] = np.inf
    with pytest.raises(InvalidInputError):
        gpu.quantize_logits_gpu(cp.asarray(x), 16)
    x[1, 5] = 0
    with pytest.raises(InvalidInputError, match="out of range"):
        gpu.gather_cdf(cp.asarray(x), [0, 100, 0], 16)
    with pytest.raises(InvalidInputError):
        gpu.search_cdf(cp.asarray(x), [0, 1 << 16, 0], 16)
    with pytest.raises(InvalidInputError):
        gpu.quantize_logits_gpu(cp.asarray(x), 6)  # V > 2^P
    with pytest.raises(InvalidInputError):
        gpu.quantize_logits_gpu(np.zeros((2, 3), np.float32), 16)  # host array


# --- residual ---------------------------------------------------------------------------------


def _pair(rng, n, kind, frac=0.2, spread=2):
    from helpers import perturbed_bits

    return perturbed_bits(rng, n, kind, frac, spread)


@pytest.mark.parametrize("kind", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("n", [0, 1, 31, 33, 2048, 2048 * 3 + 5, 1_000_003])
def test_residual_pack_matches_cpu(cp, kind, n):
    rng = np.random.default_rng(n)
    x, y = _pair(rng, n, kind)
    ref = R.pack(x, y, kind=kind)
    got = kvgpu.residual_pack(cp.asarray(x), cp.asarray(y), kind=kind)
    assert got.kind == ref.kind and got.n == ref.n
    assert (got.widths == ref.widths).all() and (got.words == ref.words).all()
    back = kvgpu.residual_unpack(ref, cp.asarray(y), kind=kind)
    assert (cp.asnumpy(back) == x).all()
    dev = kvgpu.residual_pack(cp.asarray(x), cp.asarray(y), kind=kind, host=False)
    assert (cp.asnumpy(kvgpu.residual_unpack(dev, cp.asarray(y), kind=kind)) == x).all()


@pytest.mark.parametrize("kind", ["f32", "bf16"])
@pytest.mark.parametrize("bpw", [8, 16, 32])
def test_residual_tile_shapes(cp, kind, bpw):
    """Every tile shape, many tiles (the decoupled look-back), wide and narrow blocks."""
    rng = np.random.default_rng(bpw)
    for n, frac, spread in ((8192 * 9 + 77, 0.05, 2), (300_001, 0.9, 1000), (64, 1.0, 1 << 14)):
        x, y = _pair(rng, n, kind, frac, spread)
        ref = R.pack(x, y, kind=kind)
        got = kvgpu.residual_pack(cp.asarray(x), cp.asarray(y), kind=kind, bpw=bpw)
        assert (got.widths == ref.widths).all() and (got.words == ref.words).all(), n
        back = kvgpu.residual_unpack(ref, cp.asarray(y), kind=kind, bpw=bpw)
        assert (cp.asnumpy(back) == x).all(), n


def test_residual_unaligned_views(cp):
    rng = np.random.default_rng(3)
    x, y = _pair(rng, 10_001, "bf16")
    xd, yd = cp.asarray(x), cp.asarray(y)
    ref = R.pack(x[1:], y[1:], kind="bf16")
    got = kvgpu.residual_pack(xd[1:], yd[1:], kind="bf16")
    assert (got.widths == ref.widths).all() and (got.words == ref.words).all()
    assert (cp.asnumpy(kvgpu.residual_unpack(ref, yd[1:], kind="bf16")) == x[1:]).all()


def test_residual_torch_bf16(cp):
    torch = pytest.importorskip("torch")
    a = torch.randn(30, 3, 257, 64, device="cuda")
    o = a.to(torch.bfloat16)
    r = (a * (1 + 1e-3 * torch.randn_like(a))).to(torch.bfloat16)
    p = kvgpu.residual_pack(o, r)
    ref = R.pack(o.cpu(), r.cpu())
    assert (p.words == ref.words).all() and (p.widths == ref.widths).all()
    back = kvgpu.residual_unpack(p, r)
    assert (cp.asnumpy(back).ravel() == o.view(torch.int16).cpu().numpy().view(np.uint16).ravel()).all()


# --- quantizers -------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("d", [64, 128, 512])
def test_turbo_matches_cpu(cp, bits, d):
    rng = np.random.default_rng(bits * d)
    x = (rng.standard_normal((1000, d)) * rng.uniform(0.01, 100, (1000, 1))).astype(np.float32)
    x[3] = 0
    tq = Q.TurboQuant(d, bits, seed=3)
    ref = tq.quantize(x)
    got = tq.quantize(cp.asarray(x))
    assert (cp.asnumpy(got.codes) == ref.codes).all()
    assert (cp.asnumpy(got.norms).view(np.uint32) == ref.norms.view(np.uint32)).all()
    deq = tq.dequantize(got)
    assert (cp.asnumpy(deq).view(np.uint32) == tq.dequantize(ref).view(np.uint32)).all()


def test_turbo_bf16_torch(cp):
    torch = pytest.importorskip("torch")
    x = torch.randn(30, 3, 100, 64, device="cuda").to(torch.bfloat16)
    tq = Q.TurboQuant(64, 3)
    got = tq.quantize(x)
    ref = tq.quantize(x.cpu())
    assert (cp.asnumpy(got.codes) == ref.codes).all()


@pytest.mark.parametrize("T", [64, 70, 5])
def test_kivi_matches_cpu(cp, T):
    rng = np.random.default_rng(T)
    k = rng.standard_normal((2, 3, T, 64)).astype(np.float32)
    k[..., 0, :] = -0.0
    kv = Q.KIVI(bits=2, group=32)
    for quant in ("quantize_keys", "quantize_values"):
        ref = getattr(kv, quant)(k)
        got = getattr(kv, quant)(cp.asarray(k))
        assert (cp.asnumpy(got.codes) == ref.codes).all()
        assert (cp.asnumpy(got.scales).view(np.uint32) == ref.scales.view(np.uint32)).all()
        assert (cp.asnumpy(got.mins).view(np.uint32) == ref.mins.view(np.uint32)).all()
        assert (cp.asnumpy(kv.dequantize(got)).view(np.uint32) == kv.dequantize(ref).view(np.uint32)).all()


def test_encode_tokens_and_decode_token_match_the_cpu_coder(cp):
    from seqkv.coding import coder

    rng = np.random.default_rng(9)
    x = (rng.standard_normal((20, 49152)) * 3).astype(np.float32)
    toks = rng.integers(0, 49152, 20)
    data = gpu.encode_tokens(cp.asarray(x), toks, 24)
    assert data == coder.encode_logits(toks, x, 24)
    dec = coder.Decoder(data, 24)
    xd = cp.asarray(x)
    assert [gpu.decode_token(dec, xd[i], 24) for i in range(20)] == toks.tolist()
