"""KV operations on the GPU: residual pack/unpack (same bytes as :mod:`seqkv.kv.residual`) and the
per-vector quantizers of :mod:`seqkv.kv.quantizers`, each checked bit for bit against its CPU
reference."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..cuda.runtime import _CTYPE, _cupy, _device_view, _function, _on_stream_of
from .codes import KiviCodes, TurboCodes
from .residual import Packed

__all__ = ["residual_pack", "residual_unpack", "turbo_quantize", "turbo_dequantize", "kivi_quantize", "kivi_dequantize"]

# --- residual pack / unpack -------------------------------------------------------------------

_RES_BLOCK = 32
_RES_WARPS = 8  # seqkv/cuda/kernels/residual.cu: WARPS
#: 32-blocks per warp in the residual kernels (a tile is 8 warps of these); 8, 16 or 32
RESIDUAL_BPW = 16


def _residual_view(x: Any, kind: str | None) -> tuple[Any, str]:
    """Flat contiguous uint16/uint32 bits of ``x``, 4-byte aligned (copied only if needed)."""
    cp = _cupy()
    if type(x) is cp.ndarray and x.flags.c_contiguous and x.data.ptr % 4 == 0:
        # fast path (one call is a few microseconds of host time): the kinds _device_view accepts
        dt = x.dtype
        k = ("f32" if dt == cp.float32 or (dt == cp.uint32 and kind == "f32") else
             "f16" if dt == cp.float16 and kind in (None, "f16") else
             kind if dt == cp.uint16 and kind in ("bf16", "f16") else None)
        if k is not None:
            flat = x if x.ndim == 1 else x.reshape(-1)
            want = cp.uint32 if k == "f32" else cp.uint16
            return (flat if flat.dtype == want else flat.view(want)), k
    arr, k = _device_view(x, kind)
    arr = cp.ascontiguousarray(arr).ravel()
    if arr.data.ptr % 4:  # the kernels read 16-bit kinds two elements at a time
        arr = arr.copy()
    return arr.view(cp.uint32 if k == "f32" else cp.uint16), k


_EPOCHS = 1 << 20  # seqkv/cuda/kernels/residual.cu: 20-bit epochs
_per_thread = threading.local()


def _tile_states(ntiles: int) -> tuple[Any, np.uint32]:
    """(u64 tile states, epoch) for one residual kernel launch on the current stream: a buffer
    kept per thread, device and stream and reused without zeroing (each launch gets the next
    epoch; the buffer is zeroed when they wrap), so a call queues no memset."""
    cp = _cupy()
    stream = cp.cuda.get_current_stream()
    table = getattr(_per_thread, "states", None)
    if table is None:
        table = _per_thread.states = {}
    key = (cp.cuda.runtime.getDevice(), stream.ptr)
    entry = table.get(key)
    if entry is None or entry[0].size < ntiles:
        entry = table[key] = [cp.zeros(max(ntiles, 1024), dtype=cp.uint64), 0]
    entry[1] += 1
    if entry[1] == _EPOCHS:
        buf = entry[0]
        cp.cuda.runtime.memsetAsync(buf.data.ptr, 0, buf.nbytes, stream.ptr)
        entry[1] = 1
    return entry[0], np.uint32(entry[1])


def _pinned_total() -> tuple[int, np.ndarray]:
    """(device pointer, host view) of this thread's u64 in pinned host memory, which the pack
    kernel writes its word count into (read after the stream is synchronized)."""
    buf = getattr(_per_thread, "total", None)
    if buf is None:
        cp = _cupy()
        mem = cp.cuda.alloc_pinned_memory(8)
        # pinned memory is mapped into the device's address space at the same address (UVA)
        buf = _per_thread.total = (mem, mem.ptr, np.frombuffer(mem, dtype=np.uint64, count=1))
    return buf[1], buf[2]


def _residual_geometry(k: str, nb: int, bpw: int | None) -> tuple[str, int, int]:
    """(C type, steps per warp K, tiles) of the residual kernels."""
    bpw = bpw or RESIDUAL_BPW
    if bpw not in (8, 16, 32):
        raise InvalidInputError("bpw must be 8, 16 or 32")
    per_step = 1 if k == "f32" else 2  # 32-blocks per warp step
    steps = bpw // per_step
    return ("unsigned int" if k == "f32" else "unsigned short"), steps, -(-nb // (_RES_WARPS * bpw))


def _residual_pack_launch(o: Any, r: Any, k: str, bpw: int | None) -> tuple[Any, Any]:
    """(widths, words with room for the worst case): the pack kernel queued, nothing waited for;
    it writes the word count to :func:`_pinned_total`."""
    cp = _cupy()
    n = int(o.size)
    W = 32 if k == "f32" else 16
    nb = -(-n // _RES_BLOCK)
    utype, steps, ntiles = _residual_geometry(k, nb, bpw)
    widths = cp.empty(nb, dtype=cp.uint8)
    if ntiles == 0:
        return widths, cp.empty(0, dtype=cp.uint32)
    state, epoch = _tile_states(ntiles)
    words = cp.empty(nb * W, dtype=cp.uint32)
    ptr = np.uint64  # raw pointers: the cheapest arguments to marshal
    _function("residual.cu", f"residual_pack<{utype},{steps}>")(
        (ntiles,), (_RES_WARPS * 32,), (ptr(o.data.ptr), ptr(r.data.ptr), np.int64(n), np.int64(nb),
                                        ptr(widths.data.ptr), ptr(words.data.ptr), ptr(state.data.ptr), epoch,
                                        ptr(_pinned_total()[0])))
    return widths, words


def residual_pack(orig: Any, recomp: Any, *, kind: str | None = None, host: bool = True,
                  bpw: int | None = None) -> Any:
    """Block-packed residual of two CUDA tensors/arrays (same bytes as
    :func:`seqkv.kv.residual.pack`). Returns a :class:`seqkv.kv.residual.Packed` (NumPy) when ``host``,
    else ``(kind, n, widths, words)`` as CuPy arrays. One kernel launch; the word count comes back
    to the host (8 bytes) to size ``words``."""

    cp = _cupy()
    with _on_stream_of(orig):
        o, k1 = _residual_view(orig, kind)
        r, k2 = _residual_view(recomp, kind)
        if k1 != k2 or o.size != r.size:
            raise InvalidInputError("original and recomputed KV differ in kind or size")
        n = int(o.size)
        widths, words = _residual_pack_launch(o, r, k1, bpw)
        if words.size:
            cp.cuda.get_current_stream().synchronize()
            words = words[: int(_pinned_total()[1][0])]
        if not host:
            return k1, n, widths, words
        return Packed(k1, n, cp.asnumpy(widths), cp.asnumpy(words))


def residual_unpack(packed: Any, recomp: Any, *, kind: str | None = None, bpw: int | None = None) -> Any:
    """Original bits (CuPy uint16/uint32, shape of ``recomp``) from a packed residual
    (:class:`~seqkv.kv.residual.Packed` or the device tuple of :func:`residual_pack`) and the
    recomputed KV on the GPU. One kernel launch, no host round trip."""
    cp = _cupy()
    with _on_stream_of(recomp):
        if isinstance(packed, tuple):  # from residual_pack(host=False): consistent by construction
            pk, n, widths, words = packed
        else:
            if int(packed.widths.sum(dtype=np.int64)) != packed.words.size:
                raise InvalidInputError("packed residual: widths do not match the words")
            if int(packed.widths.max(initial=0)) > (32 if packed.kind == "f32" else 16):
                raise InvalidInputError("packed residual: a block is wider than its kind")
            pk, n, widths, words = packed.kind, packed.n, cp.asarray(packed.widths), cp.asarray(packed.words)
        r, k = _residual_view(recomp, kind or pk)
        if k != pk or int(r.size) != n:
            raise InvalidInputError(f"packed residual is {pk} x {n}, recomputed KV {k} x {r.size}")
        nb = int(widths.size)
        if nb != -(-n // _RES_BLOCK):
            raise InvalidInputError("packed residual: block count does not match n")
        utype, steps, ntiles = _residual_geometry(k, nb, bpw)
        out = cp.empty_like(r)
        if ntiles:
            state, epoch = _tile_states(ntiles)
            ptr = np.uint64  # raw pointers: the cheapest arguments to marshal
            _function("residual.cu", f"residual_unpack<{utype},{steps}>")(
                (ntiles,), (_RES_WARPS * 32,), (ptr(r.data.ptr), np.int64(n), np.int64(nb), ptr(widths.data.ptr),
                                                ptr(words.data.ptr), ptr(state.data.ptr), epoch, ptr(out.data.ptr)))
        shape = recomp.shape
        return out.reshape(shape)


# --- per-vector quantizers --------------------------------------------------------------------


def turbo_quantize(tq: Any, x: Any) -> Any:
    """:meth:`seqkv.kv.quantizers.TurboQuant.quantize` on the GPU (codes and norms stay there)."""

    cp = _cupy()
    with _on_stream_of(x):
        arr, k = _device_view(x, None)
        d = tq.dim
        if arr.shape[-1] != d:
            raise InvalidInputError(f"last axis must be {d}, got {arr.shape}")
        lead = arr.shape[:-1]
        flat = cp.ascontiguousarray(arr).reshape(-1)
        nvec = flat.size // d
        codes = cp.empty(flat.size, dtype=cp.uint8)
        norms = cp.empty(nvec, dtype=cp.float32)
        block = max(d, 256)
        if nvec:
            _function("quantizers.cu", f"turbo_quant<{_CTYPE[k]}>")(
                (-(-nvec // (block // d)),), (block,),
                (flat, np.int64(nvec), np.int32(d), cp.asarray(tq.signs), cp.asarray(tq.boundaries),
                 np.int32(tq.boundaries.size), codes, norms),
                shared_mem=block * 4)
        return TurboCodes(codes.reshape(*lead, d), norms.reshape(lead), tq.bits)


def turbo_dequantize(tq: Any, q: Any) -> Any:
    """:meth:`seqkv.kv.quantizers.TurboQuant.dequantize` on the GPU (f32 CuPy array)."""
    cp = _cupy()
    codes = cp.ascontiguousarray(q.codes)
    d = tq.dim
    nvec = codes.size // d
    out = cp.empty(codes.shape, dtype=cp.float32)
    block = max(d, 256)
    if nvec:
        _function("quantizers.cu", "turbo_dequant")(
            (-(-nvec // (block // d)),), (block,),
            (codes, cp.ascontiguousarray(q.norms), np.int64(nvec), np.int32(d), cp.asarray(tq.signs),
             cp.asarray(tq.centroids), np.float32(tq.inv_d), out),
            shared_mem=block * 4)
    return out


def _kivi_geom(shape: tuple[int, ...], axis: str, group: int, T_q: int) -> tuple[int, ...]:
    """(A, B, C, sa, sb, sc, st) for contiguous ``[..., T, d]`` data (see GroupGeom in the .cu)."""
    *lead, T, d = shape
    outer = int(np.prod(lead)) if lead else 1
    if axis == "channel":  # groups of `group` tokens of one channel; T_q tokens quantized
        return (outer, T_q // group, d, T * d, group * d, 1, d)
    return (outer * T, d // group, 1, d, group, 1, 1)


def kivi_quantize(kv: Any, x: Any, axis: str) -> Any:
    """:class:`seqkv.kv.quantizers.KIVI` keys (``axis="channel"``) or values (``"token"``) on the GPU."""

    cp = _cupy()
    with _on_stream_of(x):
        arr, k = _device_view(x, None)
        arr = cp.ascontiguousarray(arr)
        *lead, T, d = arr.shape
        G = kv.group
        if axis == "token" and d % G:
            raise InvalidInputError(f"head dim {d} is not a multiple of the group {G}")
        T_q = T - T % G if axis == "channel" else T
        A, B, C, sa, sb, sc, st = _kivi_geom(arr.shape, axis, G, T_q)
        codes = cp.zeros(arr.shape, dtype=cp.uint8)
        scales = cp.empty(A * B * C, dtype=cp.float32)
        mins = cp.empty(A * B * C, dtype=cp.float32)
        ng = A * B * C
        if ng:
            _function("quantizers.cu", f"kivi_quant<{_CTYPE[k]}>")(
                (-(-ng // 256),), (256,),
                (arr, *(np.int64(v) for v in (A, B, C, sa, sb, sc, st)), np.int32(G), np.int32(kv.qmax),
                 codes, scales, mins))
        if axis == "channel":
            gshape = (*lead, T_q // G, d)
            tail = arr[..., T_q:, :]
            tail = tail.astype(cp.float32) if k != "bf16" else (tail.astype(cp.uint32) << 16).view(cp.float32)
            return KiviCodes(codes[..., :T_q, :], scales.reshape(gshape), mins.reshape(gshape), tail, kv.bits, axis)
        gshape = (*lead, T, d // G)
        return KiviCodes(codes, scales.reshape(gshape), mins.reshape(gshape), None, kv.bits, axis)


def kivi_dequantize(kv: Any, c: Any) -> Any:
    """:meth:`seqkv.kv.quantizers.KIVI.dequantize` on the GPU (f32 CuPy array)."""
    cp = _cupy()
    codes = cp.ascontiguousarray(c.codes)
    *lead, T, d = codes.shape
    G = kv.group
    A, B, C, sa, sb, sc, st = _kivi_geom(codes.shape, c.axis, G, T)
    out = cp.empty(codes.shape, dtype=cp.float32)
    ng = A * B * C
    if ng:
        _function("quantizers.cu", "kivi_dequant")(
            (-(-ng // 256),), (256,),
            (codes, cp.ascontiguousarray(c.scales).ravel(), cp.ascontiguousarray(c.mins).ravel(),
             *(np.int64(v) for v in (A, B, C, sa, sb, sc, st)), np.int32(G), out))
    if c.axis == "channel":
        return cp.concatenate([out, c.tail], axis=-2)
    return out
