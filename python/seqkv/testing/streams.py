"""Strategies for coded streams: valid containers written by a codec, and their corruptions
(a flipped bit, a truncation, appended bytes), which a decoder must refuse with a
:class:`~seqkv.errors.SeqkvError` instead of returning wrong tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ._hypothesis import st
from .tokens import token_sequences

__all__ = ["Corruption", "CorruptionKind", "EncodedStream", "corruptions", "encoded_streams"]

CorruptionKind = Literal["bit_flip", "truncation", "appended"]


@dataclass(frozen=True)
class EncodedStream:
    """Tokens and the container a codec wrote for them."""

    tokens: np.ndarray
    data: bytes


@dataclass(frozen=True)
class Corruption:
    """A damaged copy of ``original``: ``kind`` says how, ``where`` at which byte (or bit, for a
    flip: ``where // 8`` is the byte)."""

    kind: CorruptionKind
    where: int
    original: bytes
    data: bytes


def encoded_streams(
    codec: Any, tokens: st.SearchStrategy[np.ndarray] | None = None, *, max_size: int = 256
) -> st.SearchStrategy[EncodedStream]:
    """Streams ``codec.encode_with_stats`` writes for drawn tokens (by default
    ``token_sequences(codec.vocab_size, max_size=max_size)``)."""
    if tokens is None:
        tokens = token_sequences(int(codec.vocab_size), max_size=max_size)

    def encode(toks: np.ndarray) -> EncodedStream:
        data, _ = codec.encode_with_stats(toks)
        return EncodedStream(toks, data)

    return tokens.map(encode)


@st.composite
def corruptions(draw: st.DrawFn, data: bytes | st.SearchStrategy[bytes]) -> Corruption:
    """One corruption of ``data`` (or of a drawn stream's bytes): every result differs from it."""
    original = bytes(draw(data) if isinstance(data, st.SearchStrategy) else data)
    kinds: list[CorruptionKind] = ["appended", "bit_flip", "truncation"] if original else ["appended"]
    kind = draw(st.sampled_from(kinds))
    if kind == "bit_flip":
        bit = draw(st.integers(0, 8 * len(original) - 1))
        damaged = bytearray(original)
        damaged[bit // 8] ^= 0x80 >> (bit % 8)
        return Corruption("bit_flip", bit, original, bytes(damaged))
    if kind == "truncation":
        keep = draw(st.integers(0, len(original) - 1))
        return Corruption("truncation", keep, original, original[:keep])
    extra = draw(st.binary(min_size=1, max_size=16))
    return Corruption("appended", len(original), original, original + extra)
