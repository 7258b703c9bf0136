"""What every token codec shares: the protocol, token validation, coding statistics."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import CorruptStreamError, InvalidInputError

__all__ = ["Codec", "CodingStats", "ProgressFn", "as_tokens", "check_max_tokens", "DEFAULT_MAX_TOKENS", "TOKEN_DTYPE"]

#: dtype of the token arrays codecs return.
TOKEN_DTYPE = np.uint32

#: The most tokens a codec decodes from one stream unless told otherwise (``max_tokens=``):
#: a stream claiming more is refused before anything is allocated or computed.
DEFAULT_MAX_TOKENS = 1 << 24

#: Called with the number of tokens coded since the last call.
ProgressFn = Callable[[int], Any]


@runtime_checkable
class Codec(Protocol):
    """A token codec, exactly as :class:`seqkv.SessionStore` uses it.

    ``encode_with_stats`` turns token ids into a seqkv container (``seqkv.coding.container``)
    and says what it cost; ``decode`` gives the ids back (``uint32``). ``context`` is the
    tokens both ends already share (the prefix the store's trie matched; a codec that does
    not model it ignores it), ``progress`` is called with counts of coded tokens. Codecs take
    these as keyword parameters and refuse any other.
    """

    name: str

    def encode_with_stats(
        self, tokens: Any, *, context: Any = None, progress: ProgressFn | None = None
    ) -> tuple[bytes, "CodingStats"]: ...

    def decode(self, data: bytes, *, context: Any = None, progress: ProgressFn | None = None) -> np.ndarray: ...


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

    Accepts lists, NumPy arrays and torch tensors of any integer dtype, a ``[1, n]`` batch of
    one, and a tokenizer's output (a dict or ``BatchEncoding`` with ``"input_ids"`` holding
    one sequence). Raises :class:`InvalidInputError` for anything else: non-integers, other
    dicts, ragged nesting, negative ids, ids ``>= vocab_size`` or beyond 32 bits, more than
    one sequence.
    """
    if tokens is None:
        return np.empty(0, dtype=TOKEN_DTYPE)
    if isinstance(tokens, Mapping):
        if "input_ids" not in tokens:
            raise InvalidInputError(
                f"{what} must be a sequence of integer ids, not a {type(tokens).__name__} "
                f"with keys {sorted(map(str, tokens))[:4]}"
            )
        tokens = tokens["input_ids"]
    if hasattr(tokens, "detach") and hasattr(tokens, "cpu"):  # torch tensor, without importing torch
        tokens = tokens.detach().cpu().numpy()
    if isinstance(tokens, (bytes, str)):
        raise InvalidInputError(f"{what} must be a sequence of integer ids, not {type(tokens).__name__}")
    try:
        arr = np.asarray(tokens)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInputError(f"{what} must be a flat sequence of integer ids: {exc}") from None
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        raise InvalidInputError(
            f"{what} holds {arr.shape[0]} sequences (shape {arr.shape}); pass one sequence, e.g. input_ids[i]"
        )
    if arr.ndim != 1:
        raise InvalidInputError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, dtype=TOKEN_DTYPE)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == object and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in arr):
            ints = [int(t) for t in arr]
            lo, hi = min(ints), max(ints)
        else:
            raise InvalidInputError(f"{what} must be integers, got dtype {arr.dtype}")
    else:
        lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise InvalidInputError(f"{what} must be >= 0, got {lo}")
    if vocab_size is not None and hi >= vocab_size:
        raise InvalidInputError(f"token id {hi} is out of range for vocab size {vocab_size}")
    if hi > np.iinfo(TOKEN_DTYPE).max:
        raise InvalidInputError(f"token id {hi} does not fit in 32 bits")
    if arr.dtype == object:
        arr = np.array(ints, dtype=np.int64)
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


def check_int_option(name: str, value: Any, lo: int, hi: int) -> int:
    """A codec's integer option, validated (an ``int`` or NumPy integer in ``lo..=hi``; not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= int(value) <= hi:
        raise InvalidInputError(f"{name} must be an int in {lo}..={hi}, got {value!r}")
    return int(value)


def check_vocab_size(vocab_size: Any) -> int:
    """A vocabulary size a container can record (``1..=2**24``)."""
    return check_int_option("vocab_size", vocab_size, 1, 1 << 24)


def check_block_tokens(block_tokens: Any) -> int:
    """Tokens per block (a block's count is a u32)."""
    return check_int_option("block_tokens", block_tokens, 1, (1 << 32) - 1)


def check_max_tokens(max_tokens: Any) -> int:
    """A codec's ``max_tokens`` option, validated (at most the container's ``2**48``)."""
    return check_int_option("max_tokens", max_tokens, 0, 1 << 48)


def check_stream_size(c: Any, max_tokens: int) -> None:
    """Refuse an unpacked container before decoding it when it claims more than ``max_tokens``
    tokens (:class:`InvalidInputError`, the caller's limit) or its blocks do not add up to its
    header's count (:class:`CorruptStreamError`)."""
    claimed = int(c.header.token_count)
    if claimed > max_tokens:
        raise InvalidInputError(
            f"stream claims {claimed:,} tokens, more than this decoder's max_tokens={max_tokens:,}; "
            "pass a larger max_tokens if the stream is trusted"
        )
    if sum(int(b.n_tokens) for b in c.blocks) != claimed:
        raise CorruptStreamError("block token counts do not add up to the header's token count")


def unpack_stream(data: bytes, codec: str, vocab_size: int, max_tokens: int) -> Any:
    """``container.unpack(data)`` for a codec: raises :class:`InvalidInputError` when another
    codec or another vocabulary size wrote the stream, or it claims more than ``max_tokens``."""
    from ..coding import container

    c = container.unpack(data)
    h = c.header
    if h.codec != codec:
        raise InvalidInputError(f"stream was written by codec {h.codec!r}, not {codec!r}")
    if h.vocab_size != vocab_size:
        raise InvalidInputError(f"stream has vocab size {h.vocab_size}, this codec {vocab_size}")
    check_stream_size(c, max_tokens)
    return c
