"""The one per-layer KV hash: what a store records at ``put`` and checks after an exact restore,
and what the engine reports for its sequences, so KV from any engine compares with any other.

A layer's digest is BLAKE2b (personalisation ``seqkv-kv``, :data:`HASH_BYTES` bytes by default)
over the layer's shape as four little-endian int64 ``[batch, kv_heads, seq, head_dim]``, its
dtype name (``torch.float32``, ``torch.bfloat16``, ``torch.float16``), then the keys' bytes and
the values' bytes in C order. NumPy arrays ``[kv_heads, seq, head_dim]`` (the engine's layout)
hash as the batch-1 tensor they become.

A cache's **combined** digest (:func:`combined_hash`, what a store records by default) is
BLAKE2b-64 (personalisation ``seqkv-kv-all``) over the layer count as a little-endian int64 then
the layers' 8-byte digests in layer order: one 8-byte value that changes when any layer does.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any, Iterable

import numpy as np

from ..errors import InvalidInputError

__all__ = ["HASH_BYTES", "layer_hashes", "combined_hash"]

HASH_BYTES = 8
_PERSON = b"seqkv-kv"
_COMBINED_PERSON = b"seqkv-kv-all"
_NUMPY_DTYPE_NAMES = {np.dtype(np.float32): "torch.float32", np.dtype(np.float16): "torch.float16"}


def _shape_and_dtype(x: Any) -> tuple[tuple[int, ...], str]:
    if isinstance(x, np.ndarray):
        name = _NUMPY_DTYPE_NAMES.get(x.dtype)
        if name is None:
            raise InvalidInputError(f"KV arrays must be float32 or float16, got {x.dtype}")
        shape = tuple(int(s) for s in x.shape)
        return ((1, *shape) if len(shape) == 3 else shape), name
    return tuple(int(s) for s in x.shape), str(x.dtype)


def _bytes_of(x: Any) -> memoryview:
    if isinstance(x, np.ndarray):
        return memoryview(np.ascontiguousarray(x)).cast("B")
    import torch

    flat = x.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    return memoryview(flat.numpy())


def layer_hashes(layers: Iterable[tuple[Any, Any]], digest_size: int = HASH_BYTES) -> list[bytes]:
    """Digest of each ``(keys, values)`` layer: torch tensors ``[batch, kv_heads, seq, head_dim]``
    or NumPy arrays ``[kv_heads, seq, head_dim]``."""
    if not 1 <= int(digest_size) <= 64:
        raise InvalidInputError(f"digest_size must be in 1..64, got {digest_size}")
    out = []
    for k, v in layers:
        shape, dtype = _shape_and_dtype(k)
        if _shape_and_dtype(v) != (shape, dtype):
            raise InvalidInputError("keys and values of a layer differ in shape or dtype")
        h = hashlib.blake2b(digest_size=int(digest_size), person=_PERSON)
        h.update(struct.pack("<4q", *shape) if len(shape) == 4 else repr(shape).encode())
        h.update(dtype.encode())
        h.update(_bytes_of(k))
        h.update(_bytes_of(v))
        out.append(h.digest())
    return out


def combined_hash(layer_digests: Iterable[bytes]) -> bytes:
    """One digest for a whole cache from its :data:`HASH_BYTES`-byte layer digests (see the module)."""
    digests = list(layer_digests)
    if any(len(d) != HASH_BYTES for d in digests):
        raise InvalidInputError(f"combined_hash takes {HASH_BYTES}-byte layer digests")
    h = hashlib.blake2b(digest_size=HASH_BYTES, person=_COMBINED_PERSON)
    h.update(struct.pack("<q", len(digests)))
    for d in digests:
        h.update(d)
    return h.digest()
