"""llama.cpp slot files (``ggsq``): read, write and hash them.

A slot file is what ``POST /slots/{id}?action=save`` writes (``llama_state_seq_save_file`` in
llama.cpp's ``src/llama-context.cpp``), little-endian::

    u32 magic    0x67677371 ('ggsq', LLAMA_STATE_SEQ_MAGIC)
    u32 version  3          (LLAMA_STATE_SEQ_VERSION)
    u32 n_words
    i32 words[n_words]      the token area (below)
    ...                     the sequence's KV state (cells, positions, per-layer K and V rows)

The token area is either the slot's token ids (older servers) or llama-server's token state
(``server_tokens::serialize`` in ``tools/server/server-common.cpp``, the vendored 0.3.36 tree)::

    i32 -1 (LLAMA_TOKEN_NULL: the marker)  u32 1 (its version)  u32 n  i32 tokens[n]
    u32 n_media  (then the media chunks; 0 for a text-only slot)

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
_STATE_MARKER = -1
_STATE_VERSION = 1


@dataclass(frozen=True, eq=False)
class SlotFile:
    """A parsed slot file: the cached token ids and the KV state bytes that follow them;
    ``server_state`` says the token area is llama-server's token state, not a plain list."""

    tokens: np.ndarray  # uint32
    kv: bytes
    server_state: bool = False

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SlotFile) and np.array_equal(self.tokens, other.tokens) and self.kv == other.kv
                and self.server_state == other.server_state)

    __hash__ = None  # type: ignore[assignment]

    @property
    def kv_sha256(self) -> str:
        return hashlib.sha256(self.kv).hexdigest()

    def to_bytes(self) -> bytes:
        words = self.tokens.astype("<i4")
        if self.server_state:
            words = np.concatenate([[_STATE_MARKER, _STATE_VERSION, words.size], words, [0]]).astype("<i4")
        return _HEADER.pack(SLOT_MAGIC, SLOT_VERSION, int(words.size)) + words.tobytes() + self.kv


def parse_slot_bytes(data: bytes, where: str = "slot file") -> SlotFile:
    """Parse a slot file's bytes; :class:`CorruptStreamError` for a truncated or foreign file,
    :class:`FormatVersionError` for another state version."""
    if len(data) < _HEADER.size:
        raise CorruptStreamError(f"{where}: {len(data)} bytes is shorter than the ggsq header")
    magic, version, n_words = _HEADER.unpack_from(data)
    if magic != SLOT_MAGIC:
        raise CorruptStreamError(f"{where}: magic {magic:#010x} is not ggsq ({SLOT_MAGIC:#010x})")
    if version != SLOT_VERSION:
        raise FormatVersionError(f"{where}: ggsq version {version}, this reader knows {SLOT_VERSION}")
    end = _HEADER.size + 4 * n_words
    if end > len(data):
        raise CorruptStreamError(f"{where}: claims {n_words} token words but holds {len(data)} bytes")
    words = np.frombuffer(data, dtype="<i4", count=n_words, offset=_HEADER.size)
    server_state = bool(words.size) and int(words[0]) == _STATE_MARKER
    ids = _server_state_tokens(words, where) if server_state else words
    if ids.size and int(ids.min()) < 0:
        raise CorruptStreamError(f"{where}: negative token id (a multimodal placeholder?)")
    return SlotFile(tokens=ids.astype(np.uint32), kv=bytes(data[end:]), server_state=server_state)


def _server_state_tokens(words: np.ndarray, where: str) -> np.ndarray:
    """The token ids of llama-server's token state (see the module docstring)."""
    if words.size < 4:
        raise CorruptStreamError(f"{where}: llama-server token state of {words.size} words is truncated")
    if int(words[1]) != _STATE_VERSION:
        raise FormatVersionError(f"{where}: llama-server token state version {int(words[1])}, this reader knows 1")
    n = int(words[2])
    if n < 0 or 3 + n + 1 > words.size:
        raise CorruptStreamError(f"{where}: llama-server token state claims {n} tokens in {words.size} words")
    if int(words[3 + n]) != 0:
        raise InvalidInputError(f"{where}: the slot holds media chunks (multimodal), which seqkv does not read")
    if words.size != 3 + n + 1:
        raise CorruptStreamError(f"{where}: {words.size - (3 + n + 1)} words after llama-server's token state")
    return words[3: 3 + n]


def read_slot_file(path: str | os.PathLike[str]) -> SlotFile:
    return parse_slot_bytes(Path(path).read_bytes(), where=str(path))


def write_slot_file(path: str | os.PathLike[str], slot: SlotFile) -> None:
    if slot.tokens.ndim != 1:
        raise InvalidInputError("slot tokens must be one-dimensional")
    Path(path).write_bytes(slot.to_bytes())


def kv_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a slot file's KV region: equal hashes mean bit-identical KV."""
    return read_slot_file(path).kv_sha256
