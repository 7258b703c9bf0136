"""NumPy reference of quantizer v1 (``docs/numerics.md``): float32 logits → uint32 frequencies.

Vectorised over rows and entries, with only IEEE-exact float32 operations (one subtraction, one
multiplication, ``np.rint``) and uint64/int64 integer arithmetic, so it gives the same bits as the
Rust implementation (``seqkv.coding.coder.quantize_logits``) and the CUDA kernel. It is the readable
statement of the algorithm and the oracle of the tests, not the fast path.
"""

from __future__ import annotations

import decimal

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInputError

__all__ = ["EXP2", "LOG2E_SCALED", "FRACTION_BITS", "SCALE_SHIFT", "ZMIN", "quantize_logits_ref"]

FRACTION_BITS = 10
#: ``C``: float32 with bits 0x44b8aa3b (= 1477.3197021484375 ~ log2(e) * 2**10).
LOG2E_SCALED = np.array([0x44B8AA3B], dtype=np.uint32).view(np.float32)[0]
ZMIN = np.float32(-32768.0)
SCALE_SHIFT = 39

def _exp2_entry(r: int) -> int:
    """``round(2**(31 - r/1024))`` from a 60-digit decimal power: the value is irrational for
    ``r > 0``, so rounding at this precision is exact (the tests prove every entry with integers)."""
    with decimal.localcontext(prec=60):
        return int((decimal.Decimal(2) ** (31 - decimal.Decimal(r) / 1024)).to_integral_value(decimal.ROUND_HALF_EVEN))


#: ``EXP2[r] = round(2**(31 - r/1024))``, computed here independently
#: of the literal table in ``rust/seqkv-coder/src/exp2_table.rs`` (tests check that they agree).
EXP2 = np.array([_exp2_entry(r) for r in range(1024)], dtype=np.uint64)
EXP2.setflags(write=False)


def quantize_logits_ref(logits: npt.ArrayLike, precision: int = 24) -> np.ndarray:
    """Quantizer v1 on float32 ``logits`` of shape ``[n, V]`` or ``[V]``; returns uint32, same shape."""
    x = np.asarray(logits)
    if x.dtype != np.float32:
        raise InvalidInputError(f"logits must be float32, got {x.dtype}")
    if x.ndim == 1:
        return quantize_logits_ref(x[None, :], precision)[0]
    if x.ndim != 2:
        raise InvalidInputError(f"logits must be 1-D or 2-D, got shape {x.shape}")
    n, v = x.shape
    if not 1 <= precision <= 24:
        raise InvalidInputError(f"precision must be in 1..=24, got {precision}")
    if not 1 <= v <= 1 << precision:
        raise InvalidInputError(f"vocabulary size {v} must be in 1..=2**precision")
    # 1. Validate.
    if np.isnan(x).any() or np.isposinf(x).any():
        raise InvalidInputError("logits contain NaN or +inf")
    # 2. Max over the finite entries; first index of it. Rows of all -inf are handled apart.
    m = x.max(axis=1) if v else np.zeros(n, np.float32)
    finite_row = m > -np.inf
    a = np.argmax(x == m[:, None], axis=1)
    # 3. Log2 grid: two float32 operations, each rounded to nearest even.
    with np.errstate(invalid="ignore", over="ignore"):
        safe_m = np.where(finite_row, m, np.float32(0))[:, None]
        z = (x - safe_m) * LOG2E_SCALED
    assert z.dtype == np.float32
    keep = z > ZMIN
    u = -np.rint(np.where(keep, z, np.float32(0))).astype(np.int64)  # in [0, 32768]
    # 4. Fixed-point exp2.
    q = u >> FRACTION_BITS
    r = u & 1023
    w = np.where(keep & (q < 32), EXP2[r] >> np.minimum(q, 31).astype(np.uint64), np.uint64(0))
    w[~finite_row] = 1
    a[~finite_row] = 0
    # 5.-6. Sum and scale factor.
    s = w.sum(axis=1, dtype=np.uint64)
    big_r = np.uint64((1 << precision) - v)
    k = (big_r << np.uint64(SCALE_SHIFT)) // s
    # 7. Floors (the products stay below 2**63).
    g = (w * k[:, None]) >> np.uint64(SCALE_SHIFT)
    f = g + np.uint64(1)
    # 8. Remainder to the first maximum.
    rows = np.arange(n)
    f[rows, a] += big_r - g.sum(axis=1, dtype=np.uint64)
    return f.astype(np.uint32)
