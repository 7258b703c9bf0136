"""The coder's GPU paths: logits → integer CDF (quantizer v1), gather and search, bit-identical to
:func:`seqkv.coding.coder.quantize_logits` (tests compare them). Only the small results come back to
the host: 8 bytes per token for :func:`gather_cdf`, 12 for :func:`search_cdf`.

The coding loop of the ``lm`` codec on a GPU model (streams identical to
``seqkv.coding.coder.encode_logits`` on the same logits)::

    data = seqkv.coding.gpu.encode_tokens(logits, tokens, precision)          # logits[i] predicts tokens[i]
    dec = seqkv.coding.coder.Decoder(data, precision)
    tok = seqkv.coding.gpu.decode_token(dec, logits_row, precision)           # one step
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from ..errors import InvalidInputError, SeqkvError
from ..cuda.runtime import (
    _CTYPE,
    _allow_smem,
    _cc_major,
    _cupy,
    _device_view,
    _function,
    _is_torch,
    _max_dyn_smem,
    _on_stream_of,
    is_device_array,
)

__all__ = ["quantize_logits_gpu", "gather_cdf", "search_cdf", "encode_tokens", "decode_token", "QUANTIZE_BLOCK", "cluster_config"]

#: threads per row of the quantize kernels, by row length (tuned on an H100, see
#: benches/results/gpu_kernels.json); rows longer than the shared-memory cache recompute instead.
QUANTIZE_BLOCK = {4096: 256, 1 << 30: 1024}

# --- quantizer v1: tables, gather, search -------------------------------------------------------


@lru_cache(maxsize=None)
def _exp2_table_host() -> np.ndarray:
    from ..coding import _quantize_ref

    tab = np.asarray(_quantize_ref.EXP2, dtype=np.uint32)
    if tab.shape != (1024,) or int(tab[0]) != 1 << 31:
        raise SeqkvError("seqkv.coding._quantize_ref.EXP2 is not the quantizer v1 table")
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


_CLUSTER_NL = (1, 2, 3, 4, 6, 8, 12)
#: most logits per thread held in registers by the cluster kernels (auto configuration): 48
#: amortizes the per-thread reduction work best among the shapes timed in
#: benches/results/gpu_kernels.json
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
    (a ``seqkv.coding.coder.Encoder``) and returns None when given, else returns the finished bytes."""
    from ..coding import coder

    cum_low, freq = gather_cdf(logits, tokens, precision)
    enc = encoder if encoder is not None else coder.Encoder(precision)
    total = 1 << precision
    for c, f in zip(cum_low.tolist(), freq.tolist()):
        enc.push_slice(c, f, total)
    return None if encoder is not None else enc.finish()


def decode_token(decoder: Any, logits_row: Any, precision: int = 24) -> int:
    """Decode one token with a ``seqkv.coding.coder.Decoder`` under a GPU logits row (``[V]`` or
    ``[1, V]``): the decoder's target goes to the GPU, the symbol is found there."""
    s, cum_low, freq = search_cdf(logits_row, [decoder.target(1 << precision)], precision)
    decoder.advance(int(cum_low[0]), int(freq[0]))
    return int(s[0])
