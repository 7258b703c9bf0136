"""KV residuals: the exact difference between original and recomputed KV bits.

Recomputing KV under a different schedule or device changes the last bits of many components.
The residual makes ``get(mode="exact")`` bit-identical anyway: for every component,

* ``key(b)`` maps the float's bits to an ordered integer (``b`` for a positive sign,
  ``b ^ 0x7fff..`` for a negative one: monotone in the float value, so ±1 ulp is ±1, also across
  zero, and its own inverse);
* ``d = key(orig) - key(recomp)`` modulo ``2^W`` (W = 32 for f32, 16 for bf16/f16), read as a
  signed W-bit number, and ``z = zigzag(d)`` (0, -1, 1, -2, ... → 0, 1, 2, 3, ...);
* restore: ``orig = key⁻¹(key(recomp) + unzigzag(z))``. Exact for every bit pattern, NaNs included.

Two encoded forms:

* **Packed** (:func:`pack` / :func:`unpack`, :class:`Packed`): blocks of 32 components; a block
  of width ``w`` (bit length of its largest ``z``) is ``w`` u32 words, word ``j`` holding bit
  ``j`` of the 32 components (bit ``lane`` of the word is component ``lane``). ``widths`` (u8 per
  block) and the words of all blocks back to back. The CUDA kernels in
  ``seqkv/cuda/kernels/residual.cu`` (through :mod:`seqkv.kv.gpu`) produce the same bytes.
* **Entropy-coded** (:func:`encode` / :func:`decode`): what the store keeps. Each tensor
  (per layer, K and V separately) is one stream with its own adaptive model: ``z < 15`` is coded
  as itself, a larger ``z`` as the escape ``15 + (bit_length(z) - 4)`` followed by its
  ``bit_length(z) - 1`` low bits verbatim (the leading 1 is implied). The adaptive range coder
  (``seqkv.coding.coder``) learns the ±1-ulp-heavy distribution of each stream as it goes.

Inputs: NumPy arrays (float32, float16, ml_dtypes bfloat16, or the raw uint16/uint32 bits with
``kind=``), or torch tensors (moved to the CPU; bf16 read through an int16 view). CUDA inputs go
through :func:`seqkv.kv.gpu.residual_pack` instead (no host copy).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CorruptStreamError, InvalidInputError

__all__ = [
    "KINDS",
    "BLOCK",
    "as_bits",
    "from_bits",
    "ordered_key",
    "residual_z",
    "apply_z",
    "Packed",
    "pack",
    "pack_z",
    "unpack",
    "unpack_z",
    "symbolize",
    "desymbolize",
    "encode",
    "decode",
    "naive_delta_bits",
]

#: kind -> (unsigned dtype of the bits, width W)
KINDS: dict[str, tuple[type[np.unsignedinteger[Any]], int]] = {
    "f32": (np.uint32, 32),
    "bf16": (np.uint16, 16),
    "f16": (np.uint16, 16),
}
#: components per packed block (one warp on the GPU)
BLOCK = 32
_CHUNK_BLOCKS = 1 << 14  # blocks per NumPy chunk (bounds temporaries to ~16 MiB)


def _kind_of_torch(dtype: Any) -> str | None:
    name = str(dtype).replace("torch.", "")
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(name)


def as_bits(x: Any, kind: str | None = None) -> tuple[np.ndarray, str]:
    """``(bits, kind)``: the raw bits of ``x`` as a uint16/uint32 NumPy array (a view where possible)."""
    if hasattr(x, "detach") and hasattr(x, "dtype") and hasattr(x, "cpu"):  # torch.Tensor
        k = _kind_of_torch(x.dtype)
        if k is None:
            raise InvalidInputError(f"KV tensors must be float32, bfloat16 or float16, got {x.dtype}")
        import torch

        t = x.detach().cpu().contiguous()
        view = t.view(torch.int32 if k == "f32" else torch.int16).numpy()
        return view.view(KINDS[k][0]), k
    a = np.asarray(x)
    if a.dtype == np.float32:
        return a.view(np.uint32), "f32"
    if a.dtype == np.float16:
        return a.view(np.uint16), "f16"
    if a.dtype.name == "bfloat16":  # ml_dtypes
        return a.view(np.uint16), "bf16"
    if kind is not None:
        if kind not in KINDS:
            raise InvalidInputError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
        if a.dtype != KINDS[kind][0]:
            raise InvalidInputError(f"raw bits of kind {kind} must be {np.dtype(KINDS[kind][0])}, got {a.dtype}")
        return a, kind
    raise InvalidInputError(f"cannot read float bits from dtype {a.dtype} (pass kind= for raw bits)")


def from_bits(bits: np.ndarray, kind: str, like: Any = None) -> Any:
    """The inverse of :func:`as_bits`: NumPy float32/float16 (bf16 stays raw uint16), or a torch
    tensor of ``like``'s dtype and device when ``like`` is a tensor."""
    if like is not None and hasattr(like, "detach"):
        import torch

        t = torch.from_numpy(np.ascontiguousarray(bits).view(np.int32 if kind == "f32" else np.int16))
        return t.view(like.dtype).reshape(like.shape).to(like.device)
    if kind == "f32":
        return bits.view(np.float32)
    if kind == "f16":
        return bits.view(np.float16)
    return bits


def ordered_key(bits: np.ndarray, width: int) -> np.ndarray:
    """The monotone, self-inverse map float bits → ordered integer bits (same dtype)."""
    dt = bits.dtype.type
    sign = bits >> dt(width - 1)
    return bits ^ (sign * dt((1 << (width - 1)) - 1))


def _zigzag(d: np.ndarray, width: int) -> np.ndarray:
    dt = d.dtype.type
    return (d << dt(1)) ^ (dt(0) - (d >> dt(width - 1)))


def _unzigzag(z: np.ndarray) -> np.ndarray:
    dt = z.dtype.type
    return (z >> dt(1)) ^ (dt(0) - (z & dt(1)))


def residual_z(orig: Any, recomp: Any, kind: str | None = None) -> tuple[np.ndarray, str]:
    """``(z, kind)``: zig-zag residual per component, flattened (uint16 or uint32)."""
    ob, k1 = as_bits(orig, kind)
    rb, k2 = as_bits(recomp, kind)
    if k1 != k2 or ob.shape != rb.shape:
        raise InvalidInputError(f"original ({k1}, {ob.shape}) and recomputed ({k2}, {rb.shape}) KV differ in kind or shape")
    width = KINDS[k1][1]
    with np.errstate(over="ignore"):
        d = ordered_key(ob.ravel(), width) - ordered_key(rb.ravel(), width)
        return _zigzag(d, width), k1


def apply_z(recomp: Any, z: np.ndarray, kind: str | None = None) -> np.ndarray:
    """Original bits from the recomputed KV and the residual ``z`` (shape of ``recomp``)."""
    rb, k = as_bits(recomp, kind)
    width = KINDS[k][1]
    z = np.asarray(z, dtype=rb.dtype).ravel()
    if z.size != rb.size:
        raise InvalidInputError(f"residual has {z.size} components, recomputed KV {rb.size}")
    with np.errstate(over="ignore"):
        return ordered_key(ordered_key(rb.ravel(), width) + _unzigzag(z), width).reshape(rb.shape)


# --- packed form ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Packed:
    """Block-packed residual: ``n`` components of ``kind``; ``widths`` u8 per 32-block, ``words`` u32."""

    kind: str
    n: int
    widths: np.ndarray
    words: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.widths.nbytes + self.words.nbytes)

    def to_bytes(self) -> bytes:
        head = struct.pack("<4sBQQ", b"SKRP", list(KINDS).index(self.kind), self.n, self.words.size)
        return head + self.widths.astype(np.uint8).tobytes() + self.words.astype("<u4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Packed:
        hs = struct.calcsize("<4sBQQ")
        if len(data) < hs:
            raise CorruptStreamError("packed residual: truncated header")
        magic, kind_i, n, nwords = struct.unpack_from("<4sBQQ", data)
        if magic != b"SKRP" or kind_i >= len(KINDS):
            raise CorruptStreamError("packed residual: bad magic or kind")
        nb = -(-n // BLOCK)
        if len(data) != hs + nb + 4 * nwords:
            raise CorruptStreamError("packed residual: wrong length")
        widths = np.frombuffer(data, np.uint8, nb, hs).copy()
        words = np.frombuffer(data, "<u4", nwords, hs + nb).astype(np.uint32)
        kind = list(KINDS)[kind_i]
        if int(widths.max(initial=0)) > KINDS[kind][1] or int(widths.sum(dtype=np.int64)) != nwords:
            raise CorruptStreamError("packed residual: widths do not match the words")
        return cls(kind, int(n), widths, words)


def _bit_length(v: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros(v.shape, np.uint8)
    for j in range(width):
        out += (v >> np.uint32(j)) != 0
    return out


def pack_z(z: np.ndarray, kind: str) -> Packed:
    """Block-pack a zig-zag residual (the CPU reference of ``residual_pack`` in residual.cu)."""
    width = KINDS[kind][1]
    z = np.asarray(z).ravel()
    n = z.size
    nb = -(-n // BLOCK)
    widths = np.empty(nb, np.uint8)
    words: list[np.ndarray] = []
    lanes = np.arange(BLOCK, dtype=np.uint32)
    for b0 in range(0, nb, _CHUNK_BLOCKS):
        b1 = min(nb, b0 + _CHUNK_BLOCKS)
        blk = np.zeros((b1 - b0) * BLOCK, np.uint32)
        part = z[b0 * BLOCK : b1 * BLOCK]
        blk[: part.size] = part
        blk = blk.reshape(-1, BLOCK)
        w = _bit_length(np.bitwise_or.reduce(blk, axis=1), width)
        widths[b0:b1] = w
        wmax = int(w.max(initial=0))
        if wmax == 0:
            continue
        planes = np.zeros((b1 - b0, wmax), np.uint32)
        for j in range(wmax):
            planes[:, j] = (((blk >> np.uint32(j)) & np.uint32(1)) << lanes).sum(axis=1, dtype=np.uint64).astype(np.uint32)
        words.append(planes[np.arange(wmax)[None, :] < w[:, None]])
    allwords = np.concatenate(words) if words else np.zeros(0, np.uint32)
    return Packed(kind, n, widths, allwords)


def unpack_z(packed: Packed) -> np.ndarray:
    """The zig-zag residual of a :class:`Packed` (flattened, uint16/uint32)."""
    dtype, width = KINDS[packed.kind]
    nb = packed.widths.size
    if nb != -(-packed.n // BLOCK):
        raise CorruptStreamError("packed residual: block count does not match n")
    z = np.zeros(nb * BLOCK, np.uint32)
    offsets = np.concatenate([[0], np.cumsum(packed.widths, dtype=np.int64)])
    if offsets[-1] != packed.words.size or int(packed.widths.max(initial=0)) > width:
        raise CorruptStreamError("packed residual: widths do not match the words")
    lanes = np.arange(BLOCK, dtype=np.uint32)
    for b0 in range(0, nb, _CHUNK_BLOCKS):
        b1 = min(nb, b0 + _CHUNK_BLOCKS)
        w = packed.widths[b0:b1]
        wmax = int(w.max(initial=0))
        if wmax == 0:
            continue
        planes = np.zeros((b1 - b0, wmax), np.uint32)
        planes[np.arange(wmax)[None, :] < w[:, None]] = packed.words[offsets[b0] : offsets[b1]]
        acc = np.zeros((b1 - b0, BLOCK), np.uint32)
        for j in range(wmax):
            acc |= ((planes[:, j : j + 1] >> lanes) & np.uint32(1)) << np.uint32(j)
        z[b0 * BLOCK : b1 * BLOCK] = acc.ravel()
    return z[: packed.n].astype(dtype)


def pack(orig: Any, recomp: Any, kind: str | None = None) -> Packed:
    """Residual of ``orig`` against ``recomp`` in packed form (NumPy reference)."""
    z, k = residual_z(orig, recomp, kind)
    return pack_z(z, k)


def unpack(packed: Packed, recomp: Any) -> np.ndarray:
    """Original bits (shape of ``recomp``) from a packed residual and the recomputed KV."""
    rb, k = as_bits(recomp, packed.kind)
    if k != packed.kind or rb.size != packed.n:
        raise InvalidInputError(f"packed residual is {packed.kind} x {packed.n}, recomputed KV {k} x {rb.size}")
    return apply_z(rb, unpack_z(packed), k)


# --- entropy-coded form -----------------------------------------------------------------------

_LIT = 15  # z < _LIT is its own symbol
_FORMAT = 2  # 2: a CRC32C of everything before it ends the stream
_MAGIC = b"SKRE"
_CRC = struct.Struct("<I")


def _seal(body: bytes) -> bytes:
    from ..coding.coder import crc32c

    return body + _CRC.pack(crc32c(body))


def _unseal(data: bytes) -> bytes:
    from ..coding.coder import crc32c

    if len(data) < 6 + _CRC.size or data[:4] != _MAGIC:
        raise CorruptStreamError("residual: bad magic or too short")
    if data[4] != _FORMAT:
        raise CorruptStreamError(f"residual: unknown format {data[4]} (this seqkv reads format {_FORMAT})")
    body = data[: -_CRC.size]
    if _CRC.unpack_from(data, len(body))[0] != crc32c(body):
        raise CorruptStreamError("residual: checksum mismatch (the stream is corrupt)")
    return body


def _nsym(width: int) -> int:
    return _LIT + (width - 3)  # escapes for bit lengths 4..width


def symbolize(z: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(symbols u32, raw values u32, raw bit counts u8)`` of a zig-zag residual; raw values are
    the low ``bit_length(z) - 1`` bits of each escaped ``z`` (in order)."""
    z32 = np.asarray(z).ravel().astype(np.uint32)
    esc = z32 >= _LIT
    sym = z32.copy()
    if esc.any():
        ze = z32[esc]
        bl = _bit_length(ze, width).astype(np.uint32)
        sym[esc] = _LIT + bl - 4
        nbits = (bl - 1).astype(np.uint8)
        raw = ze - (np.uint32(1) << (bl - 1).astype(np.uint32))
        return sym, raw, nbits
    return sym, np.zeros(0, np.uint32), np.zeros(0, np.uint8)


def desymbolize(sym: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Inverse of :func:`symbolize` (``raw`` in escape order)."""
    z = sym.astype(np.uint32)
    esc = z >= _LIT
    bl = z[esc] - (_LIT - 4)
    z[esc] = (np.uint32(1) << (bl - 1)) + raw
    return z


def _pack_varbits(values: np.ndarray, nbits: np.ndarray) -> bytes:
    """Concatenate the low ``nbits[i]`` bits of ``values[i]`` (LSB first), padded to bytes."""
    if values.size == 0:
        return b""
    maxb = int(nbits.max())
    if maxb == 0:
        return b""
    j = np.arange(maxb, dtype=np.uint32)
    bits = ((values[:, None] >> j[None, :]) & np.uint32(1)).astype(np.uint8)
    keep = j[None, :] < nbits[:, None]
    return np.packbits(bits[keep], bitorder="little").tobytes()


def _unpack_varbits(data: bytes, nbits: np.ndarray) -> np.ndarray:
    total = int(nbits.sum(dtype=np.int64))
    if len(data) != (total + 7) // 8:
        raise CorruptStreamError("residual: raw-bit section has the wrong length")
    if nbits.size == 0:
        return np.zeros(0, np.uint32)
    flat = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[:total].astype(np.uint32)
    maxb = int(nbits.max())
    j = np.arange(maxb, dtype=np.uint32)
    keep = j[None, :] < nbits[:, None]
    grid = np.zeros((nbits.size, maxb), np.uint32)
    grid[keep] = flat
    return (grid << j[None, :]).sum(axis=1, dtype=np.uint64).astype(np.uint32)


#: adaptive model parameters (count increment, total before halving): part of the format
_INCREMENT = 32
_LIMIT = 1 << 16


def _encode_symbols(sym: np.ndarray, nsym: int) -> bytes:
    from .. import _native

    return bytes(_native.encode_adaptive(sym.astype(np.int64), nsym, _INCREMENT, _LIMIT))


def _decode_symbols(data: bytes, nsym: int, count: int) -> np.ndarray:
    from .. import _native

    return np.asarray(_native.decode_adaptive(data, nsym, count, _INCREMENT, _LIMIT), dtype=np.uint32)


def encode(pairs: Sequence[tuple[Any, Any]], kind: str | None = None) -> bytes:
    """Entropy-code the residuals of ``pairs`` = ``[(orig, recomp), ...]`` (e.g. K of layer 0, V of
    layer 0, K of layer 1, ...); each pair is one stream with its own adaptive model.

    Decoding needs the same recomputed tensors in the same order (:func:`decode`); shapes and
    kinds are not stored. A residual that is zero everywhere costs 10 bytes in total (header and
    CRC32C).
    """
    streams: list[tuple[int, bytes, bytes]] = []
    all_zero = True
    for orig, recomp in pairs:
        z, k = residual_z(orig, recomp, kind)
        width = KINDS[k][1]
        if not z.any():
            streams.append((0, b"", b""))
            continue
        all_zero = False
        sym, raw, nbits = symbolize(z, width)
        coded = _encode_symbols(sym, _nsym(width))
        streams.append((1, coded, _pack_varbits(raw, nbits)))
    if all_zero:
        return _seal(_MAGIC + bytes([_FORMAT, 0]))
    out = [_MAGIC, bytes([_FORMAT, 1]), struct.pack("<I", len(streams))]
    for flag, coded, rawb in streams:
        out.append(struct.pack("<B", flag))
        if flag:
            out.append(struct.pack("<QQ", len(coded), len(rawb)))
            out.append(coded)
            out.append(rawb)
    return _seal(b"".join(out))


def _copy_bits(r: Any, kind: str | None) -> tuple[np.ndarray, str]:
    rb, k = as_bits(r, kind)
    return rb.copy(), k


def decode(data: bytes, recomputed: Sequence[Any], kind: str | None = None) -> list[Any]:
    """Original KV from :func:`encode`'s bytes and the recomputed tensors (same order); each result
    has the type of its recomputed input (a torch tensor of the same dtype/device, or NumPy).

    Raises CorruptStreamError when the stream is truncated, altered (CRC32C) or does not fit the
    recomputed tensors."""
    data = _unseal(bytes(data))
    if data[5] == 0:
        if len(data) != 6:
            raise CorruptStreamError("residual: trailing bytes")
        return [from_bits(*_copy_bits(r, kind), like=r) for r in recomputed]
    pos = 6
    try:
        (count,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if count != len(recomputed):
            raise CorruptStreamError(f"residual holds {count} streams, {len(recomputed)} recomputed tensors given")
        out = []
        for r in recomputed:
            rb, k = as_bits(r, kind)
            width = KINDS[k][1]
            flag = data[pos]
            pos += 1
            if flag == 0:
                out.append(from_bits(rb.copy(), k, like=r))
                continue
            if flag != 1:
                raise CorruptStreamError("residual: bad stream flag")
            nc, nr = struct.unpack_from("<QQ", data, pos)
            pos += 16
            if pos + nc + nr > len(data):
                raise CorruptStreamError("residual: truncated stream")
            coded = data[pos : pos + nc]
            rawb = data[pos + nc : pos + nc + nr]
            pos += nc + nr
            sym = _decode_symbols(coded, _nsym(width), rb.size)
            esc = sym >= _LIT
            nbits = (sym[esc] - (_LIT - 3)).astype(np.uint8)
            raw = _unpack_varbits(rawb, nbits)
            out.append(from_bits(apply_z(rb, desymbolize(sym, raw), k), k, like=r))
        if pos != len(data):
            raise CorruptStreamError("residual: trailing bytes")
        return out
    except (struct.error, IndexError) as exc:  # a field or stream flag read past the end
        raise CorruptStreamError(f"residual: truncated ({exc})") from exc


def naive_delta_bits(orig: Any, recomp: Any) -> float:
    """Bits per component of the naive scheme: the float difference ``orig - recomp`` cast to
    bf16, at the zeroth-order empirical entropy of its 16-bit patterns (no model, no context)."""
    import torch

    o = torch.as_tensor(np.asarray(orig) if not hasattr(orig, "detach") else orig.detach().cpu()).float()
    r = torch.as_tensor(np.asarray(recomp) if not hasattr(recomp, "detach") else recomp.detach().cpu()).float()
    d = (o - r).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).ravel()
    counts = np.bincount(d, minlength=1 << 16).astype(np.float64)
    p = counts[counts > 0] / d.size
    return float(-(p * np.log2(p)).sum())
