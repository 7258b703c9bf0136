"""Range coding over integer frequency tables, and the deterministic logits → table quantizer.

Three ways to code a sequence of symbols (all produce the same kind of byte string, and all decode
symbols in the order they were encoded):

* one static table for every symbol: ``encode(symbols, freqs_1d)`` / ``decode(data, freqs_1d, n)``;
* one table per step, the LM case: ``encode(symbols, freqs_2d)`` / ``decode(data, freqs_2d)``, or
  straight from float32 logits without materialising tables: ``encode_logits`` / ``decode_logits``;
* streaming, when the next table depends on the symbols decoded so far: :class:`Encoder` /
  :class:`Decoder` (``push`` / ``pop`` with a table row, ``push_logits`` / ``pop_logits`` with a
  logits row).

Tables are uint32 rows summing exactly to ``2**precision`` (``1 <= precision <= 24``); a symbol
whose frequency is 0 cannot be coded (:class:`~seqkv.errors.InvalidInputError`).
:func:`quantize_logits` turns logits into such tables by the integer/IEEE-exact procedure of
``docs/numerics.md`` (quantizer v1), identical in Rust, NumPy (``seqkv.coding._quantize_ref``) and CUDA.

Adaptive coding for byte-like or small-alphabet streams: :func:`encode_adaptive` /
:func:`decode_adaptive` (counts learned as the stream goes, no table to transmit).

Decoding a damaged stream raises :class:`~seqkv.errors.CorruptStreamError` where it can tell, and
otherwise returns wrong symbols: the container's per-block token checksums catch those.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from .. import _native
from .._native.coder import pack_bits, unpack_bits
from ..errors import InvalidInputError

__all__ = [
    "QUANTIZER_VERSION",
    "MAX_PRECISION",
    "quantize_logits",
    "pack_bits",
    "unpack_bits",
    "encode",
    "decode",
    "encode_logits",
    "decode_logits",
    "encode_adaptive",
    "decode_adaptive",
    "Encoder",
    "Decoder",
    "AdaptiveModel",
    "crc32c",
    "tokens_checksum",
]

QUANTIZER_VERSION: int = _native.QUANTIZER_VERSION
MAX_PRECISION: int = _native.MAX_PRECISION


#: The most symbols one call decodes (a count beyond it cannot be a real stream's).
_MAX_COUNT = (1 << 48) - 1
_U32_MAX = (1 << 32) - 1


def _int_arg(name: str, value: Any, lo: int, hi: int) -> int:
    """An integer argument (``int`` or NumPy integer, not bool) in ``lo..=hi``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{name} must be an int, got {type(value).__name__}")
    if not lo <= int(value) <= hi:
        raise InvalidInputError(f"{name} must be in {lo}..={hi}, got {value}")
    return int(value)


def _check_precision(precision: int) -> int:
    return _int_arg("precision", precision, 1, MAX_PRECISION)


def _asarray(values: Any, what: str) -> np.ndarray:
    """``np.asarray(values)``, with NumPy's refusals (ragged nesting, ints beyond 64 bits) as
    :class:`InvalidInputError`."""
    if isinstance(values, (str, bytes, dict)):
        raise InvalidInputError(f"{what} must be an array of numbers, not {type(values).__name__}")
    try:
        a = np.asarray(values)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInputError(f"{what} must be a rectangular array of numbers: {exc}") from None
    if a.dtype == object:
        raise InvalidInputError(f"{what} must be numbers that fit in 64 bits")
    return a


def _as_symbols(symbols: Any) -> np.ndarray:
    """Symbols as a contiguous 1-D int64 array (no copy when they already are)."""
    a = _asarray(symbols, "symbols")
    if a.ndim != 1:
        if a.ndim == 0:
            a = a.reshape(1)
        else:
            raise InvalidInputError(f"symbols must be 1-D, got shape {a.shape}")
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.dtype.kind not in "iu":
        raise InvalidInputError(f"symbols must be integers, got dtype {a.dtype}")
    if a.dtype == np.uint64 and a.max() > np.iinfo(np.int64).max:
        raise InvalidInputError("symbol out of range")
    return np.ascontiguousarray(a, dtype=np.int64)


def _as_freqs(freqs: Any, ndim: int | None = None) -> np.ndarray:
    """Frequencies as a C-contiguous uint32 array (no copy for uint32 input)."""
    a = _asarray(freqs, "frequencies")
    if ndim is not None and a.ndim != ndim:
        raise InvalidInputError(f"frequency table must be {ndim}-D, got shape {a.shape}")
    if a.dtype == np.uint32:
        return np.ascontiguousarray(a)
    if a.dtype.kind not in "iu":
        raise InvalidInputError(f"frequencies must be integers, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() > 0xFFFFFFFF):
        raise InvalidInputError("frequencies must be in 0..2**32")
    return np.ascontiguousarray(a, dtype=np.uint32)


def _as_logits(logits: Any, ndim: int) -> np.ndarray:
    """Logits as a C-contiguous float32 array (no copy for float32 input)."""
    a = _asarray(logits, "logits")
    if a.ndim != ndim:
        raise InvalidInputError(f"logits must be {ndim}-D, got shape {a.shape}")
    if a.dtype != np.float32:
        if a.dtype.kind not in "fiu":
            raise InvalidInputError(f"logits must be float32, got dtype {a.dtype}")
        # Converting is well defined, but the result must be the same at both ends: give float32.
        if a.dtype.kind == "f" and a.dtype.itemsize > 4:
            raise InvalidInputError(
                f"logits must be float32 (got {a.dtype}); convert explicitly so that both ends round the same way"
            )
        a = a.astype(np.float32)
    return np.ascontiguousarray(a)


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise InvalidInputError(f"data must be bytes, got {type(data).__name__}")


def quantize_logits(logits: npt.ArrayLike, precision: int = 24) -> np.ndarray:
    """Quantizer v1: float32 logits ``[n, V]`` (or ``[V]``) → uint32 frequencies, same shape.

    Every entry is ``>= 1`` and every row sums to exactly ``2**precision``; requires
    ``1 <= V <= 2**precision``. NaN or +inf raise :class:`InvalidInputError`; -inf gets the
    minimum frequency 1. Rows are processed in parallel with the GIL released.
    """
    precision = _check_precision(precision)
    x = _asarray(logits, "logits")
    if x.ndim == 1:
        return quantize_logits(x[None, :], precision)[0]
    x = _as_logits(x, 2)
    return _native.quantize_logits(x, precision)


def encode(symbols: npt.ArrayLike, freqs: npt.ArrayLike, precision: int = 24) -> bytes:
    """Codes ``symbols`` under one static table (``freqs`` 1-D) or one table per symbol (2-D ``[n, V]``)."""
    precision = _check_precision(precision)
    s = _as_symbols(symbols)
    f = _asarray(freqs, "frequencies")
    if f.ndim == 1:
        return _native.encode_static(s, _as_freqs(f), precision)
    if f.ndim == 2:
        if f.shape[0] != s.shape[0]:
            raise InvalidInputError(f"{s.shape[0]} symbols for {f.shape[0]} table rows")
        return _native.encode_tables(s, _as_freqs(f), precision)
    raise InvalidInputError(f"freqs must be 1-D or 2-D, got shape {f.shape}")


def decode(data: bytes, freqs: npt.ArrayLike, n: int | None = None, precision: int = 24) -> np.ndarray:
    """Decodes what :func:`encode` wrote. With a 1-D table ``n`` (the symbol count) is required;
    with a 2-D table it is ``freqs.shape[0]`` (``n``, if given, must agree). Returns uint32 symbols (the token convention of the native API)."""
    precision = _check_precision(precision)
    f = _asarray(freqs, "frequencies")
    data = _as_bytes(data)
    if f.ndim == 1:
        if n is None:
            raise InvalidInputError("decode with a static (1-D) table needs n, the number of symbols")
        return _native.decode_static(data, _as_freqs(f), _int_arg("n", n, 0, _MAX_COUNT), precision)
    if f.ndim == 2:
        if n is not None and _int_arg("n", n, 0, _MAX_COUNT) != f.shape[0]:
            raise InvalidInputError(f"n = {n} but there are {f.shape[0]} table rows")
        return _native.decode_tables(data, _as_freqs(f), precision)
    raise InvalidInputError(f"freqs must be 1-D or 2-D, got shape {f.shape}")


def encode_logits(symbols: npt.ArrayLike, logits: npt.ArrayLike, precision: int = 24) -> bytes:
    """Codes ``symbols[i]`` under the quantized table of ``logits[i]`` (float32 ``[n, V]``) without
    materialising the tables; identical bytes to ``encode(symbols, quantize_logits(logits))``."""
    precision = _check_precision(precision)
    s = _as_symbols(symbols)
    x = _as_logits(logits, 2)
    if x.shape[0] != s.shape[0]:
        raise InvalidInputError(f"{s.shape[0]} symbols for {x.shape[0]} logits rows")
    return _native.encode_logits(s, x, precision)


def decode_logits(data: bytes, logits: npt.ArrayLike, precision: int = 24) -> np.ndarray:
    """Decodes one symbol per row of ``logits`` (float32 ``[n, V]``) from :func:`encode_logits` bytes."""
    precision = _check_precision(precision)
    return _native.decode_logits(_as_bytes(data), _as_logits(logits, 2), precision)


def encode_adaptive(
    symbols: npt.ArrayLike,
    n_symbols: int,
    increment: int = _native.ADAPTIVE_DEFAULT_INCREMENT,
    limit: int | None = None,
) -> bytes:
    """Codes ``symbols`` (each ``< n_symbols``) with an adaptive model: every count starts at 1, the
    coded symbol's count grows by ``increment``, and all counts are halved when their total passes
    ``limit`` (default ``max(2**16, n_symbols + increment)``; ``n_symbols + increment <= limit <= 2**24``)."""
    limit = _adaptive_limit(n_symbols, increment, limit)
    return _native.encode_adaptive(_as_symbols(symbols), int(n_symbols), int(increment), limit)


def decode_adaptive(
    data: bytes,
    n_symbols: int,
    n: int,
    increment: int = _native.ADAPTIVE_DEFAULT_INCREMENT,
    limit: int | None = None,
) -> np.ndarray:
    """Decodes ``n`` symbols written by :func:`encode_adaptive` with the same parameters."""
    limit = _adaptive_limit(n_symbols, increment, limit)
    n = _int_arg("n", n, 0, _MAX_COUNT)
    return _native.decode_adaptive(_as_bytes(data), int(n_symbols), n, int(increment), limit)


def _adaptive_limit(n_symbols: int, increment: int, limit: int | None) -> int:
    n_symbols = _int_arg("n_symbols", n_symbols, 1, 1 << 24)
    increment = _int_arg("increment", increment, 0, (1 << 24) - 1)
    if limit is None:
        limit = min(max(_native.ADAPTIVE_DEFAULT_LIMIT, n_symbols + increment), 1 << 24)
    return _int_arg("limit", limit, 1, 1 << 24)


class Encoder:
    """Streaming encoder: push one symbol at a time with its table (or logits) row, then ``finish()``."""

    __slots__ = ("_enc",)

    def __init__(self, precision: int = 24) -> None:
        self._enc = _native.Encoder(_check_precision(precision))

    @property
    def precision(self) -> int:
        return self._enc.precision

    def __len__(self) -> int:
        """Symbols pushed so far."""
        return len(self._enc)

    def push(self, symbol: int, freqs_row: npt.ArrayLike) -> None:
        """Codes ``symbol`` under ``freqs_row`` (1-D, summing to ``2**precision``)."""
        self._enc.push(_as_int(symbol), _as_freqs(freqs_row, 1))

    def push_logits(self, symbol: int, logits_row: npt.ArrayLike) -> None:
        """Codes ``symbol`` under the quantized table of ``logits_row`` (1-D float32)."""
        self._enc.push_logits(_as_int(symbol), _as_logits(logits_row, 1))

    def push_slice(self, cum_low: int, freq: int, total: int) -> None:
        """Codes the symbol occupying ``[cum_low, cum_low + freq)`` of a table summing to ``total``
        (``<= 2**24``, any value): for models computed outside seqkv."""
        self._enc.push_slice(_as_symbol(cum_low, "cum_low"), _as_symbol(freq, "freq"), _as_symbol(total, "total"))

    def finish(self) -> bytes:
        """Ends the stream and returns its bytes; the encoder cannot be used afterwards."""
        return self._enc.finish()


class Decoder:
    """Streaming decoder over the bytes of an :class:`Encoder`: pop symbols with the same rows."""

    __slots__ = ("_dec",)

    def __init__(self, data: bytes, precision: int = 24) -> None:
        self._dec = _native.Decoder(_as_bytes(data), _check_precision(precision))

    @property
    def precision(self) -> int:
        return self._dec.precision

    def pop(self, freqs_row: npt.ArrayLike) -> int:
        """Decodes the next symbol, coded under ``freqs_row``."""
        return self._dec.pop(_as_freqs(freqs_row, 1))

    def pop_logits(self, logits_row: npt.ArrayLike) -> int:
        """Decodes the next symbol, coded under the quantized table of ``logits_row``."""
        return self._dec.pop_logits(_as_logits(logits_row, 1))

    def target(self, total: int) -> int:
        """For :meth:`Encoder.push_slice` streams: the value in ``[0, total)`` that identifies the
        next symbol; follow with :meth:`advance` on the slice containing it."""
        return self._dec.target_with_total(_as_symbol(total))

    def advance(self, cum_low: int, freq: int) -> None:
        self._dec.advance(_as_symbol(cum_low), _as_symbol(freq))

    def finish(self) -> None:
        """Raises :class:`CorruptStreamError` if the stream holds data after the symbols popped."""
        self._dec.finish()


class AdaptiveModel:
    """Adaptive counts over ``n_symbols`` symbols (a Fenwick tree), the model of
    :func:`encode_adaptive`, for coding symbol by symbol inside a stream of your own:
    ``model.encode(encoder, symbol)`` / ``model.decode(decoder)`` code under the current counts and
    then update them. Every count starts at 1."""

    __slots__ = ("_m",)

    def __init__(
        self, n_symbols: int, increment: int = _native.ADAPTIVE_DEFAULT_INCREMENT, limit: int | None = None
    ) -> None:
        limit = _adaptive_limit(n_symbols, increment, limit)
        self._m = _native.AdaptiveModel(_int_arg("n_symbols", n_symbols, 1, 1 << 24), int(increment), limit)

    def __len__(self) -> int:
        return len(self._m)

    @property
    def total(self) -> int:
        """Sum of the counts."""
        return self._m.total

    def _symbol(self, symbol: Any) -> int:
        return _int_arg("symbol", symbol, 0, len(self._m) - 1)

    def cdf(self, symbol: int) -> int:
        """Sum of the counts of the symbols below ``symbol`` (``symbol`` in ``0..=n_symbols``)."""
        return self._m.cdf(_int_arg("symbol", symbol, 0, len(self._m)))

    def freq(self, symbol: int) -> int:
        return self._m.freq(self._symbol(symbol))

    def find(self, target: int) -> tuple[int, int, int]:
        """``(symbol, cum_low, freq)`` of the symbol whose slice contains ``target < total``."""
        return self._m.find(_as_symbol(target, "target"))

    def update(self, symbol: int) -> None:
        self._m.update(self._symbol(symbol))

    def encode(self, encoder: Encoder, symbol: int) -> None:
        if not isinstance(encoder, Encoder):
            raise InvalidInputError(f"encoder must be a seqkv.coding.coder.Encoder, got {type(encoder).__name__}")
        self._m.encode(encoder._enc, self._symbol(symbol))

    def decode(self, decoder: Decoder) -> int:
        if not isinstance(decoder, Decoder):
            raise InvalidInputError(f"decoder must be a seqkv.coding.coder.Decoder, got {type(decoder).__name__}")
        return self._m.decode(decoder._dec)


def _as_int(symbol: Any) -> int:
    """A symbol for a table row (any int: the native side reports one outside the row)."""
    return _int_arg("symbol", symbol, -_U32_MAX, _U32_MAX)


def _as_symbol(symbol: Any, what: str = "symbol") -> int:
    return _int_arg(what, symbol, 0, _U32_MAX)


def crc32c(data: bytes, value: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``; pass a previous result as ``value`` to continue it."""
    return _native.crc32c(_as_bytes(data), value)


def tokens_checksum(tokens: npt.ArrayLike) -> int:
    """CRC-32C of token ids written as uint32 little-endian: the container's token checksum."""
    t = _as_symbols(tokens)
    return _native.tokens_crc32c(t)
