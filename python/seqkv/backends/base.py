"""The storage backend interface shared by the memory, SQLite and Redis backends.

A backend stores two kinds of things:

* **session records** (:class:`SessionRecord`) under a session id: the session's
  container bytes (a seqkv stream, see ``docs/format.md``), a JSON metadata dict
  and optional named attachments (e.g. an exact-mode residual);
* **store-level blobs** under a name, e.g. the trie snapshot (``"trie"``), each
  with a version number that grows by one on every write, so that several
  processes sharing one backend can tell cheaply whether a blob changed and can
  merge their changes with :meth:`Backend.update_blob`;
* **counters** (:meth:`Backend.allocate_number`): numbers never handed out twice;
* **quarantined records** (:meth:`Backend.quarantine`): corrupt records moved out of the way.

Every backend is thread-safe, is a context manager, and raises only seqkv errors:
:class:`~seqkv.errors.InvalidInputError` for a bad argument (checked before anything is
written), :class:`~seqkv.errors.SessionNotFoundError` for a missing session,
:class:`~seqkv.errors.StoreError` for a failing store (unreachable, unreadable,
locked, timed out), and :class:`CorruptRecordError` (both a ``StoreError`` and a
``CorruptStreamError``) for a stored record whose bytes fail their checksum, or that
was stored under another session id. A call that fails changes nothing: each write is
one transaction.

Metadata keys are the caller's business; the keys :class:`~seqkv.SessionStore`
writes are listed in ``docs/durability.md``. Metadata is a JSON-serialisable dict
(strings, numbers, booleans, ``None``, lists, dicts with string keys), which comes
back as the JSON round trip of what was stored (tuples become lists), or binary
metadata (non-empty ``bytes``, stored and returned as they are), identically on every
backend.
"""

from __future__ import annotations

import re

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from ..errors import InvalidInputError, SessionNotFoundError, StoreError
from .rows import (
    CorruptRecordError,
    RowChecksums,
    check_data,
    check_meta,
    checksums,
    decode_attachments,
    decode_meta,
    encode_attachments,
)
from .validation import MAX_NAME_BYTES, MAX_NUMBER, check_blob_name, check_session_id, encode_meta

__all__ = [
    "Backend",
    "SessionRecord",
    "CorruptRecordError",
    "BlobUpdate",
    "MetaScan",
    "MAX_NAME_BYTES",
    "check_session_id",
    "check_blob_name",
]

_ATTACHMENT_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


@dataclass(frozen=True)
class SessionRecord:
    """What a backend stores for one session.

    ``container`` is the session's seqkv stream; ``meta`` a JSON-serialisable dict
    (token count, prefix reference, schedule, layer hashes, tier info, sizes ...) or
    non-empty ``bytes``, binary metadata the backend stores as it is;
    ``attachments`` named extra byte strings stored and deleted with the session
    (names: letters, digits and ``_ . : -``, at most 128 characters).
    """

    container: bytes
    meta: Mapping[str, Any] | bytes = field(default_factory=dict)
    attachments: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.container, (bytes, bytearray, memoryview)):
            raise InvalidInputError(
                f"SessionRecord.container must be bytes, not {type(self.container).__name__}"
            )
        object.__setattr__(self, "container", bytes(self.container))
        if isinstance(self.meta, (bytes, bytearray)):
            object.__setattr__(self, "meta", bytes(self.meta))
        elif not isinstance(self.meta, Mapping):
            raise InvalidInputError(f"SessionRecord.meta must be a dict or bytes, not {type(self.meta).__name__}")
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

    # -- the stored encoding shared by every backend ----------------------------------

    def meta_json(self) -> bytes:
        """The canonical JSON encoding of ``meta`` (sorted keys, compact, UTF-8);
        :class:`InvalidInputError` when ``meta`` is not JSON (see :func:`validation.encode_meta`)."""
        return encode_meta(self.meta)

    def attachments_bytes(self) -> bytes:
        """``attachments`` framed as one byte string (empty when there are none)."""
        return encode_attachments(self.attachments)

    def encoded(self, session_id: str) -> tuple[bytes, bytes, RowChecksums]:
        """``(meta_json, attachments_bytes, checksums)`` to store this record under ``session_id``
        in the current row format (checksums bound to the id)."""
        meta_json, attachments = self.meta_json(), self.attachments_bytes()
        return meta_json, attachments, checksums(session_id, self.container, meta_json, attachments)

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
        sums: RowChecksums | None,
    ) -> SessionRecord:
        """Rebuild a record from its stored parts, checking its checksums (``None``: a backend
        that keeps none); a corrupt part, or a row of another session, raises
        :class:`CorruptRecordError` naming the session."""
        if sums is not None:
            check_data(session_id, container, attachments, sums)
            check_meta(session_id, meta_json, sums)
        where = f"session {session_id!r}"
        meta = decode_meta(meta_json, where)
        return cls(container=container, meta=meta, attachments=decode_attachments(attachments, where))


def require_record(record: object) -> SessionRecord:
    if not isinstance(record, SessionRecord):
        raise InvalidInputError(f"expected a SessionRecord, not {type(record).__name__}")
    return record


@dataclass(frozen=True)
class BlobUpdate:
    """The outcome of :meth:`Backend.update_blob`: the bytes written (or kept) and their version."""

    data: bytes | None
    version: int
    attempts: int


@dataclass(frozen=True)
class MetaScan:
    """The outcome of :meth:`Backend.scan_meta`: the metadata of every live session whose
    metadata passes its checksum, and the ids (with the reason) of those that do not."""

    meta: dict[str, dict[str, Any] | bytes]
    corrupt: dict[str, str]


class Backend(ABC):
    """Where session records and store-level blobs live. See the module docstring."""

    #: A short URL-like description of where the data lives (no credentials).
    location: str = ""
    #: Whether a record read under an id is always one that was put under that id (rows
    #: checksummed with their id, or kept in this process), so records need not carry their id.
    binds_ids: bool = False

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
        is stored or none. A replacement is atomic: until it commits every reader gets the
        previous record, afterwards the new one, never neither and never a mix. When ``put``
        returns, the write is durable as the backend's contract says (``docs/durability.md``);
        when it raises, nothing was written."""

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

    # -- numbers, quarantine, scans -----------------------------------------------------

    @abstractmethod
    def allocate_number(self, name: str = "session", *, after: int = 0) -> int:
        """The next number of the persistent counter ``name``: greater than ``after`` and than
        every number this counter handed out before, to any thread or process sharing the
        backend. Numbers are never handed out twice, whatever was deleted, cleared or
        reopened in between (a number whose caller failed is skipped, not reused).
        ``after`` lets a store that numbered records before the counter existed start past
        its largest number."""

    @abstractmethod
    def quarantine(self, session_id: str, *, reason: str = "") -> bool:
        """Move the session's record, as stored (corrupt or not), out of the live set into
        quarantine: :meth:`ids`, :meth:`get` and :meth:`scan_meta` no longer see it, and a
        new ``put`` of the id starts afresh. Quarantine keeps the latest record moved there
        per id. ``True`` if a live record was moved."""

    @abstractmethod
    def quarantined(self) -> list[str]:
        """The ids of the records in quarantine, sorted."""

    def scan_meta(self) -> MetaScan:
        """Every live session's metadata, checked against its checksum only (containers are
        not read), and the ids whose metadata is corrupt, with the reason; what a store
        reads at open to find the records it must quarantine."""
        scan = MetaScan({}, {})
        for session_id in self.ids():
            try:
                scan.meta[session_id] = self.get_meta(session_id)
            except SessionNotFoundError:
                continue  # deleted while scanning
            except CorruptRecordError as exc:
                scan.corrupt[session_id] = str(exc)
        return scan

    def get_meta(self, session_id: str) -> dict[str, Any] | bytes:
        """The session's metadata alone (checksummed), without reading its container."""
        meta = self.get(session_id).meta
        return meta if isinstance(meta, bytes) else dict(meta)

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
            "quarantined": len(self.quarantined()),
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


def merge_meta(meta: Mapping[str, Any] | bytes, changes: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(meta, Mapping):
        raise InvalidInputError("binary session metadata cannot be patched: put the record again")
    out = dict(meta)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def not_found(session_id: str) -> SessionNotFoundError:
    return SessionNotFoundError(f"no session {session_id!r} in the store")


def closed_error(location: str) -> StoreError:
    return StoreError(f"the store {location} is closed")


def counter_exhausted(name: str) -> StoreError:
    return StoreError(f"counter {name!r} has handed out every number up to {MAX_NUMBER}")
