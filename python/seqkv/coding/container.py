"""The ``SQKV`` container: one header, coded blocks with checksums, and a checksum of all tokens.

Layout (format version 1) in ``docs/format.md``. :func:`unpack` validates every field and every
checksum it can check without decoding (header CRC, each block's CRC, token counts, trailing
data) and raises :class:`~seqkv.errors.CorruptStreamError` or
:class:`~seqkv.errors.FormatVersionError`; after decoding, a codec compares each block's tokens
with ``block.tokens_crc32c`` (:func:`tokens_checksum`) to catch a numerics mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np

from .. import _native
from .coder import QUANTIZER_VERSION, tokens_checksum
from ..errors import InvalidInputError

__all__ = [
    "CODECS",
    "FORMAT_VERSION",
    "Header",
    "Block",
    "Container",
    "pack",
    "unpack",
    "tokens_checksum",
    "combine_checksums",
]

FORMAT_VERSION: int = _native.CONTAINER_FORMAT_VERSION
#: Codec names and their ids in the header.
CODECS: dict[str, int] = {"raw": 1, "plt": 2, "lm": 3, "lm-robust": 4, "residual": 5, "static": 6}


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{name} must be an int, got {type(value).__name__}")
    v = int(value)
    if not lo <= v <= hi:
        raise InvalidInputError(f"{name} = {v} outside {lo}..={hi}")
    return v


@dataclass(frozen=True)
class Header:
    """What a stream needs to be decoded: codec, precision, token count, vocabulary, the model
    fingerprint, the numerics profile (JSON text), the compute schedule (chunk sizes) and the
    codec's own parameters."""

    codec: str
    precision: int
    token_count: int
    vocab_size: int
    model_fingerprint: bytes = b""
    numerics_profile: str = ""
    schedule: tuple[int, ...] = ()
    params: bytes = b""
    quantizer_version: int = QUANTIZER_VERSION

    def _fields(self) -> tuple[Any, ...]:
        if not isinstance(self.codec, str) or self.codec not in CODECS:
            raise InvalidInputError(f"unknown codec {self.codec!r}; expected one of {sorted(CODECS)}")
        if not isinstance(self.model_fingerprint, (bytes, bytearray, memoryview)):
            raise InvalidInputError("model_fingerprint must be bytes")
        if not isinstance(self.params, (bytes, bytearray, memoryview)):
            raise InvalidInputError("params must be bytes")
        if not isinstance(self.numerics_profile, str):
            raise InvalidInputError("numerics_profile must be a str (JSON text)")
        if not isinstance(self.schedule, (tuple, list)):
            raise InvalidInputError(f"schedule must be a tuple of ints, got {type(self.schedule).__name__}")
        schedule = [_check_int("schedule entry", s, 1, 0xFFFFFFFF) for s in self.schedule]
        return (
            self.codec,
            _check_int("quantizer_version", self.quantizer_version, 0, 255),
            _check_int("precision", self.precision, 1, 24),
            _check_int("token_count", self.token_count, 0, 1 << 48),
            _check_int("vocab_size", self.vocab_size, 1, 1 << 24),
            bytes(self.model_fingerprint),
            self.numerics_profile,
            schedule,
            bytes(self.params),
        )


@dataclass(frozen=True)
class Block:
    """A run of coded tokens: how many, the codec's bytes, and the CRC-32C of the decoded ids
    (uint32 little-endian, :func:`tokens_checksum`)."""

    n_tokens: int
    payload: bytes
    tokens_crc32c: int


class Container(NamedTuple):
    """An unpacked container. ``tokens_crc32c`` is the checksum of all decoded token ids."""

    header: Header
    blocks: list[Block]
    tokens_crc32c: int


def pack(header: Header, blocks: Sequence[Block]) -> bytes:
    """Serialises ``header`` and ``blocks``; the blocks' token counts must sum to
    ``header.token_count``. The whole-stream token checksum is derived from the blocks'."""
    if not isinstance(header, Header):
        raise InvalidInputError(f"header must be a Header, got {type(header).__name__}")
    if not isinstance(blocks, (list, tuple)):
        raise InvalidInputError(f"blocks must be a list of Block, got {type(blocks).__name__}")
    raw_blocks = []
    for b in blocks:
        if not isinstance(b, Block):
            raise InvalidInputError(f"blocks must be Block instances, got {type(b).__name__}")
        if not isinstance(b.payload, (bytes, bytearray, memoryview)):
            raise InvalidInputError("block payload must be bytes")
        raw_blocks.append(
            (
                _check_int("n_tokens", b.n_tokens, 0, 0xFFFFFFFF),
                bytes(b.payload),
                _check_int("tokens_crc32c", b.tokens_crc32c, 0, 0xFFFFFFFF),
            )
        )
    return _native.container_pack(header._fields(), raw_blocks)


def unpack(data: bytes) -> Container:
    """Parses and validates a container (see the module docs for the errors)."""
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise InvalidInputError(f"data must be bytes, got {type(data).__name__}")
    (codec, qv, precision, token_count, vocab, fingerprint, profile, schedule, params), blocks, crc = (
        _native.container_unpack(data)
    )
    header = Header(
        codec=codec,
        precision=precision,
        token_count=token_count,
        vocab_size=vocab,
        model_fingerprint=fingerprint,
        numerics_profile=profile,
        schedule=schedule,
        params=params,
        quantizer_version=qv,
    )
    return Container(header, [Block(n, p, c) for n, p, c in blocks], crc)


def combine_checksums(blocks: Sequence[Block]) -> int:
    """The checksum of all tokens implied by the blocks' checksums (what :func:`pack` stores)."""
    crc = 0
    for b in blocks:
        crc = _native.crc32c_combine(crc, b.tokens_crc32c, 4 * b.n_tokens)
    return crc
