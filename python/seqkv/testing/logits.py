"""Strategies for logits rows that stress a logits → integer-table quantizer: ties, -inf,
huge and tiny ranges, one-hot rows, all -inf but one. ``+inf`` and NaN (which
``seqkv.coding.coder.quantize_logits`` must refuse) only when asked."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from ._hypothesis import hnp, st

__all__ = ["logits_rows", "logits_batches"]

_F32 = np.finfo(np.float32)
_KINDS = ("normal", "ties", "one_hot", "one_finite", "huge_range", "tiny_range", "scattered_neg_inf")


def _row_of(kind: str, draw: st.DrawFn, v: int) -> np.ndarray:
    """One row of ``v`` float32 logits of the given adversarial kind."""
    floats = st.floats(-1e4, 1e4, width=32)
    if kind == "normal":
        return draw(hnp.arrays(np.float32, v, elements=floats))
    if kind == "ties":
        levels = draw(st.lists(floats, min_size=1, max_size=3))
        return draw(hnp.arrays(np.float32, v, elements=st.sampled_from(levels)))
    if kind == "one_hot":
        row = np.full(v, draw(st.sampled_from([0.0, -30.0, -1e30])), np.float32)
        row[draw(st.integers(0, v - 1))] = draw(st.sampled_from([1.0, 30.0, 1e30]))
        return row
    if kind == "one_finite":
        row = np.full(v, -np.inf, np.float32)
        row[draw(st.integers(0, v - 1))] = draw(floats)
        return row
    if kind == "huge_range":
        extremes = st.sampled_from([_F32.max, _F32.min, 3e38, -3e38, 1e30, -1e30, 0.0])
        return draw(hnp.arrays(np.float32, v, elements=st.one_of(extremes, floats)))
    if kind == "tiny_range":
        tiny = st.sampled_from([0.0, -0.0, 1e-40, -1e-40, float(_F32.tiny), float(_F32.smallest_subnormal)])
        return draw(hnp.arrays(np.float32, v, elements=tiny))
    assert kind == "scattered_neg_inf", kind
    row = draw(hnp.arrays(np.float32, v, elements=floats))
    row[draw(hnp.arrays(np.bool_, v))] = -np.inf
    return row


@st.composite
def logits_rows(
    draw: st.DrawFn,
    vocab_size: int | st.SearchStrategy[int] = st.integers(1, 300),
    *,
    allow_posinf: bool = False,
    allow_nan: bool = False,
) -> np.ndarray:
    """One ``float32`` row of ``vocab_size`` logits of an adversarial kind (see the module).
    With ``allow_posinf`` / ``allow_nan``, some rows get a ``+inf`` / NaN entry."""
    v = draw(vocab_size) if isinstance(vocab_size, st.SearchStrategy) else int(vocab_size)
    if v < 1:
        raise InvalidInputError(f"vocab_size must be >= 1, got {v}")
    row = _row_of(draw(st.sampled_from(_KINDS)), draw, v)
    specials = [value for value, allowed in ((np.inf, allow_posinf), (np.nan, allow_nan)) if allowed]
    if specials:
        if draw(st.booleans()):
            row[draw(st.integers(0, v - 1))] = draw(st.sampled_from(specials))
    return row


@st.composite
def logits_batches(
    draw: st.DrawFn,
    vocab_size: int | st.SearchStrategy[int] = st.integers(1, 300),
    *,
    max_rows: int = 4,
    allow_posinf: bool = False,
    allow_nan: bool = False,
) -> np.ndarray:
    """``[rows, V]`` float32: 1..``max_rows`` rows of :func:`logits_rows`, each of its own kind."""
    v = draw(vocab_size) if isinstance(vocab_size, st.SearchStrategy) else int(vocab_size)
    rows = draw(
        st.lists(logits_rows(v, allow_posinf=allow_posinf, allow_nan=allow_nan), min_size=1, max_size=max_rows)
    )
    return np.stack(rows)
