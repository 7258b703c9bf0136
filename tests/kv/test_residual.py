"""KV residuals: exact round trips of the packed and the entropy-coded forms (CPU reference)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqkv.kv import residual as R
from seqkv.errors import CorruptStreamError, InvalidInputError

from helpers import KIND_DTYPES, perturbed_bits


@pytest.mark.parametrize("kind", ["f32", "bf16", "f16"])
def test_key_is_monotone_and_self_inverse(kind):
    dt, width = R.KINDS[kind]
    if kind == "f32":
        vals = np.array([-np.inf, -3.0, -1e-40, -0.0, 0.0, 1e-45, 2.0, np.inf], np.float32)
        bits = vals.view(np.uint32)
    else:
        vals = np.array([-np.inf, -3.0, -1e-7, -0.0, 0.0, 6e-8, 2.0, np.inf], np.float16)
        bits = vals.view(np.uint16)
    keys = R.ordered_key(bits, width).astype(np.int64)
    keys = np.where(keys >= 1 << (width - 1), keys - (1 << width), keys)
    assert (np.diff(keys) > 0).all()
    assert (R.ordered_key(R.ordered_key(bits, width), width) == bits).all()
    # -0.0 and +0.0 are one step apart
    assert keys[4] - keys[3] == 1


def test_one_ulp_is_one():
    x = np.array([1.0, -1.0, 0.0, -0.0], np.float32)
    up = np.nextafter(x, np.float32(np.inf))
    z, kind = R.residual_z(up, x)
    assert kind == "f32"
    # +1 step -> zigzag 2; from -0.0 the next float up is the smallest subnormal, two steps on
    # (-0.0 -> +0.0 -> 1e-45)
    assert z.tolist() == [2, 2, 2, 4]
    z, _ = R.residual_z(x, up)
    assert z.tolist() == [1, 1, 1, 3]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 5000), kind=st.sampled_from(["f32", "bf16", "f16"]), seed=st.integers(0, 2**32 - 1),
       frac=st.sampled_from([0.0, 0.01, 0.3, 1.0]), spread=st.sampled_from([1, 3, 1000]))
def test_pack_roundtrip(n, kind, seed, frac, spread):
    rng = np.random.default_rng(seed)
    x, y = perturbed_bits(rng, n, kind, frac, spread)
    p = R.pack(x, y, kind=kind)
    assert p.widths.size == -(-n // R.BLOCK)
    assert int(p.widths.sum()) == p.words.size
    back = R.unpack(p, y)
    assert back.dtype == x.dtype and (back == x).all()
    q = R.Packed.from_bytes(p.to_bytes())
    assert q.kind == p.kind and q.n == p.n and (q.words == p.words).all() and (q.widths == p.widths).all()


def test_pack_layout_is_bit_planes():
    z = np.zeros(64, np.uint32)
    z[0] = 1  # block 0: width 1, word 0 = bit of lane 0
    z[5] = 3  # and lane 5 has bits 0 and 1 -> width 2
    z[32 + 31] = 4  # block 1: width 3, word 2 has lane 31
    p = R.pack_z(z, "f32")
    assert p.widths.tolist() == [2, 3]
    assert p.words.tolist() == [1 | 1 << 5, 1 << 5, 0, 0, 1 << 31]
    assert (R.unpack_z(p) == z).all()


def test_packed_rejects_corruption():
    rng = np.random.default_rng(1)
    x, y = perturbed_bits(rng, 1000, "bf16")
    data = R.pack(x, y, kind="bf16").to_bytes()
    with pytest.raises(CorruptStreamError):
        R.Packed.from_bytes(data[:-1])
    with pytest.raises(CorruptStreamError):
        R.Packed.from_bytes(b"XXXX" + data[4:])
    bad = bytearray(data)
    bad[21] = 200  # first width > 16
    with pytest.raises(CorruptStreamError):
        R.Packed.from_bytes(bytes(bad))


def test_shape_and_kind_mismatch():
    with pytest.raises(InvalidInputError):
        R.residual_z(np.zeros(3, np.float32), np.zeros(4, np.float32))
    with pytest.raises(InvalidInputError):
        R.residual_z(np.zeros(3, np.float32), np.zeros(3, np.float16))
    with pytest.raises(InvalidInputError):
        R.as_bits(np.zeros(3, np.int64))


@settings(max_examples=30, deadline=None)
@given(z=st.lists(st.integers(0, 2**32 - 1), max_size=200))
def test_symbolize_roundtrip(z):
    za = np.array(z, np.uint32)
    sym, raw, nbits = R.symbolize(za, 32)
    assert (sym < R._nsym(32)).all()
    raw2 = R._unpack_varbits(R._pack_varbits(raw, nbits), nbits)
    assert (R.desymbolize(sym, raw2) == za).all()


def _has_adaptive() -> bool:
    try:
        from seqkv import _native
    except ImportError:
        return False
    return hasattr(_native, "encode_adaptive")


needs_coder = pytest.mark.skipif(not _has_adaptive(), reason="the native extension (adaptive range coder) is not built")


@needs_coder
@pytest.mark.parametrize("kind", ["f32", "bf16", "f16"])
def test_encode_roundtrip(kind):
    rng = np.random.default_rng(7)
    pairs = [perturbed_bits(rng, n, kind, frac) for n, frac in [(1000, 0.3), (77, 0.0), (4096, 0.02), (0, 0.5)]]
    data = R.encode(pairs, kind=kind)
    out = R.decode(data, [y for _, y in pairs], kind=kind)
    for (x, _), back in zip(pairs, out):
        assert (np.asarray(back).view(x.dtype) == x).all()
    with pytest.raises(CorruptStreamError):
        R.decode(data[:-3], [y for _, y in pairs], kind=kind)
    with pytest.raises(CorruptStreamError):
        R.decode(data, [y for _, y in pairs[:-1]], kind=kind)


@needs_coder
def test_encode_all_zero_is_tiny():
    x = np.random.default_rng(0).standard_normal(10000).astype(np.float32)
    data = R.encode([(x, x.copy()), (x[:10], x[:10].copy())])
    assert len(data) == 10  # magic, format, flag, CRC32C
    out = R.decode(data, [x, x[:10]])
    assert (out[0].view(np.uint32) == x.view(np.uint32)).all()


@needs_coder
def test_encode_beats_packing_on_ulp_noise():
    rng = np.random.default_rng(3)
    x, y = perturbed_bits(rng, 100_000, "bf16", frac=0.05, spread=1)
    coded = len(R.encode([(x, y)], kind="bf16"))
    packed = R.pack(x, y, kind="bf16").nbytes
    assert coded < 0.6 * packed


@needs_coder
def test_encode_torch_tensors_roundtrip():
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    orig = torch.randn(2, 3, 17, 64, generator=g).to(torch.bfloat16)
    recomp = (orig.float() * (1 + 1e-3 * torch.randn(orig.shape, generator=g))).to(torch.bfloat16)
    data = R.encode([(orig, recomp)])
    (back,) = R.decode(data, [recomp])
    assert back.dtype == torch.bfloat16 and torch.equal(back.view(torch.int16), orig.view(torch.int16))


@pytest.mark.model
@pytest.mark.slow
@needs_coder
def test_real_kv_prefill_vs_steps(smollm2):
    """Real SmolLM2 KV: prefill vs single steps on CPU, residual restores the exact bits."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benches"))
    from _kv import run_schedule, text_ids

    model, tok = smollm2
    ids = text_ids(tok, 24)
    a = run_schedule(model, ids, [24])
    b = run_schedule(model, ids, [1] * 24)
    pairs = [(x, y) for (ka, va), (kb, vb) in zip(a, b) for x, y in ((ka, kb), (va, vb))]
    data = R.encode(pairs)
    out = R.decode(data, [y for _, y in pairs])
    for (x, _), back in zip(pairs, out):
        assert back.dtype == x.dtype and bool((back.view(__import__("torch").int32) == x.view(__import__("torch").int32)).all())
