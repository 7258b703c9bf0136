"""Round trips of every coding mode (hypothesis), error mapping, and the streaming API."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seqkv
from seqkv.coding import coder

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_table(rng: np.random.Generator, v: int, precision: int, zeros: bool = False) -> np.ndarray:
    """A uint32 table of v entries summing to 2**precision (zeros allowed if asked)."""
    total = 1 << precision
    w = rng.pareto(1.0, size=v) + 1e-3
    if zeros and v > 1:
        w[rng.random(v) < 0.3] = 0
        w[rng.integers(v)] = 1.0
    lo = 0 if zeros else 1
    base = np.where(w > 0, lo, 0).astype(np.int64)
    spare = total - int(base.sum())
    f = base + np.floor(w / w.sum() * spare).astype(np.int64)
    f[np.argmax(w)] += total - int(f.sum())
    assert f.sum() == total and (f >= 0).all()
    return f.astype(np.uint32)


def pick(rng: np.random.Generator, f: np.ndarray, n: int) -> np.ndarray:
    nz = np.flatnonzero(f)
    return nz[rng.integers(len(nz), size=n)]


@SETTINGS
@given(
    v=st.integers(1, 300),
    precision=st.integers(1, 24),
    n=st.integers(0, 2000),
    seed=st.integers(0, 2**32 - 1),
    zeros=st.booleans(),
)
def test_static_round_trip(v, precision, n, seed, zeros):
    if v > 1 << precision:
        v = 1 << precision
    rng = np.random.default_rng(seed)
    f = random_table(rng, v, precision, zeros)
    s = pick(rng, f, n)
    data = coder.encode(s, f, precision)
    out = coder.decode(data, f, n, precision)
    assert out.dtype == np.uint32  # the native API returns token ids and symbols as uint32
    np.testing.assert_array_equal(out, s)


@SETTINGS
@given(
    v=st.integers(1, 200),
    precision=st.integers(1, 24),
    n=st.integers(0, 200),
    seed=st.integers(0, 2**32 - 1),
)
def test_per_step_and_streaming_round_trip(v, precision, n, seed):
    v = min(v, 1 << precision)
    rng = np.random.default_rng(seed)
    tables = np.stack([random_table(rng, v, precision, zeros=True) for _ in range(n)]) if n else np.zeros((0, v), np.uint32)
    s = np.array([pick(rng, t, 1)[0] for t in tables], dtype=np.int64)
    data = coder.encode(s, tables, precision)
    np.testing.assert_array_equal(coder.decode(data, tables, precision=precision), s)
    enc = coder.Encoder(precision)
    for sym, row in zip(s, tables):
        enc.push(int(sym), row)
    assert len(enc) == n
    assert enc.finish() == data
    dec = coder.Decoder(data, precision)
    assert [dec.pop(row) for row in tables] == s.tolist()
    dec.finish()


@SETTINGS
@given(
    v=st.integers(1, 2000),
    n=st.integers(0, 40),
    precision=st.sampled_from([11, 16, 20, 24]),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([0.1, 3.0, 30.0]),
)
def test_logits_round_trip_and_equivalence(v, n, precision, seed, scale):
    v = min(v, 1 << precision)
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n, v)) * scale).astype(np.float32)
    logits[rng.random((n, v)) < 0.05] = -np.inf
    s = rng.integers(0, v, size=n)
    data = coder.encode_logits(s, logits, precision)
    # Same bytes as materialising the tables, and as the streaming encoder.
    assert data == coder.encode(s, coder.quantize_logits(logits, precision), precision)
    enc = coder.Encoder(precision)
    for sym, row in zip(s, logits):
        enc.push_logits(sym, row)
    assert enc.finish() == data
    np.testing.assert_array_equal(coder.decode_logits(data, logits, precision), s)
    dec = coder.Decoder(data, precision)
    assert [dec.pop_logits(row) for row in logits] == s.tolist()


@SETTINGS
@given(
    n_symbols=st.integers(1, 1000),
    n=st.integers(0, 3000),
    increment=st.integers(0, 64),
    seed=st.integers(0, 2**32 - 1),
)
def test_adaptive_round_trip(n_symbols, n, increment, seed):
    rng = np.random.default_rng(seed)
    s = np.minimum(rng.geometric(0.2, size=n) - 1, n_symbols - 1)
    data = coder.encode_adaptive(s, n_symbols, increment)
    np.testing.assert_array_equal(coder.decode_adaptive(data, n_symbols, n, increment), s)


def test_adaptive_learns_a_skewed_stream():
    rng = np.random.default_rng(1)
    s = np.where(rng.random(20000) < 0.9, 7, rng.integers(0, 256, 20000))
    data = coder.encode_adaptive(s, 256)
    entropy_bits = 20000 * (-(0.9 * np.log2(0.9)) + 0.1 * (np.log2(256) - np.log2(0.1)))
    assert len(data) * 8 < 1.1 * entropy_bits


def test_adaptive_model_inside_a_stream():
    model = coder.AdaptiveModel(10)
    enc = coder.Encoder(16)
    msg = [3, 3, 9, 0, 3, 3]
    for i, sym in enumerate(msg):
        if i % 2:
            model.encode(enc, sym)
        else:
            enc.push(sym, np.full(16, 1 << 12, np.uint32))
    data = enc.finish()
    model = coder.AdaptiveModel(10)
    dec = coder.Decoder(data, 16)
    got = [model.decode(dec) if i % 2 else dec.pop(np.full(16, 1 << 12, np.uint32)) for i in range(len(msg))]
    assert got == msg


def test_push_slice_custom_totals():
    enc = coder.Encoder()
    slices = [(0, 3, 7), (3, 4, 7), (10, 1, 11), (0, 1, 1)]
    for c, f, t in slices:
        enc.push_slice(c, f, t)
    dec = coder.Decoder(enc.finish())
    for c, f, t in slices:
        assert c <= dec.target(t) < c + f
        dec.advance(c, f)
    dec.finish()


def test_empty_and_certain_streams_are_empty():
    assert coder.encode([], np.array([1 << 24], np.uint32)) == b""
    assert coder.encode([0] * 100, np.array([1 << 24, 0], np.uint32)) == b""
    np.testing.assert_array_equal(coder.decode(b"", np.array([1 << 24, 0], np.uint32), 5), [0] * 5)


def test_overhead_is_tiny():
    rng = np.random.default_rng(0)
    f = random_table(rng, 1000, 20)
    s = pick(rng, f, 5000)
    info_bits = -np.log2(f[s] / 2**20).sum()
    assert len(coder.encode(s, f, 20)) * 8 <= info_bits + 32


@pytest.mark.parametrize(
    "call",
    [
        lambda: coder.encode([1], np.array([16, 0], np.uint32), 4),  # frequency 0
        lambda: coder.encode([2], np.array([8, 8], np.uint32), 4),  # out of range
        lambda: coder.encode([-1], np.array([8, 8], np.uint32), 4),
        lambda: coder.encode([0], np.array([8, 7], np.uint32), 4),  # bad sum
        lambda: coder.encode([0], np.array([8, 8], np.uint32), 25),
        lambda: coder.encode([0], np.array([8, 8], np.uint32), 0),
        lambda: coder.encode([0, 1], np.array([[8, 8]], np.uint32), 4),  # shape mismatch
        lambda: coder.encode([0.5], np.array([8, 8], np.uint32), 4),
        lambda: coder.decode(b"", np.array([8, 8], np.uint32)),  # n missing
        lambda: coder.quantize_logits(np.array([[0.0, np.nan]], np.float32)),
        lambda: coder.quantize_logits(np.array([[0.0, np.inf]], np.float32)),
        lambda: coder.encode_logits([0], np.array([[0.0, np.nan]], np.float32)),
        lambda: coder.encode_logits([0], np.zeros((1, 17), np.float32), 4),  # V > 2**P
        lambda: coder.encode_logits([0], np.zeros((1, 4), np.float64)),  # float64 refused
        lambda: coder.Encoder().push_logits(0, np.array([np.nan], np.float32)),
        lambda: coder.Encoder(4).push(0, np.array([8, 7], np.uint32)),
        lambda: coder.encode_adaptive([5], 5),
        lambda: coder.encode(["a"], np.array([8, 8], np.uint32), 4),
        lambda: coder.Encoder().push_slice(-1, 1, 2),
        lambda: coder.AdaptiveModel(4).cdf(-1),
        lambda: coder.AdaptiveModel(4).encode(coder.Encoder(), 4),
    ],
)
def test_invalid_input_raises_invalid_input_error(call):
    with pytest.raises(seqkv.InvalidInputError):
        call()


def test_finished_encoder_refuses_more():
    enc = coder.Encoder()
    enc.finish()
    with pytest.raises(seqkv.InvalidInputError):
        enc.push(0, np.array([1 << 24], np.uint32))
    with pytest.raises(seqkv.InvalidInputError):
        enc.finish()


def test_corrupt_streams_raise_or_decode_garbage():
    rng = np.random.default_rng(3)
    f = random_table(rng, 50, 16)
    s = pick(rng, f, 400)
    data = coder.encode(s, f, 16)
    # Trailing garbage and a wrong count are detected.
    with pytest.raises(seqkv.CorruptStreamError):
        coder.decode(data + b"\x01\x02\x03\x04\x05\x06\x07\x08", f, 400, 16)
    with pytest.raises(seqkv.CorruptStreamError):
        coder.decode(data, f, 100, 16)
    # Random bytes: an error or some symbols, never a crash.
    for _ in range(200):
        junk = rng.integers(0, 256, rng.integers(0, 40), dtype=np.uint8).tobytes()
        try:
            out = coder.decode(junk, f, 50, 16)
            assert len(out) == 50
        except seqkv.CorruptStreamError:
            pass


def test_zero_copy_inputs_are_not_modified():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((8, 100)).astype(np.float32)
    before = logits.copy()
    coder.decode_logits(coder.encode_logits(np.arange(8), logits), logits)
    np.testing.assert_array_equal(logits, before)
    # Non-contiguous and other integer dtypes are converted once.
    wide = np.zeros((8, 200), np.float32)
    wide[:, ::2] = logits
    assert coder.encode_logits(np.arange(8, dtype=np.uint16), wide[:, ::2]) == coder.encode_logits(
        np.arange(8), logits
    )


def test_crc32c_check_value():
    assert coder.crc32c(b"123456789") == 0xE3069283
    assert coder.crc32c(b"6789", coder.crc32c(b"12345")) == 0xE3069283
    assert coder.tokens_checksum([1, 2]) == coder.crc32c(np.array([1, 2], "<u4").tobytes())
