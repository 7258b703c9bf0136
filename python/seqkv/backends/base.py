"""The storage backend interface shared by the memory, SQLite and Redis backends.

A backend stores two kinds of things:

* **session records** (:class:`SessionRecord`) under a session id: the session's
  container bytes (a seqkv stream, see ``docs/format.md``), a JSON metadata dict
  and optional named attachments (e.g. an exact-mode residual);
* **store-level blobs** under a name, e.g. the trie snapshot (``"trie"``), each
  with a version number that grows by one on every write, so that several
  processes sharing one backend can tell cheaply whether a blob changed and can
  merge their changes with :meth:`Backend.update_blob`.

Every backend is thread-safe, is a context manager, and raises only seqkv errors:
:class:`~seqkv.errors.SessionNotFoundError` for a missing session,
:class:`~seqkv.errors.StoreError` for a failing store (unreachable, unreadable,
locked), and :class:`CorruptRecordError` (both a ``StoreError`` and a
``CorruptStreamError``) for a stored record whose bytes fail their checksum.
A call that fails changes nothing: each write is one transaction.

Metadata keys are the caller's business; the keys :class:`~seqkv.SessionStore`
writes are listed in ``docs/durability.md``. Metadata must be JSON-serialisable
(strings, numbers, booleans, ``None``, lists, dicts with string keys); it comes
back as the JSON round trip of what was stored (tuples become lists), identically
on every backend.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from ..errors import CorruptStreamError, InvalidInputError, SessionNotFoundError, StoreError

__all__ = [
    "Backend",
    "SessionRecord",
    "CorruptRecordError",
    "BlobUpdate",
    "check_session_id",
    "check_blob_name",
]

#: Longest session id or blob name accepted (in UTF-8 bytes).
MAX_NAME_BYTES = 1024

_ATTACHMENT_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class CorruptRecordError(StoreError, CorruptStreamError):
    """A stored record or blob fails its checksum or cannot be parsed (a corrupt database row).

    Subclasses both :class:`StoreError` and :class:`CorruptStreamError`, so either
    ``except`` clause catches it.
    """


@dataclass(frozen=True)
class SessionRecord:
    """What a backend stores for one session.

    ``container`` is the session's seqkv stream; ``meta`` a JSON-serialisable dict
    (token count, prefix reference, schedule, layer hashes, tier info, sizes ...);
    ``attachments`` named extra byte strings stored and deleted with the session
    (names: letters, digits and ``_ . : -``, at most 128 characters).
    """

    container: bytes
    meta: Mapping[str, Any] = field(default_factory=dict)
    attachments: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.container, (bytes, bytearray, memoryview)):
            raise InvalidInputError(
                f"SessionRecord.container must be bytes, not {type(self.container).__name__}"
            )
        object.__setattr__(self, "container", bytes(self.container))
        if not isinstance(self.meta, Mapping):
            raise InvalidInputError(f"SessionRecord.meta must be a dict, not {type(self.meta).__name__}")
        if not isinstance(self.attachments, Mapping):
            raise InvalidInputError(
                f"SessionRecord.attachments must be a dict, not {type(self.attachments).__name__}"
            )
        attachments: dict[str, bytes] = {}
        for name, data in self.attachments.items():
            if not isinstance(name, str) or not _ATTACHMENT_NAME.match(name):
                raise InvalidInputError(
                    f"attachment name {name!r} is invalid: use 1-128 letters, digits or '_.:-'"
                )
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise InvalidInputError(f"attachment {name!r} must be bytes, not {type(data).__name__}")
            attachments[name] = bytes(data)
        object.__setattr__(self, "attachments", attachments)

    # -- the on-disk encoding shared by every backend ---------------------------------

    def meta_json(self) -> bytes:
        """The canonical JSON encoding of ``meta`` (sorted keys, compact, UTF-8)."""
        return encode_meta(self.meta)

    def attachments_bytes(self) -> bytes:
        """``attachments`` framed as one byte string (empty when there are none)."""
        return encode_attachments(self.attachments)

    def data_crc(self) -> int:
        """CRC-32 over the container and the framed attachments (stored beside them)."""
        return data_crc(self.container, self.attachments_bytes())

    @property
    def nbytes(self) -> int:
        """Bytes this record occupies in a backend (container + metadata + attachments)."""
        return len(self.container) + len(self.meta_json()) + len(self.attachments_bytes())

    @classmethod
    def from_stored(
        cls,
        session_id: str,
        container: bytes,
        meta_json: bytes,
        attachments: bytes,
        *,
        data_crc: int | None,
        meta_crc: int | None,
    ) -> SessionRecord:
        """Rebuild a record from its stored parts, checking both checksums (``None`` skips one);
        a corrupt part raises :class:`CorruptRecordError` naming the session."""
        check_data_crc(session_id, container, attachments, data_crc)
        check_meta_crc(session_id, meta_json, meta_crc)
        where = f"session {session_id!r}"
        meta = decode_meta(meta_json, where)
        return cls(container=container, meta=meta, attachments=decode_attachments(attachments, where))


@dataclass(frozen=True)
class BlobUpdate:
    """The outcome of :meth:`Backend.update_blob`: the bytes written (or kept) and their version."""

    data: bytes | None
    version: int
    attempts: int


def encode_meta(meta: Mapping[str, Any]) -> bytes:
    try:
        text = json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"session metadata is not JSON-serialisable: {exc}") from None
    return text.encode("utf-8")


def decode_meta(data: bytes | str, where: str) -> dict[str, Any]:
    try:
        meta = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptRecordError(f"{where}: stored metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CorruptRecordError(f"{where}: stored metadata is a JSON {type(meta).__name__}, not an object")
    return meta


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


def data_crc(container: bytes, attachments: bytes) -> int:
    crc = zlib.crc32(struct.pack("<QQ", len(container), len(attachments)))
    return zlib.crc32(attachments, zlib.crc32(container, crc))


def meta_crc(meta_json: bytes) -> int:
    return zlib.crc32(meta_json)


def check_data_crc(session_id: str, container: bytes, attachments: bytes, crc: int | None) -> None:
    if crc is not None and data_crc(container, attachments) != crc:
        raise CorruptRecordError(
            f"session {session_id!r}: stored container fails its CRC-32 (corrupt database row)"
        )


def check_meta_crc(session_id: str, meta_json: bytes, crc: int | None) -> None:
    if crc is not None and meta_crc(meta_json) != crc:
        raise CorruptRecordError(
            f"session {session_id!r}: stored metadata fails its CRC-32 (corrupt database row)"
        )


def blob_crc(data: bytes) -> int:
    return zlib.crc32(data)


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidInputError(f"{what} must not be empty")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInputError(f"{what} {value!r} is not valid Unicode text") from None
    if size > MAX_NAME_BYTES:
        raise InvalidInputError(f"{what} is {size} bytes long; the limit is {MAX_NAME_BYTES}")
    if "\x00" in value:
        raise InvalidInputError(f"{what} {value!r} contains a NUL character")
    return value


def check_session_id(session_id: object) -> str:
    return _check_name(session_id, "session id")


def check_blob_name(name: object) -> str:
    return _check_name(name, "blob name")


def check_blob_data(data: object, name: str) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInputError(f"blob {name!r} must be bytes, not {type(data).__name__}")
    return bytes(data)


class Backend(ABC):
    """Where session records and store-level blobs live. See the module docstring."""

    #: A short URL-like description of where the data lives (no credentials).
    location: str = ""

    # -- sessions ----------------------------------------------------------------------

    @abstractmethod
    def put(
        self,
        session_id: str,
        record: SessionRecord,
        *,
        blobs: Mapping[str, bytes] | None = None,
    ) -> None:
        """Store ``record`` under ``session_id``, replacing any previous record, and write
        ``blobs`` (e.g. an updated trie snapshot) in the same transaction: either all of it
        is stored or none. When ``put`` returns, the write is durable as the backend's
        contract says (``docs/durability.md``)."""

    @abstractmethod
    def get(self, session_id: str) -> SessionRecord:
        """The record stored under ``session_id``; :class:`SessionNotFoundError` if none."""

    @abstractmethod
    def delete(self, session_id: str) -> bool:
        """Remove the session and its attachments; ``True`` if it existed."""

    @abstractmethod
    def contains(self, session_id: str) -> bool:
        """Whether a record is stored under ``session_id``."""

    @abstractmethod
    def ids(self) -> list[str]:
        """Every stored session id, sorted."""

    @abstractmethod
    def patch_meta(self, session_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Atomically merge ``changes`` into the session's metadata (a key mapped to ``None``
        is removed) and return the new metadata. The container is not rewritten.
        :class:`SessionNotFoundError` if the session is absent."""

    def get_meta(self, session_id: str) -> dict[str, Any]:
        """The session's metadata alone (checksummed), without reading its container."""
        return dict(self.get(session_id).meta)

    def size(self, session_id: str) -> int:
        """Bytes the session's record occupies (container + metadata + attachments)."""
        return self.get(session_id).nbytes

    # -- blobs -------------------------------------------------------------------------

    @abstractmethod
    def put_blob(self, name: str, data: bytes) -> int:
        """Store ``data`` under ``name`` and return its new version (1 for the first write)."""

    @abstractmethod
    def get_blob_versioned(self, name: str) -> tuple[bytes | None, int]:
        """``(data, version)``; ``(None, 0)`` when no blob of that name was ever written
        (a deleted blob keeps counting: ``(None, last_version + 1)``)."""

    @abstractmethod
    def delete_blob(self, name: str) -> bool:
        """Remove the blob; ``True`` if it existed."""

    @abstractmethod
    def blob_names(self) -> list[str]:
        """Names of the stored blobs, sorted."""

    @abstractmethod
    def update_blob(
        self, name: str, fn: Callable[[bytes | None], bytes | None], *, max_attempts: int = 100
    ) -> BlobUpdate:
        """Read-modify-write a blob atomically with respect to every other writer of this
        backend, in any process: ``fn(current)`` returns the new bytes (``None`` keeps the
        blob as it is). ``fn`` may be called more than once when another writer wins a race,
        so it must be a pure function of its argument. This is how several processes merge
        their changes to a shared trie snapshot: ``lambda old: merged(old, mine)``."""

    def get_blob(self, name: str) -> bytes | None:
        """The blob's bytes, or ``None`` when absent."""
        return self.get_blob_versioned(name)[0]

    def blob_version(self, name: str) -> int:
        """The blob's current version (0 if never written); cheap on every backend."""
        return self.get_blob_versioned(name)[1]

    # -- lifecycle and conveniences ----------------------------------------------------

    @abstractmethod
    def close(self) -> None:
        """Release connections and files. Idempotent; later calls raise :class:`StoreError`."""

    def stats(self) -> dict[str, Any]:
        """Counts and sizes of what is stored; backends add their own keys."""
        ids = self.ids()
        return {
            "backend": type(self).__name__,
            "location": self.location,
            "sessions": len(ids),
            "blobs": self.blob_names(),
        }

    def __contains__(self, session_id: object) -> bool:
        return isinstance(session_id, str) and bool(session_id) and self.contains(session_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    def __len__(self) -> int:
        return len(self.ids())

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location}>"


def merge_meta(meta: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(meta)
    for key, value in changes.items():
        if not isinstance(key, str):
            raise InvalidInputError(f"metadata keys must be str, not {type(key).__name__}")
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def not_found(session_id: str) -> SessionNotFoundError:
    return SessionNotFoundError(f"no session {session_id!r} in the store")


def closed_error(location: str) -> StoreError:
    return StoreError(f"the store {location} is closed")
