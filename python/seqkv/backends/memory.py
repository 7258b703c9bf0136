"""An in-process backend: a dict behind a lock. Nothing survives the process; for tests,
benchmarks and single-process use without persistence (``open_backend(":memory:")``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from .base import (
    Backend,
    BlobUpdate,
    SessionRecord,
    closed_error,
    counter_exhausted,
    merge_meta,
    not_found,
    require_record,
)
from .rows import decode_meta
from .validation import (
    MAX_NUMBER,
    check_after,
    check_blob_data,
    check_blob_name,
    check_blobs,
    check_callable,
    check_changes,
    check_counter_name,
    check_positive_int,
    check_reason,
    check_session_id,
    encode_meta,
)

__all__ = ["MemoryBackend"]

_Parts = tuple[bytes, bytes, bytes]  # container, canonical meta json, framed attachments


class MemoryBackend(Backend):
    """Records kept as their encoded parts, so a record comes back as the JSON round trip
    of what was stored, exactly as from the persistent backends."""

    binds_ids = True

    def __init__(self) -> None:
        self.location = "memory://"
        self._lock = threading.Lock()
        self._sessions: dict[str, _Parts] = {}
        self._quarantine: dict[str, _Parts] = {}
        self._blobs: dict[str, bytes] = {}
        self._versions: dict[str, int] = {}
        self._counters: dict[str, int] = {}
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise closed_error(self.location)

    def put(self, session_id: str, record: SessionRecord, *, blobs: Mapping[str, bytes] | None = None) -> None:
        check_session_id(session_id)
        record = require_record(record)
        parts = (record.container, record.meta_json(), record.attachments_bytes())
        new_blobs = check_blobs(blobs)
        with self._lock:
            self._check_open()
            self._sessions[session_id] = parts
            for name, data in new_blobs.items():
                self._write_blob(name, data)

    def _parts(self, session_id: str) -> _Parts:
        """The stored parts of a session; call with the lock held."""
        self._check_open()
        parts = self._sessions.get(session_id)
        if parts is None:
            raise not_found(session_id)
        return parts

    def get(self, session_id: str) -> SessionRecord:
        check_session_id(session_id)
        with self._lock:
            parts = self._parts(session_id)
        return SessionRecord.from_stored(session_id, *parts, sums=None)

    def delete(self, session_id: str) -> bool:
        check_session_id(session_id)
        with self._lock:
            self._check_open()
            return self._sessions.pop(session_id, None) is not None

    def contains(self, session_id: str) -> bool:
        check_session_id(session_id)
        with self._lock:
            self._check_open()
            return session_id in self._sessions

    def ids(self) -> list[str]:
        with self._lock:
            self._check_open()
            return sorted(self._sessions)

    def patch_meta(self, session_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        check_session_id(session_id)
        check_changes(changes)
        with self._lock:
            container, meta_json, attachments = self._parts(session_id)
            meta = merge_meta(decode_meta(meta_json, f"session {session_id!r}"), changes)
            new_json = encode_meta(meta)
            self._sessions[session_id] = (container, new_json, attachments)
        return decode_meta(new_json, f"session {session_id!r}")

    def size(self, session_id: str) -> int:
        check_session_id(session_id)
        with self._lock:
            return sum(map(len, self._parts(session_id)))

    # -- numbers and quarantine --------------------------------------------------------

    def allocate_number(self, name: str = "session", *, after: int = 0) -> int:
        check_counter_name(name)
        check_after(after)
        with self._lock:
            self._check_open()
            number = max(self._counters.get(name, 0), after) + 1
            if number > MAX_NUMBER:
                raise counter_exhausted(name)
            self._counters[name] = number
            return number

    def quarantine(self, session_id: str, *, reason: str = "") -> bool:
        check_session_id(session_id)
        check_reason(reason)
        with self._lock:
            self._check_open()
            parts = self._sessions.pop(session_id, None)
            if parts is None:
                return False
            self._quarantine[session_id] = parts
            return True

    def quarantined(self) -> list[str]:
        with self._lock:
            self._check_open()
            return sorted(self._quarantine)

    # -- blobs -------------------------------------------------------------------------

    def _write_blob(self, name: str, data: bytes | None) -> int:
        version = self._versions.get(name, 0) + 1
        self._versions[name] = version
        if data is None:
            self._blobs.pop(name, None)
        else:
            self._blobs[name] = data
        return version

    def put_blob(self, name: str, data: bytes) -> int:
        check_blob_name(name)
        data = check_blob_data(data, name)
        with self._lock:
            self._check_open()
            return self._write_blob(name, data)

    def get_blob_versioned(self, name: str) -> tuple[bytes | None, int]:
        check_blob_name(name)
        with self._lock:
            self._check_open()
            return self._blobs.get(name), self._versions.get(name, 0)

    def delete_blob(self, name: str) -> bool:
        check_blob_name(name)
        with self._lock:
            self._check_open()
            if name not in self._blobs:
                return False
            self._write_blob(name, None)
            return True

    def blob_names(self) -> list[str]:
        with self._lock:
            self._check_open()
            return sorted(self._blobs)

    def update_blob(
        self, name: str, fn: Callable[[bytes | None], bytes | None], *, max_attempts: int = 100
    ) -> BlobUpdate:
        check_blob_name(name)
        check_callable(fn, "update_blob's fn")
        check_positive_int(max_attempts, "max_attempts")
        with self._lock:
            self._check_open()
            current = self._blobs.get(name)
            new = fn(current)
            if new is None:
                return BlobUpdate(current, self._versions.get(name, 0), 1)
            new = check_blob_data(new, name)
            return BlobUpdate(new, self._write_blob(name, new), 1)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._check_open()
            total = sum(sum(map(len, parts)) for parts in self._sessions.values())
        out = super().stats()
        out["bytes"] = total
        return out

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._sessions.clear()
            self._quarantine.clear()
            self._blobs.clear()
