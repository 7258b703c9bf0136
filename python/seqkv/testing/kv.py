"""Strategies for KV caches in the transformers layout: ``layers`` pairs ``(keys, values)``, each
``[batch, kv_heads, seq, head_dim]``, in f32, bf16 or f16.

NumPy has no bfloat16, so by default a cache comes as raw bit patterns (``uint32`` for f32,
``uint16`` for bf16 and f16: what ``seqkv.kv.residual`` takes with ``kind=``); with
``as_torch=True`` as torch tensors of the real dtype (needs torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import MissingExtraError
from ._hypothesis import st

__all__ = ["KVCache", "KVKind", "kv_caches"]

KVKind = Literal["f32", "bf16", "f16"]
_BITS_DTYPE = {"f32": np.uint32, "bf16": np.uint16, "f16": np.uint16}
#: Bit patterns a finite-valued KV never holds but a bit-level consumer must carry through.
_SPECIAL_BITS = {
    "f32": (0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x00000001, 0x7F7FFFFF),
    "bf16": (0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x0001, 0x7F7F),
    "f16": (0x8000, 0x7C00, 0xFC00, 0x7E00, 0x0001, 0x7BFF),
}


@dataclass(frozen=True)
class KVCache:
    """A drawn cache: ``layers[i] = (keys, values)``, bit patterns or torch tensors."""

    kind: KVKind
    layers: list[tuple[Any, Any]]

    @property
    def shape(self) -> tuple[int, ...]:
        """``(batch, kv_heads, seq, head_dim)`` of every tensor."""
        return tuple(int(s) for s in self.layers[0][0].shape)


def _to_bits(values: np.ndarray, kind: str) -> np.ndarray:
    """float32 values as ``kind`` bit patterns (bf16: rounded to nearest even, as torch does)."""
    if kind == "f32":
        return values.view(np.uint32)
    if kind == "f16":
        return values.astype(np.float16).view(np.uint16)
    u = values.view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _to_torch(bits: np.ndarray, kind: str) -> Any:
    try:
        import torch
    except ImportError as exc:
        raise MissingExtraError("kv_caches(as_torch=True) needs torch: pip install 'seqkv[torch]'") from exc
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[kind]
    signed = bits.view(np.int32 if kind == "f32" else np.int16)
    return torch.from_numpy(np.ascontiguousarray(signed)).view(dtype)


def _sizes(value: int | st.SearchStrategy[int]) -> st.SearchStrategy[int]:
    return value if isinstance(value, st.SearchStrategy) else st.just(int(value))


@st.composite
def kv_caches(
    draw: st.DrawFn,
    *,
    layers: int | st.SearchStrategy[int] = st.integers(1, 3),
    batch: int | st.SearchStrategy[int] = 1,
    kv_heads: int | st.SearchStrategy[int] = st.integers(1, 3),
    seq: int | st.SearchStrategy[int] = st.integers(1, 16),
    head_dim: int | st.SearchStrategy[int] = st.sampled_from([8, 16, 32]),
    kinds: tuple[KVKind, ...] = ("f32", "bf16", "f16"),
    special_values: bool = False,
    as_torch: bool = False,
) -> KVCache:
    """A cache of one drawn kind and shape; values spread like real KV (mostly small, a few
    large outliers). ``special_values`` mixes in ±0, ±inf, NaN, subnormal and max-finite bit
    patterns (for code that works on bits, such as residuals and hashes)."""
    kind = draw(st.sampled_from(kinds))
    shape = tuple(draw(_sizes(s)) for s in (batch, kv_heads, seq, head_dim))
    scale = draw(st.sampled_from([1e-3, 1.0, 8.0]))
    outliers = draw(st.sampled_from([0.0, 0.01, 0.2]))
    # Values come from a drawn seed (hypothesis shrinks the seed, the shape and the mix), not
    # element by element: drawing thousands of floats one at a time is too slow for a cache.
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    outlier_limit = 6e4 if kind == "f16" else 1e6
    specials = np.array(_SPECIAL_BITS[kind], dtype=_BITS_DTYPE[kind])

    def tensor() -> Any:
        values = (rng.standard_normal(shape) * scale).astype(np.float32)
        wild = rng.random(shape) < outliers
        values[wild] = rng.uniform(-outlier_limit, outlier_limit, int(wild.sum())).astype(np.float32)
        bits = _to_bits(values, kind)
        if special_values:
            odd = rng.random(shape) < 0.1
            bits[odd] = rng.choice(specials, int(odd.sum()))
        bits = np.ascontiguousarray(bits, dtype=_BITS_DTYPE[kind])
        return _to_torch(bits, kind) if as_torch else bits

    return KVCache(kind, [(tensor(), tensor()) for _ in range(draw(_sizes(layers)))])
