"""Per-vector KV quantizers (CPU references): codebooks, round trips, error bounds, metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seqkv.kv import quantizers as Q
from seqkv.errors import InvalidInputError


def test_lloyd_max_matches_known_codebooks():
    # Max (1960): optimal Gaussian quantizer levels
    assert np.allclose(Q.lloyd_max_gaussian(2)[2:], [0.4528, 1.5104], atol=1e-4)
    assert np.allclose(Q.lloyd_max_gaussian(3)[4:], [0.2451, 0.7560, 1.3440, 2.1520], atol=1e-4)
    c4 = Q.lloyd_max_gaussian(4)
    assert np.allclose(c4, -c4[::-1]) and abs(c4[-1] - 2.7326) < 1e-3


def test_fwht_is_the_hadamard_matrix():
    d = 16
    H = np.array([[1.0]])
    while H.shape[0] < d:
        H = np.block([[H, H], [H, -H]])
    x = np.random.default_rng(0).standard_normal((3, d)).astype(np.float32)
    assert np.allclose(Q.fwht(x), x @ H.T, atol=1e-5)
    assert np.allclose(Q.fwht(Q.fwht(x)) / d, x, atol=1e-5)


@pytest.mark.parametrize("bits,max_rel", [(2, 0.14), (3, 0.042), (4, 0.012)])
def test_turbo_distortion_near_lloyd_max(bits, max_rel):
    # Lloyd-Max Gaussian distortion: 0.1175, 0.03454, 0.009497 (relative MSE)
    rng = np.random.default_rng(bits)
    x = rng.standard_normal((2000, 64)).astype(np.float32) * rng.uniform(0.1, 10, (2000, 1)).astype(np.float32)
    x[:, 3] *= 20  # an outlier channel: the rotation spreads it
    tq = Q.TurboQuant(64, bits, seed=1)
    q = tq.quantize(x)
    assert q.codes.dtype == np.uint8 and int(q.codes.max()) < 2**bits and q.norms.shape == (2000,)
    xh = tq.dequantize(q)
    assert xh.dtype == np.float32 and xh.shape == x.shape
    rel = float(np.sum((x - xh) ** 2) / np.sum(x * x))
    assert rel < max_rel
    assert q.nbytes == (2000 * 64 * bits + 7) // 8 + 2000 * 4


def test_turbo_is_deterministic_and_seeded():
    x = np.random.default_rng(0).standard_normal((5, 128)).astype(np.float32)
    a = Q.TurboQuant(128, 3, seed=5).quantize(x)
    b = Q.TurboQuant(128, 3, seed=5).quantize(x)
    c = Q.TurboQuant(128, 3, seed=6).quantize(x)
    assert (a.codes == b.codes).all() and (a.norms.view(np.uint32) == b.norms.view(np.uint32)).all()
    assert not (a.codes == c.codes).all()


def test_turbo_zero_vector_and_bad_args():
    tq = Q.TurboQuant(32, 2)
    q = tq.quantize(np.zeros((2, 32), np.float32))
    assert (q.norms == 0).all() and (tq.dequantize(q) == 0).all()
    with pytest.raises(InvalidInputError):
        Q.TurboQuant(48, 3)
    with pytest.raises(InvalidInputError):
        Q.TurboQuant(64, 5)
    with pytest.raises(InvalidInputError):
        tq.quantize(np.zeros((2, 16), np.float32))


def test_kivi_keys_per_channel_values_per_token():
    rng = np.random.default_rng(0)
    k = rng.standard_normal((2, 3, 70, 64)).astype(np.float32)
    k[..., 5] += 30  # per-channel offsets are what per-channel key quantization absorbs
    kv = Q.KIVI(bits=2, group=32)
    ck = kv.quantize_keys(k)
    assert ck.codes.shape == (2, 3, 64, 64) and ck.scales.shape == (2, 3, 2, 64) and ck.tail.shape == (2, 3, 6, 64)
    kh = kv.dequantize(ck)
    assert kh.shape == k.shape
    assert (kh[..., 64:, :] == k[..., 64:, :]).all()  # tail kept
    step = np.repeat(ck.scales, 32, axis=-2)
    assert (np.abs(kh[..., :64, :] - k[..., :64, :]) <= step / 2 * (1 + 1e-5) + 1e-6).all()

    v = rng.standard_normal((2, 3, 70, 64)).astype(np.float32)
    cv = kv.quantize_values(v)
    assert cv.codes.shape == v.shape and cv.scales.shape == (2, 3, 70, 2) and cv.tail is None
    vh = kv.dequantize(cv)
    step = np.repeat(cv.scales, 32, axis=-1)
    assert (np.abs(vh - v) <= step / 2 * (1 + 1e-5) + 1e-6).all()
    with pytest.raises(InvalidInputError):
        Q.KIVI(group=48).quantize_values(v)


def test_kivi_constant_group():
    kv = Q.KIVI(bits=2, group=4)
    c = kv.quantize_values(np.full((1, 8), 3.5, np.float32))
    assert (c.scales == 0).all() and (c.codes == 0).all()
    assert (kv.dequantize(c) == 3.5).all()


def test_bf16_input_is_widened_exactly():
    torch = pytest.importorskip("torch")
    x = torch.randn(4, 64).to(torch.bfloat16)
    tq = Q.TurboQuant(64, 3)
    a = tq.quantize(x)
    b = tq.quantize(x.float().numpy())
    assert (a.codes == b.codes).all()


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_pack_codes_roundtrip(bits):
    c = np.random.default_rng(bits).integers(0, 2**bits, 1001).astype(np.uint8)
    p = Q.pack_codes(c, bits)
    assert p.size == (1001 * bits + 7) // 8
    assert (Q.unpack_codes(p, bits, 1001) == c).all()


def test_metrics():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((3, 5, 64)).astype(np.float32)
    k = rng.standard_normal((3, 40, 64)).astype(np.float32)
    e0 = Q.attention_score_error(q, k, k)
    assert e0["logit_max_abs_err"] == 0 and abs(e0["softmax_kl_mean"]) < 1e-12
    kh = k + np.float32(0.1)
    e = Q.attention_score_error(q, k, kh)
    assert e["logit_mean_abs_err"] > 0 and 0 <= e["softmax_tv_mean"] <= 1
    m = Q.mse(k, kh)
    assert math.isclose(m["mse"], 0.01, rel_tol=1e-4)
