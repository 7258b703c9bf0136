"""Quantizer v1: Rust == NumPy reference == spec, on random and adversarial logits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import seqkv
from seqkv import _native
from seqkv.coding import coder
from seqkv.coding._quantize_ref import EXP2, LOG2E_SCALED, quantize_logits_ref


def exact_exp2_ok(r: int, n: int) -> bool:
    """n == round(2**(31 - r/1024)), proven with integers: (2n-1)^1024 < 2^(32*1024 - r) < (2n+1)^1024."""
    p = 1 << (32 * 1024 - r)
    return (2 * n - 1) ** 1024 < p < (2 * n + 1) ** 1024


def test_exp2_tables_are_exact_and_identical():
    rust = _native.exp2_table()
    assert len(rust) == len(EXP2) == 1024
    assert rust == [int(v) for v in EXP2]
    assert rust[0] == 1 << 31
    assert rust[1023] == 1074468888  # round(2**(30 + 1/1024)), a known answer
    assert all(exact_exp2_ok(r, n) for r, n in enumerate(rust))


def test_constants():
    assert np.float32(LOG2E_SCALED).view(np.uint32) == 0x44B8AA3B
    assert float(LOG2E_SCALED) == 1477.3197021484375
    assert coder.QUANTIZER_VERSION == 1


def check(logits: np.ndarray, precision: int) -> np.ndarray:
    got = coder.quantize_logits(logits, precision)
    ref = quantize_logits_ref(logits, precision)
    np.testing.assert_array_equal(got, ref)
    assert got.dtype == np.uint32
    assert (got >= 1).all()
    assert (got.astype(np.uint64).sum(axis=-1) == 1 << precision).all()
    if _native.has_avx2():
        for row in np.atleast_2d(logits):
            np.testing.assert_array_equal(
                _native.quantize_row_path(row, precision, "scalar"), _native.quantize_row_path(row, precision, "avx2")
            )
    return got


@pytest.mark.parametrize("precision", [12, 16, 24])
def test_random_rows(rng, precision):
    for scale in (0.01, 1.0, 5.0, 100.0, 1e4):
        check((rng.standard_normal((16, 1000)) * scale).astype(np.float32), precision)


def test_adversarial_rows(rng):
    v = 4096
    rows = [
        np.zeros(v, np.float32),  # all ties
        np.full(v, -np.inf, np.float32),  # all -inf
        np.where(rng.random(v) < 0.5, -np.inf, 1.0).astype(np.float32),  # ties and -inf
        np.linspace(-3e38, 3e38, v).astype(np.float32),  # near ±3e38: x - m overflows to -inf
        np.full(v, 3.4e38, np.float32),
        np.full(v, -3.4e38, np.float32),
        np.array([np.finfo(np.float32).max, np.finfo(np.float32).min] * (v // 2), np.float32),
        np.array([1e-40, 0.0, -0.0, -1e-40] * (v // 4), np.float32),  # denormals and signed zeros
        np.array([-0.0, 0.0] * (v // 2), np.float32),
        (np.arange(v) * -22.18 / v).astype(np.float32),  # straddles the ZMIN cut
        (np.arange(v) * (-32768.0 / 1477.3197) / v * 1.001).astype(np.float32),
        (np.round(rng.standard_normal(v) * 4) / 2).astype(np.float32),  # many ties at half-grid points
    ]
    row = np.zeros(v, np.float32)
    row[-1] = 1.0
    rows.append(row)  # maximum at the last index
    for precision in (12, 13, 24):
        check(np.stack(rows), precision)


def test_rounding_ties_on_the_grid():
    # z = (x - m) * C lands exactly on .5 for some x: compare with the reference element by element.
    c = np.float32(LOG2E_SCALED)
    ks = np.arange(1, 2000, dtype=np.float32)
    x = -((ks + np.float32(0.5)) / c).astype(np.float32)
    x = np.concatenate([[np.float32(0.0)], x]).astype(np.float32)
    check(x[None, :], 24)


@pytest.mark.parametrize("v,precision", [(1, 1), (1, 24), (2, 1), (16, 4), (4096, 12), (49152, 24), (65536, 16)])
def test_extreme_shapes(rng, v, precision):
    got = check((rng.standard_normal((3, v)) * 3).astype(np.float32), precision)
    if v == 1 << precision:
        assert (got == 1).all()
    if v == 1:
        assert (got == 1 << precision).all()


def test_one_dimensional_input_and_empty_batch(rng):
    x = rng.standard_normal(50).astype(np.float32)
    np.testing.assert_array_equal(coder.quantize_logits(x), coder.quantize_logits(x[None])[0])
    assert coder.quantize_logits(np.zeros((0, 50), np.float32)).shape == (0, 50)


@settings(max_examples=80, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.integers(1, 300)),
        elements=st.one_of(
            st.floats(-1e4, 1e4, width=32),
            st.just(-np.inf),
            st.floats(width=32, allow_nan=False, allow_infinity=False),
        ),
    ),
    st.integers(9, 24),
)
def test_hypothesis_rust_equals_reference(x, precision):
    check(x, precision)


def test_nan_and_inf_are_rejected_by_both():
    for bad in (np.nan, np.inf):
        x = np.array([[0.0, bad]], np.float32)
        with pytest.raises(seqkv.InvalidInputError):
            coder.quantize_logits(x)
        with pytest.raises(seqkv.InvalidInputError):
            quantize_logits_ref(x)


@pytest.mark.model
def test_real_smollm2_logits(smollm2):
    import torch

    model, tokenizer = smollm2
    text = open("/usr/share/common-licenses/Apache-2.0").read()[:2000]
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :64]
    with torch.no_grad():
        logits = model(ids).logits[0].float().numpy()
    check(logits, 24)


def test_flush_denormal_mode_does_not_change_tables():
    """Another library may set FTZ/DAZ in this thread (torch.set_flush_denormal): the tables must not change."""
    torch = pytest.importorskip("torch")
    row = np.array([1e-40, 0.0, -1e-40, 2e-45, -0.0] * 40, np.float32)
    row2 = np.array([0.0, 1e-41] + [-3.0] * 97 + [1e-40], np.float32)
    expected = [quantize_logits_ref(r, 24) for r in (row, row2)]
    assert expected[1][99] > expected[1][0]  # the denormal 1e-40 is the strict maximum: it gets the remainder
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        for r, e in zip((row, row2), expected):
            for path in ("scalar", "avx2"):
                np.testing.assert_array_equal(_native.quantize_row_path(r, 24, path), e)
            enc = coder.Encoder()
            enc.push_logits(3, r)
            assert enc.finish() == coder.encode([3], e[None, :])
    finally:
        torch.set_flush_denormal(False)
