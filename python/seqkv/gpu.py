"""CUDA paths through CuPy: logits → integer CDF (quantizer v1), gather, search, KV residual
pack/unpack and the per-vector quantizers.

The kernels live in ``cuda_kernels/*.cu`` and are compiled on first use by NVRTC (CuPy caches the
binaries). Every kernel has a CPU reference that the tests compare with bit for bit:
``seqkv._quantize_ref`` / ``seqkv.coder.quantize_logits`` for the tables,
:mod:`seqkv.residual` and :mod:`seqkv.quantizers` for the rest.

Inputs stay on the GPU: torch CUDA tensors (through DLPack, on torch's current stream), CuPy
arrays and anything with ``__cuda_array_interface__``. Logits may be f32, bf16 or f16 (widened to
f32 exactly in the kernel). Only the small results come back to the host: 8 bytes per token for
:func:`gather_cdf`, 12 for :func:`search_cdf`.

The coding loop of the ``lm`` codec on a GPU model (streams identical to
``seqkv.coder.encode_logits`` on the same logits)::

    data = seqkv.gpu.encode_tokens(logits, tokens, precision)          # logits[i] predicts tokens[i]
    dec = seqkv.coder.Decoder(data, precision)
    tok = seqkv.gpu.decode_token(dec, logits_row, precision)           # one step

CuPy is the ``seqkv[cuda]`` extra.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError, MissingExtraError, SeqkvError

__all__ = [
    "available",
    "is_device_array",
    "kernel_dir",
    "quantize_logits_gpu",
    "gather_cdf",
    "search_cdf",
    "encode_tokens",
    "decode_token",
    "residual_pack",
    "residual_unpack",
    "turbo_quantize",
    "turbo_dequantize",
    "kivi_quantize",
    "kivi_dequantize",
    "QUANTIZE_BLOCK",
    "cluster_config",
]

#: threads per row of the quantize kernels, by row length (tuned on an H100, see
#: benches/results/gpu_kernels.json); rows longer than the shared-memory cache recompute instead.
QUANTIZE_BLOCK = {4096: 256, 1 << 30: 1024}

_lock = threading.Lock()
_modules: dict[tuple[str, tuple[str, ...]], Any] = {}
#: kernel handles by (source, name, device): looked up without the lock on every call
_functions: dict[tuple[str, str, int], Any] = {}


def _cupy() -> Any:
    try:
        import cupy
    except ImportError as exc:
        raise MissingExtraError("the GPU paths need CuPy: pip install 'seqkv[cuda]'") from exc
    return cupy


def available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        cp = _cupy()
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def kernel_dir() -> Path:
    """Folder of the ``.cu`` sources: ``$SEQKV_CUDA_KERNELS``, else ``cuda_kernels/`` of the checkout."""
    env = os.environ.get("SEQKV_CUDA_KERNELS")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [here.parent / "cuda_kernels", here.parents[2] / "cuda_kernels"]
    for c in candidates:
        if (c / "quantize.cu").is_file():
            return c
    raise SeqkvError(f"CUDA kernel sources not found (looked in {[str(c) for c in candidates]}); set SEQKV_CUDA_KERNELS")


def _function(source: str, name: str) -> Any:
    """The kernel ``name`` (a template instantiation expression) of ``cuda_kernels/<source>``,
    loaded on the current device (compiled once per process, then a dictionary lookup)."""
    cp = _cupy()
    fkey = (source, name, cp.cuda.runtime.getDevice())
    fn = _functions.get(fkey)
    if fn is not None:
        return fn
    key = (source, (name,))
    with _lock:
        mod = _modules.get(key)
        if mod is None:
            code = (kernel_dir() / source).read_text()
            mod = cp.RawModule(code=code, options=("-std=c++17",), name_expressions=(name,))
            _modules[key] = mod
        fn = _functions[fkey] = mod.get_function(name)
    return fn


# --- input handling ---------------------------------------------------------------------------


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "is_cuda")


def is_device_array(x: Any) -> bool:
    """True for a torch CUDA tensor, a CuPy array or an object with ``__cuda_array_interface__``."""
    if _is_torch(x):
        return bool(x.is_cuda)
    return hasattr(x, "__cuda_array_interface__")


@contextlib.contextmanager
def _on_stream_of(x: Any) -> Iterator[None]:
    """Run CuPy work on the device of ``x`` and, for a torch tensor, on torch's current stream."""
    cp = _cupy()
    if _is_torch(x):
        import torch

        dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
        with cp.cuda.Device(dev):
            with cp.cuda.ExternalStream(torch.cuda.current_stream(dev).cuda_stream, dev):
                yield
    elif type(x) is cp.ndarray and x.data.device_id == cp.cuda.runtime.getDevice():
        yield  # already on its device (the common case: no context switch)
    else:
        dev = x.device.id if hasattr(x, "device") and hasattr(x.device, "id") else cp.cuda.Device().id
        with cp.cuda.Device(dev):
            yield


_TORCH_KINDS = {"torch.float32": "f32", "torch.bfloat16": "bf16", "torch.float16": "f16"}


def _device_view(x: Any, kind: str | None, allowed: tuple[str, ...] = ("f32", "bf16", "f16")) -> tuple[Any, str]:
    """``(cupy array, kind)`` sharing memory with ``x``; bf16 comes back as uint16 bits."""
    cp = _cupy()
    if _is_torch(x):
        import torch

        k = _TORCH_KINDS.get(str(x.dtype))
        if k is None or k not in allowed:
            raise InvalidInputError(f"expected a {'/'.join(allowed)} tensor, got {x.dtype}")
        t = x.detach()
        if k == "bf16":
            t = t.view(torch.int16)
        arr = cp.from_dlpack(t)
        return (arr.view(cp.uint16) if k == "bf16" else arr), k
    if not hasattr(x, "__cuda_array_interface__"):
        raise InvalidInputError(f"expected a CUDA array (torch, CuPy or __cuda_array_interface__), got {type(x).__name__}")
    arr = x if isinstance(x, cp.ndarray) else cp.asarray(x)
    if arr.dtype == cp.float32:
        k = "f32"
    elif arr.dtype == cp.float16:
        k = "f16"
    elif arr.dtype == cp.uint16 and kind in ("bf16", "f16"):
        k = kind
    elif arr.dtype == cp.uint32 and kind == "f32":
        k = "f32"
    else:
        raise InvalidInputError(f"cannot read {arr.dtype} as {'/'.join(allowed)} (pass kind= for raw bits)")
    if k not in allowed:
        raise InvalidInputError(f"expected {'/'.join(allowed)}, got {k}")
    return arr, k


_CTYPE = {"f32": "float", "bf16": "bf16_t", "f16": "f16_t"}


# --- quantizer v1: tables, gather, search -------------------------------------------------------


@lru_cache(maxsize=None)
def _exp2_table_host() -> np.ndarray:
    from . import _quantize_ref

    tab = np.asarray(_quantize_ref.EXP2, dtype=np.uint32)
    if tab.shape != (1024,) or int(tab[0]) != 1 << 31:
        raise SeqkvError("seqkv._quantize_ref.EXP2 is not the quantizer v1 table")
    return tab


_exp2_dev: dict[int, Any] = {}


def _exp2_table() -> Any:
    cp = _cupy()
    dev = cp.cuda.Device().id
    t = _exp2_dev.get(dev)
    if t is None:
        t = _exp2_dev[dev] = cp.asarray(_exp2_table_host())
    return t


def _rows(logits: Any, kind: str | None) -> tuple[Any, str, int, int]:
    arr, k = _device_view(logits, kind)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidInputError(f"logits must be [n, V], got shape {arr.shape}")
    if arr.strides[1] != arr.itemsize:
        arr = _cupy().ascontiguousarray(arr)
    n, V = arr.shape
    return arr, k, n, V


def _check_precision(V: int, precision: int) -> None:
    if not 1 <= precision <= 24:
        raise InvalidInputError(f"precision must be in 1..24, got {precision}")
    if not 1 <= V <= (1 << precision):
        raise InvalidInputError(f"vocabulary of {V} does not fit precision {precision} (needs 1 <= V <= 2^{precision})")


def _block_for(V: int, block: int | None) -> int:
    if block is not None:
        if block not in (256, 512, 1024):
            raise InvalidInputError("block must be 256, 512 or 1024")
        return block
    for vmax, b in sorted(QUANTIZE_BLOCK.items()):
        if V <= vmax:
            return b
    return 512


def _max_dyn_smem() -> int:
    cp = _cupy()
    return int(cp.cuda.Device().attributes["MaxSharedMemoryPerBlockOptin"]) - 8192  # static part


def _allow_smem(fn: Any, nbytes: int) -> None:
    """Raise a kernel's dynamic shared-memory limit above the default 48 KiB."""
    try:
        fn.max_dynamic_shared_size_bytes = nbytes
    except AttributeError:  # older CuPy: through the driver
        cp = _cupy()
        cp.cuda.driver.funcSetAttribute(
            fn.ptr, cp.cuda.driver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, nbytes)


#: shared-memory cache of the quantize kernels: 0 none, 1 u (2 bytes per entry), 2 the row
#: itself then its weights (4 bytes per entry; the row is read from device memory once)
CACHE_BYTES_PER_ENTRY = {0: 0, 1: 2, 2: 4}
#: preferred cache modes, best first (each used when the row fits in shared memory)
CACHE_ORDER = (2, 1, 0)


def _launch_rows(arr: Any, k: str, n: int, V: int, precision: int, mode: int, aux: Any, out: Any,
                 block: int | None, cache: int | None) -> Any:
    cp = _cupy()
    b = _block_for(V, block)
    fn = _function("quantize.cu", f"qv1_rows<{_CTYPE[k]},{b},{mode}>")
    v4 = (V + 3) // 4 * 4
    if cache is None:
        limit = _max_dyn_smem()
        cache = next(c for c in CACHE_ORDER if v4 * CACHE_BYTES_PER_ENTRY[c] <= limit)
    if cache not in CACHE_BYTES_PER_ENTRY:
        raise InvalidInputError("cache must be 0, 1 or 2")
    smem = v4 * CACHE_BYTES_PER_ENTRY[cache]
    if smem > 48 * 1024:
        _allow_smem(fn, smem)
    vec = (arr.data.ptr % 16 == 0) and ((arr.strides[0] // arr.itemsize) % 4 == 0)
    status = cp.empty(n, dtype=cp.int32)
    if n:
        fn((n,), (b,), (arr, np.int64(arr.strides[0] // arr.itemsize), np.int32(V), np.int32(precision),
                         _exp2_table(), np.int32(cache), np.int32(vec), aux, out, status),
           shared_mem=smem)
    return status


def _raise_status(status: np.ndarray) -> None:
    bad = np.flatnonzero(status)
    if bad.size:
        r = int(bad[0])
        if status[r] == 1:
            raise InvalidInputError(f"logits row {r} holds NaN or +inf")
        raise InvalidInputError(f"row {r}: symbol or target out of range")


def _cc_major() -> int:
    cp = _cupy()
    return int(cp.cuda.Device().compute_capability) // 10


#: 16-byte loads per thread of the cluster kernels that get compiled (the count needed is rounded
#: up to one of these, so few template instances serve all vocabulary sizes)
_CLUSTER_NL = (1, 2, 3, 4, 6, 8, 12)
#: most logits per thread held in registers by the cluster kernels (auto configuration): 48
#: amortizes the per-thread reduction work best among the shapes measured on an H200
#: (benches/results/gpu_kernels.json)
CLUSTER_MAX_PER_THREAD = 48


def cluster_config(V: int, kind: str = "f32", block: int | None = None) -> tuple[int, int, int] | None:
    """``(threads per CTA, CTAs per cluster, 16-byte loads per thread)`` of the cluster kernel
    (``qv1_cluster`` in quantize.cu) for rows of ``V`` logits, or None when a row does not fit in
    the registers of one cluster of at most 8 CTAs (then the row kernel is used)."""
    epl = 4 if kind == "f32" else 8
    for b in (block,) if block else (128, 256, 512):
        for cs in (1, 2, 4, 8):
            need = -(-V // (cs * b * epl))
            nl = next((x for x in _CLUSTER_NL if x >= need), None)
            if nl is not None and nl * epl <= CLUSTER_MAX_PER_THREAD:
                return b, cs, nl
    return None


def _check_cluster(cfg: tuple[int, int, int], V: int, kind: str) -> tuple[int, int, int]:
    b, cs, nl = (int(v) for v in cfg)
    epl = 4 if kind == "f32" else 8
    if b not in (64, 128, 256, 512, 1024) or cs not in (1, 2, 4, 8) or not 1 <= nl <= 24 or cs * b * nl * epl < V:
        raise InvalidInputError(f"cluster config {cfg} cannot hold rows of {V} ({kind})")
    return b, cs, nl


def _launch_cluster(arr: Any, k: str, n: int, V: int, precision: int, mode: int, aux: Any, out: Any,
                    cfg: tuple[int, int, int]) -> Any:
    cp = _cupy()
    b, cs, nl = cfg
    fn = _function("quantize.cu", f"qv1_cluster<{_CTYPE[k]},{b},{cs},{nl},{mode}>")
    ld = arr.strides[0] // arr.itemsize
    vec = arr.data.ptr % 16 == 0 and (arr.strides[0] % 16 == 0 or n == 1)
    ovec = mode == 0 and out.data.ptr % 16 == 0 and V % 4 == 0
    status = cp.empty(n, dtype=cp.int32)
    if n:
        fn((n * cs,), (b,), (arr, np.int64(ld), np.int32(V), np.int32(precision), _exp2_table(), np.int32(vec),
                             aux, out, status, np.int32(ovec)))
    return status


def _launch(arr: Any, k: str, n: int, V: int, precision: int, mode: int, aux: Any, out: Any, block: int | None,
            cache: int | None, cluster: tuple[int, int, int] | None) -> Any:
    """The cluster kernel unless ``cache`` asks for the row kernel (or the row does not fit)."""
    if cache is None and mode in (0, 1) and _cc_major() >= 9:
        cfg = _check_cluster(cluster, V, k) if cluster is not None else cluster_config(
            V, k, block if block in (128, 256, 512) else None)
        if cfg is not None:
            return _launch_cluster(arr, k, n, V, precision, mode, aux, out, cfg)
    elif cluster is not None:
        raise InvalidInputError("cluster= needs cache=None and a GPU of compute capability >= 9.0")
    return _launch_rows(arr, k, n, V, precision, mode, aux, out, block, cache)


def quantize_logits_gpu(logits: Any, precision: int, *, kind: str | None = None, block: int | None = None,
                        cache: int | None = None, cluster: tuple[int, int, int] | None = None) -> tuple[Any, Any]:
    """``(freqs, cum)``: CuPy uint32 ``[n, V]`` frequency tables (quantizer v1) and their exclusive
    cumulative sums, computed on the GPU from ``logits`` ``[n, V]`` (or ``[V]``).

    By default the cluster kernel (one read of the logits, Hopper and later); ``cache`` (0, 1, 2)
    selects the one-block-per-row kernel with that shared-memory cache, ``cluster`` =
    ``(threads, CTAs per cluster, loads per thread)`` a cluster kernel configuration."""
    cp = _cupy()
    with _on_stream_of(logits):
        arr, k, n, V = _rows(logits, kind)
        _check_precision(V, precision)
        freqs = cp.empty((n, V), dtype=cp.uint32)
        status = _launch(arr, k, n, V, precision, 0, np.intp(0), freqs, block, cache, cluster)
        _raise_status(cp.asnumpy(status))
        cum = cp.cumsum(freqs, axis=1, dtype=cp.uint32) - freqs
    return freqs, cum


def _aux_symbols(symbols: Any, n: int) -> Any:
    cp = _cupy()
    if _is_torch(symbols):
        symbols = cp.from_dlpack(symbols.detach()) if symbols.is_cuda else symbols.cpu().numpy()
    s = cp.asarray(symbols).astype(cp.int64, copy=False).ravel()
    if s.size != n:
        raise InvalidInputError(f"{s.size} symbols for {n} rows")
    return cp.ascontiguousarray(s)


def gather_cdf(logits: Any, symbols: Any, precision: int, *, kind: str | None = None, block: int | None = None,
               cache: int | None = None, cluster: tuple[int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(cum_low, freq)`` (NumPy uint32 ``[n]``) of ``symbols[i]`` in row ``i``'s quantizer-v1
    table, for encoding; only these 8 bytes per row leave the GPU. ``block``/``cache``/``cluster``
    as in :func:`quantize_logits_gpu`."""
    cp = _cupy()
    with _on_stream_of(logits):
        arr, k, n, V = _rows(logits, kind)
        _check_precision(V, precision)
        aux = _aux_symbols(symbols, n)
        out = cp.empty((n, 2), dtype=cp.uint32)
        status = _launch(arr, k, n, V, precision, 1, aux, out, block, cache, cluster)
        host = cp.asnumpy(out)
        if n and not host[:, 1].all():
            _raise_status(cp.asnumpy(status))
    return host[:, 0].copy(), host[:, 1].copy()


def search_cdf(logits: Any, targets: Any, precision: int, *, kind: str | None = None, block: int | None = None,
               cache: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(symbols int64, cum_low u32, freq u32)``: per row, the symbol whose slice
    ``[cum_low, cum_low + freq)`` of the quantizer-v1 table holds ``targets[i]`` (< 2^precision)."""
    cp = _cupy()
    with _on_stream_of(logits):
        arr, k, n, V = _rows(logits, kind)
        _check_precision(V, precision)
        t = cp.asarray(np.asarray(targets, dtype=np.uint64) if not is_device_array(targets) else targets)
        if t.size != n:
            raise InvalidInputError(f"{t.size} targets for {n} rows")
        if bool((t >= (1 << precision)).any()):
            raise InvalidInputError(f"a target is >= 2^{precision}")
        aux = cp.ascontiguousarray(t.astype(cp.uint32).ravel())
        out = cp.empty((n, 3), dtype=cp.uint32)
        status = _launch_rows(arr, k, n, V, precision, 2, aux, out, block, cache)
        host = cp.asnumpy(out)
        if n and not host[:, 2].all():
            _raise_status(cp.asnumpy(status))
    return host[:, 0].astype(np.int64), host[:, 1].copy(), host[:, 2].copy()


def encode_tokens(logits: Any, tokens: Any, precision: int = 24, encoder: Any = None) -> bytes | None:
    """Range-code ``tokens[i]`` under row ``i`` of the GPU ``logits`` (quantizer v1): the tables
    are built and gathered on the GPU, 8 bytes per token reach the host. Pushes onto ``encoder``
    (a ``seqkv.coder.Encoder``) and returns None when given, else returns the finished bytes."""
    from . import coder

    cum_low, freq = gather_cdf(logits, tokens, precision)
    enc = encoder if encoder is not None else coder.Encoder(precision)
    total = 1 << precision
    for c, f in zip(cum_low.tolist(), freq.tolist()):
        enc.push_slice(c, f, total)
    return None if encoder is not None else enc.finish()


def decode_token(decoder: Any, logits_row: Any, precision: int = 24) -> int:
    """Decode one token with a ``seqkv.coder.Decoder`` under a GPU logits row (``[V]`` or
    ``[1, V]``): the decoder's target goes to the GPU, the symbol is found there."""
    s, cum_low, freq = search_cdf(logits_row, [decoder.target(1 << precision)], precision)
    decoder.advance(int(cum_low[0]), int(freq[0]))
    return int(s[0])


# --- residual pack / unpack -------------------------------------------------------------------

_RES_BLOCK = 32
_RES_WARPS = 8  # cuda_kernels/residual.cu: WARPS
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


_EPOCHS = 1 << 20  # cuda_kernels/residual.cu: 20-bit epochs
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
    :func:`seqkv.residual.pack`). Returns a :class:`seqkv.residual.Packed` (NumPy) when ``host``,
    else ``(kind, n, widths, words)`` as CuPy arrays. One kernel launch; the word count comes back
    to the host (8 bytes) to size ``words``."""
    from .residual import Packed

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
    (:class:`~seqkv.residual.Packed` or the device tuple of :func:`residual_pack`) and the
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
    """:meth:`seqkv.quantizers.TurboQuant.quantize` on the GPU (codes and norms stay there)."""
    from .quantizers import TurboCodes

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
    """:meth:`seqkv.quantizers.TurboQuant.dequantize` on the GPU (f32 CuPy array)."""
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
    """:class:`seqkv.quantizers.KIVI` keys (``axis="channel"``) or values (``"token"``) on the GPU."""
    from .quantizers import KiviCodes

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
    """:meth:`seqkv.quantizers.KIVI.dequantize` on the GPU (f32 CuPy array)."""
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
