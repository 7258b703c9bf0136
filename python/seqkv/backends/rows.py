"""How a session record is laid out and checksummed in a persistent backend (SQLite rows,
Redis hashes), in both row formats:

* **format 1** (SQLite schema 1, the Redis layout before namespaces were encoded): a CRC-32
  of the container + attachments and one of the metadata, each over its own bytes only. A
  row copied under another id passes them.
* **format 2** (what every write produces now): both CRC-32s also cover the session id, and
  the metadata CRC covers the data CRC, so a row (or its metadata alone) moved to another
  id, or metadata paired with another version's container, fails on read.

Rows of format 1 stay readable (checked as they were written) until they are rewritten.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import CorruptStreamError, StoreError
from .validation import BINARY_META_TAG

__all__ = [
    "CorruptRecordError",
    "ROW_FORMAT",
    "ROW_FORMATS",
    "RowChecksums",
    "encode_attachments",
    "decode_attachments",
    "decode_meta",
    "checksums",
    "rechecksum_meta",
    "check_data",
    "check_meta",
    "blob_crc",
]

#: The row format every write produces.
ROW_FORMAT = 2
#: The row formats this code reads.
ROW_FORMATS = (1, 2)


class CorruptRecordError(StoreError, CorruptStreamError):
    """A stored record or blob fails its checksum or cannot be parsed (a corrupt database row).

    Subclasses both :class:`StoreError` and :class:`CorruptStreamError`, so either
    ``except`` clause catches it.
    """


@dataclass(frozen=True)
class RowChecksums:
    """The checksums stored beside a record's parts, and the row format they follow."""

    data_crc: int
    meta_crc: int
    fmt: int = ROW_FORMAT


def encode_attachments(attachments: Mapping[str, bytes]) -> bytes:
    """Frame as: u32 count, then per attachment (sorted by name) u16 name length, name, u64 length, data."""
    if not attachments:
        return b""
    parts = [struct.pack("<I", len(attachments))]
    for name in sorted(attachments):
        raw = name.encode("utf-8")
        data = attachments[name]
        parts += [struct.pack("<H", len(raw)), raw, struct.pack("<Q", len(data)), data]
    return b"".join(parts)


def decode_attachments(data: bytes, where: str) -> dict[str, bytes]:
    if not data:
        return {}
    try:
        (count,) = struct.unpack_from("<I", data, 0)
        pos = 4
        out: dict[str, bytes] = {}
        for _ in range(count):
            (name_len,) = struct.unpack_from("<H", data, pos)
            pos += 2
            name = data[pos : pos + name_len].decode("utf-8")
            pos += name_len
            (size,) = struct.unpack_from("<Q", data, pos)
            pos += 8
            if pos + size > len(data):
                raise ValueError("attachment runs past the end")
            out[name] = bytes(data[pos : pos + size])
            pos += size
        if pos != len(data):
            raise ValueError(f"{len(data) - pos} trailing bytes")
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise CorruptRecordError(f"{where}: stored attachments are malformed ({exc})") from None
    return out


def decode_meta(data: bytes | str, where: str) -> dict[str, Any] | bytes:
    """Metadata as :func:`~seqkv.backends.validation.encode_meta` stored it: a dict, or the
    binary metadata's bytes."""
    if isinstance(data, (bytes, bytearray)) and data[:1] == BINARY_META_TAG:
        if len(data) == 1:
            raise CorruptRecordError(f"{where}: stored binary metadata is empty")
        return bytes(data[1:])
    try:
        meta = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptRecordError(f"{where}: stored metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CorruptRecordError(f"{where}: stored metadata is a JSON {type(meta).__name__}, not an object")
    return meta


def _id_frame(session_id: str) -> bytes:
    raw = session_id.encode("utf-8")
    return struct.pack("<I", len(raw)) + raw


def _data_crc(session_id: str, container: bytes, attachments: bytes, fmt: int) -> int:
    crc = zlib.crc32(_id_frame(session_id)) if fmt >= 2 else 0
    crc = zlib.crc32(struct.pack("<QQ", len(container), len(attachments)), crc)
    return zlib.crc32(attachments, zlib.crc32(container, crc))


def _meta_crc(session_id: str, meta_json: bytes, data_crc: int, fmt: int) -> int:
    if fmt < 2:
        return zlib.crc32(meta_json)
    return zlib.crc32(meta_json, zlib.crc32(struct.pack("<I", data_crc & 0xFFFFFFFF), zlib.crc32(_id_frame(session_id))))


def checksums(session_id: str, container: bytes, meta_json: bytes, attachments: bytes, fmt: int = ROW_FORMAT) -> RowChecksums:
    """The checksums to store for a record of ``session_id`` in row format ``fmt``."""
    dcrc = _data_crc(session_id, container, attachments, fmt)
    return RowChecksums(dcrc, _meta_crc(session_id, meta_json, dcrc, fmt), fmt)


def rechecksum_meta(session_id: str, meta_json: bytes, sums: RowChecksums) -> RowChecksums:
    """``sums`` with the metadata CRC of new metadata, in the row's own format (the container
    is unchanged, so its CRC and the row format stay)."""
    return RowChecksums(sums.data_crc, _meta_crc(session_id, meta_json, sums.data_crc, sums.fmt), sums.fmt)


def check_format(session_id: str, fmt: object) -> int:
    if not isinstance(fmt, int) or fmt not in ROW_FORMATS:
        raise CorruptRecordError(f"session {session_id!r}: stored row has an unknown row format {fmt!r}")
    return fmt


def check_data(session_id: str, container: bytes, attachments: bytes, sums: RowChecksums) -> None:
    if _data_crc(session_id, container, attachments, check_format(session_id, sums.fmt)) != sums.data_crc:
        raise CorruptRecordError(
            f"session {session_id!r}: stored container fails its CRC-32 (corrupt database row, "
            "or a row of another session)"
        )


def check_meta(session_id: str, meta_json: bytes, sums: RowChecksums) -> None:
    if _meta_crc(session_id, meta_json, sums.data_crc, check_format(session_id, sums.fmt)) != sums.meta_crc:
        raise CorruptRecordError(
            f"session {session_id!r}: stored metadata fails its CRC-32 (corrupt database row, "
            "or a row of another session)"
        )


def blob_crc(data: bytes) -> int:
    return zlib.crc32(data)
