"""What every token codec shares: the protocol, token validation, coding statistics."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import InvalidInputError

__all__ = ["Codec", "CodingStats", "as_tokens", "TOKEN_DTYPE"]

#: dtype of the token arrays codecs return.
TOKEN_DTYPE = np.uint32


@runtime_checkable
class Codec(Protocol):
    """A token codec: ``encode(tokens) -> bytes`` (a seqkv container) and back."""

    name: str

    def encode(self, tokens: Any) -> bytes: ...

    def decode(self, data: bytes) -> np.ndarray: ...


class PerTokenBits:
    """``payload_bits`` and ``container_bits`` divided by ``tokens`` (0 for an empty stream)."""

    tokens: int
    payload_bits: int
    container_bits: int

    @property
    def payload_bits_per_token(self) -> float:
        return self.payload_bits / self.tokens if self.tokens else 0.0

    @property
    def container_bits_per_token(self) -> float:
        return self.container_bits / self.tokens if self.tokens else 0.0


@dataclasses.dataclass
class CodingStats(PerTokenBits):
    """What one ``encode`` cost.

    ``payload_bits`` counts the coded blocks only; ``container_bits`` the whole stream
    (header, fingerprint, profile, block framing and checksums included).
    ``cross_entropy_bits`` is the model's own cost of the coded tokens, Σ -log2 p(t), from
    the float32 logits in float64 (``None`` for codecs without a model); ``table_bits``
    the same under the integer tables actually used (quantization cost included).
    ``extra`` holds codec-specific figures; model codecs put ``token_log2p`` there (each
    coded token's log2 probability under the float model) and ``token_bits`` (its ideal
    cost under the integer tables, helper bits included), float64 arrays.
    """

    codec: str
    tokens: int
    payload_bits: int
    container_bits: int
    seconds: float = 0.0
    cross_entropy_bits: float | None = None
    table_bits: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


    @property
    def cross_entropy_per_token(self) -> float | None:
        if self.cross_entropy_bits is None or not self.tokens:
            return None
        return self.cross_entropy_bits / self.tokens

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["extra"] = {k: v for k, v in self.extra.items() if not isinstance(v, np.ndarray)}
        d["payload_bits_per_token"] = self.payload_bits_per_token
        d["container_bits_per_token"] = self.container_bits_per_token
        d["cross_entropy_per_token"] = self.cross_entropy_per_token
        return d


def as_tokens(tokens: Any, vocab_size: int | None = None, *, what: str = "tokens") -> np.ndarray:
    """Validate a 1-D sequence of token ids and return it as a contiguous ``uint32`` array.

    Accepts lists, NumPy arrays and torch tensors (any integer dtype). Raises
    :class:`InvalidInputError` for non-integers, negative ids, ids ``>= vocab_size`` or
    more than one dimension.
    """
    if tokens is None:
        return np.empty(0, dtype=TOKEN_DTYPE)
    if hasattr(tokens, "detach") and hasattr(tokens, "cpu"):  # torch tensor, without importing torch
        tokens = tokens.detach().cpu().numpy()
    if isinstance(tokens, (bytes, str)):
        raise InvalidInputError(f"{what} must be a sequence of integer ids, not {type(tokens).__name__}")
    arr = np.asarray(tokens)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise InvalidInputError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, dtype=TOKEN_DTYPE)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == object and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in arr):
            arr = np.array([int(t) for t in arr], dtype=np.int64)
        else:
            raise InvalidInputError(f"{what} must be integers, got dtype {arr.dtype}")
    lo = int(arr.min())
    hi = int(arr.max())
    if lo < 0:
        raise InvalidInputError(f"{what} must be >= 0, got {lo}")
    if vocab_size is not None and hi >= vocab_size:
        raise InvalidInputError(f"token id {hi} is out of range for vocab size {vocab_size}")
    if hi > np.iinfo(TOKEN_DTYPE).max:
        raise InvalidInputError(f"token id {hi} does not fit in 32 bits")
    return np.ascontiguousarray(arr, dtype=TOKEN_DTYPE)


def common_prefix_length(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two 1-D token arrays."""
    m = min(a.size, b.size)
    if m == 0:
        return 0
    neq = np.flatnonzero(a[:m] != b[:m])
    return int(neq[0]) if neq.size else m


def split_blocks(n: int, block_tokens: int) -> Sequence[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)`` in blocks of ``block_tokens`` (none when n = 0)."""
    if block_tokens < 1:
        raise InvalidInputError("block_tokens must be >= 1")
    return [(s, min(s + block_tokens, n)) for s in range(0, n, block_tokens)]


def run_lengths(schedule: Sequence[int]) -> list[list[int]]:
    """A compute schedule run-length encoded: ``[[size, repeat], ...]``."""
    runs: list[list[int]] = []
    for s in schedule:
        if runs and runs[-1][0] == s:
            runs[-1][1] += 1
        else:
            runs.append([int(s), 1])
    return runs


def describe_schedule(schedule: Sequence[int]) -> str:
    """A compact text form of a compute schedule: ``"12, 1×49"`` (run-length)."""
    return ", ".join(f"{s}×{r}" if r > 1 else str(s) for s, r in run_lengths(schedule)) or "(none)"


def unpack_stream(data: bytes, codec: str, vocab_size: int) -> Any:
    """``container.unpack(data)`` for a codec: raises :class:`InvalidInputError` when another
    codec or another vocabulary size wrote the stream."""
    from ..coding import container

    c = container.unpack(data)
    h = c.header
    if h.codec != codec:
        raise InvalidInputError(f"stream was written by codec {h.codec!r}, not {codec!r}")
    if h.vocab_size != vocab_size:
        raise InvalidInputError(f"stream has vocab size {h.vocab_size}, this codec {vocab_size}")
    return c
