"""The ``SQKV`` container: one header, coded blocks with checksums, and a checksum of all tokens.

Layout (format version 1) in ``docs/format.md``. :func:`unpack` validates every field and every
checksum it can check without decoding (header CRC, each block's CRC, token counts, trailing
data) and raises :class:`~seqkv.errors.CorruptStreamError` or
:class:`~seqkv.errors.FormatVersionError`; after decoding, a codec compares each block's tokens
with ``block.tokens_crc32c`` (:func:`tokens_checksum`) to catch a numerics mismatch.

:class:`Header`, :class:`Block`, :data:`CODECS` and :func:`pack` are the Rust definitions
(``rust/seqkv-coder/src/container.rs``): every field is checked once, there. ``Header.replace``
returns a copy with some fields changed.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from .. import _native
from .._native.coder import CODECS, Block, Header, pack
from ..errors import InvalidInputError
from .coder import tokens_checksum

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


class Container(NamedTuple):
    """An unpacked container. ``tokens_crc32c`` is the checksum of all decoded token ids."""

    header: Header
    blocks: list[Block]
    tokens_crc32c: int


def unpack(data: bytes) -> Container:
    """Parses and validates a container (see the module docs for the errors)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInputError(f"data must be bytes, got {type(data).__name__}")
    header, blocks, crc = _native.coder.unpack(data)
    return Container(header, blocks, crc)


def combine_checksums(blocks: Sequence[Block]) -> int:
    """The checksum of all tokens implied by the blocks' checksums (what :func:`pack` stores)."""
    crc = 0
    for b in blocks:
        crc = _native.crc32c_combine(crc, b.tokens_crc32c, 4 * b.n_tokens)
    return crc
