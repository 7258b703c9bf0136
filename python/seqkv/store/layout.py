"""Record layout 2: what a stored record costs beyond its payload.

What every record of a store shares is kept once, in the backend's ``"record-shared"`` blob
(:class:`SharedTable`): the container headers' common fields (codec, precision, vocabulary,
model fingerprint, numerics profile, codec parameters) and the KV source ids records name. A
record keeps its container **stripped** (:func:`strip`): the index of its header template, its
schedule and its blocks' counts, payloads and token checksums, as varints; :func:`expand` puts
the full ``SQKV`` container back for the codecs. Its metadata is packed by
:meth:`seqkv.store.catalog.RecordMeta.to_dict`, with the varints of :class:`Writer` /
:class:`Reader`.

The table only grows (entries are appended under the backend's atomic
:meth:`~seqkv.backends.Backend.update_blob`), so an index, once written, names the same entry for
every process.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from ..coding.container import Block, Header, pack, unpack
from ..errors import CorruptStreamError, StoreError

__all__ = ["SharedTable", "Writer", "Reader", "strip", "expand", "SHARED_BLOB"]

SHARED_BLOB = "record-shared"
_KINDS = ("headers", "sources", "profiles")


class Writer:
    """Unsigned LEB128 varints and raw bytes, appended."""

    def __init__(self) -> None:
        self.out = bytearray()

    def uint(self, value: int) -> Writer:
        if value < 0:
            raise ValueError(f"negative varint {value}")
        while value >= 0x80:
            self.out.append((value & 0x7F) | 0x80)
            value >>= 7
        self.out.append(value)
        return self

    def raw(self, data: bytes) -> Writer:
        self.out += data
        return self

    def getvalue(self) -> bytes:
        return bytes(self.out)


class Reader:
    """Reads what :class:`Writer` wrote; :class:`CorruptStreamError` past the end."""

    def __init__(self, data: bytes, what: str):
        self.data, self.pos, self.what = data, 0, what

    def uint(self) -> int:
        value = shift = 0
        while True:
            if self.pos >= len(self.data) or shift > 63:
                raise CorruptStreamError(f"{self.what}: truncated or overlong varint")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    def raw(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise CorruptStreamError(f"{self.what}: truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def rest_len(self) -> int:
        return len(self.data) - self.pos

    def rest(self) -> bytes:
        return self.raw(len(self.data) - self.pos)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise CorruptStreamError(f"{self.what}: {len(self.data) - self.pos} trailing bytes")


class SharedTable:
    """The store's append-only table of what its records share: header templates (hex of an
    empty container with the shared fields) and KV source ids, each by index."""

    def __init__(self, backend: Any):
        self._backend = backend
        self._lock = threading.Lock()
        self._entries: dict[str, list[str]] = {kind: [] for kind in _KINDS}

    def _load(self, data: bytes | None) -> dict[str, list[str]]:
        if data is None:
            return {kind: [] for kind in _KINDS}
        try:
            table = json.loads(data)
            return {kind: [str(x) for x in table.get(kind, [])] for kind in _KINDS}
        except (ValueError, TypeError, AttributeError) as exc:
            raise CorruptStreamError(f"the store's {SHARED_BLOB!r} blob is unreadable: {exc}") from None

    def refresh(self) -> None:
        """Read the table from the backend (at open). An unreadable table is a
        :class:`~seqkv.errors.StoreError`, not a reason to quarantine every record that uses it."""
        try:
            entries = self._load(self._backend.get_blob(SHARED_BLOB))
        except CorruptStreamError as exc:
            raise StoreError(f"{exc}: the store's records cannot be read without it") from None
        with self._lock:
            self._entries = entries

    def index(self, kind: str, value: str) -> int:
        """The index of ``value`` in the ``kind`` list, appended (in the backend) if new."""
        with self._lock:
            if value in self._entries[kind]:
                return self._entries[kind].index(value)

            def add(old: bytes | None) -> bytes | None:
                table = self._load(old)
                if value in table[kind]:
                    return None
                table[kind].append(value)
                return json.dumps(table, sort_keys=True, separators=(",", ":")).encode()

            update = self._backend.update_blob(SHARED_BLOB, add)
            self._entries = self._load(update.data)
            return self._entries[kind].index(value)

    def value(self, kind: str, index: int) -> str:
        """The ``kind`` entry at ``index`` (re-read from the backend when another process added it)."""
        with self._lock:
            if index >= len(self._entries[kind]):
                self._entries = self._load(self._backend.get_blob(SHARED_BLOB))
            if not 0 <= index < len(self._entries[kind]):
                raise CorruptStreamError(f"a record names {kind} entry {index}, which the store does not have")
            return self._entries[kind][index]


def _template(header: Header) -> bytes:
    return pack(header.replace(token_count=0, schedule=None), [])


def strip(container: bytes, table: SharedTable, whole_crc32c: int) -> bytes:
    """The stored form of a container: its header template's index, schedule and blocks. A single
    block leaves out what the record already says: its token count (the record's coded tokens),
    its payload's length (the rest of the bytes) and, when it equals ``whole_crc32c`` (the
    record's), its token checksum."""
    unpacked = unpack(container)
    out = Writer().uint(table.index("headers", _template(unpacked.header).hex()))
    schedule = list(unpacked.header.schedule or ())
    out.uint(len(schedule))
    for value in schedule:
        out.uint(int(value))
    blocks = unpacked.blocks
    if len(blocks) == 1:
        implied = blocks[0].tokens_crc32c == whole_crc32c
        out.uint(1 if implied else 2)
        if not implied:
            out.raw(blocks[0].tokens_crc32c.to_bytes(4, "little"))
        return out.raw(bytes(blocks[0].payload)).getvalue()
    out.uint(len(blocks) + 3)  # 3 + block count: any other number of blocks, none included
    for block in blocks:
        out.uint(block.n_tokens).uint(len(block.payload)).raw(bytes(block.payload))
        out.raw(block.tokens_crc32c.to_bytes(4, "little"))
    return out.getvalue()


def expand(stored: bytes, table: SharedTable, coded_tokens: int, whole_crc32c: int, what: str) -> bytes:
    """The full ``SQKV`` container of a stripped one (:func:`strip`) of a record that codes
    ``coded_tokens`` tokens and whose tokens' checksum is ``whole_crc32c``."""
    reader = Reader(stored, what)
    try:
        header = unpack(bytes.fromhex(table.value("headers", reader.uint()))).header
    except ValueError as exc:
        raise CorruptStreamError(f"{what}: unreadable header template ({exc})") from None
    schedule = tuple(reader.uint() for _ in range(reader.uint()))
    shape = reader.uint()
    if shape == 0:
        raise CorruptStreamError(f"{what}: bad block layout")
    if shape in (1, 2):  # one block: its checksum implied (1) or stored (2), its payload the rest
        crc = whole_crc32c if shape == 1 else int.from_bytes(reader.raw(4), "little")
        blocks = [Block(coded_tokens, reader.rest(), crc)]
    else:
        blocks = []
        for _ in range(shape - 3):
            n_tokens = reader.uint()
            payload = reader.raw(reader.uint())
            blocks.append(Block(n_tokens, payload, int.from_bytes(reader.raw(4), "little")))
    reader.end()
    try:
        full = header.replace(token_count=sum(b.n_tokens for b in blocks), schedule=schedule or None)
        return pack(full, blocks)
    except (ValueError, OverflowError) as exc:
        raise CorruptStreamError(f"{what}: {exc}") from None
