"""llama.cpp slot files (``ggsq``): read, write and hash them.

A slot file is what ``POST /slots/{id}?action=save`` writes (``llama_state_seq_save_file`` in
llama.cpp's ``src/llama-context.cpp``), little-endian::

    u32 magic    0x67677371 ('ggsq', LLAMA_STATE_SEQ_MAGIC)
    u32 version  3          (LLAMA_STATE_SEQ_VERSION)
    u32 n_tokens
    i32 tokens[n_tokens]    the slot's cached token ids
    ...                     the sequence's KV state (cells, positions, per-layer K and V rows)

The KV state is opaque here: it is hashed (:func:`kv_sha256`), which is how a restore is
certified exact, and copied through unchanged.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CorruptStreamError, FormatVersionError, InvalidInputError

__all__ = ["SLOT_MAGIC", "SLOT_VERSION", "SlotFile", "read_slot_file", "write_slot_file", "kv_sha256"]

SLOT_MAGIC = 0x67677371
SLOT_VERSION = 3
_HEADER = struct.Struct("<III")


@dataclass(frozen=True, eq=False)
class SlotFile:
    """A parsed slot file: the cached token ids and the KV state bytes that follow them."""

    tokens: np.ndarray  # uint32
    kv: bytes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SlotFile) and np.array_equal(self.tokens, other.tokens) and self.kv == other.kv

    __hash__ = None  # type: ignore[assignment]

    @property
    def kv_sha256(self) -> str:
        return hashlib.sha256(self.kv).hexdigest()

    def to_bytes(self) -> bytes:
        header = _HEADER.pack(SLOT_MAGIC, SLOT_VERSION, int(self.tokens.size))
        return header + self.tokens.astype("<i4").tobytes() + self.kv


def parse_slot_bytes(data: bytes, where: str = "slot file") -> SlotFile:
    """Parse a slot file's bytes; :class:`CorruptStreamError` for a truncated or foreign file,
    :class:`FormatVersionError` for another state version."""
    if len(data) < _HEADER.size:
        raise CorruptStreamError(f"{where}: {len(data)} bytes is shorter than the ggsq header")
    magic, version, n_tokens = _HEADER.unpack_from(data)
    if magic != SLOT_MAGIC:
        raise CorruptStreamError(f"{where}: magic {magic:#010x} is not ggsq ({SLOT_MAGIC:#010x})")
    if version != SLOT_VERSION:
        raise FormatVersionError(f"{where}: ggsq version {version}, this reader knows {SLOT_VERSION}")
    end = _HEADER.size + 4 * n_tokens
    if end > len(data):
        raise CorruptStreamError(f"{where}: claims {n_tokens} tokens but holds {len(data)} bytes")
    ids = np.frombuffer(data, dtype="<i4", count=n_tokens, offset=_HEADER.size)
    if ids.size and int(ids.min()) < 0:
        raise CorruptStreamError(f"{where}: negative token id (a multimodal placeholder?)")
    return SlotFile(tokens=ids.astype(np.uint32), kv=bytes(data[end:]))


def read_slot_file(path: str | os.PathLike[str]) -> SlotFile:
    return parse_slot_bytes(Path(path).read_bytes(), where=str(path))


def write_slot_file(path: str | os.PathLike[str], slot: SlotFile) -> None:
    if slot.tokens.ndim != 1:
        raise InvalidInputError("slot tokens must be one-dimensional")
    Path(path).write_bytes(slot.to_bytes())


def kv_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a slot file's KV region: equal hashes mean bit-identical KV."""
    return read_slot_file(path).kv_sha256
