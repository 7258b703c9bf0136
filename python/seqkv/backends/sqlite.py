"""The embedded default backend: one SQLite file (stdlib ``sqlite3``) in WAL mode.

Durability (``docs/durability.md``): every write is one ``BEGIN IMMEDIATE`` ...
``COMMIT`` transaction, and with ``synchronous=FULL`` (the default) ``COMMIT``
returns only after the write-ahead log has been fsynced. So once :meth:`put`
returns, the record survives the process being killed (SIGKILL, OOM killer) and
the machine losing power. ``synchronous=NORMAL`` (``sqlite:///path?synchronous=normal``)
skips that fsync: still safe against a killed process, since the WAL is in the
OS page cache, but the last commits can be lost on power failure.

Every row carries CRC-32s of its container/attachments and of its metadata, both bound to
the session id (row format 2, :mod:`seqkv.backends.rows`); a row that fails them raises
:class:`~seqkv.backends.base.CorruptRecordError`. Session numbers come from a counter table
incremented inside the same kind of transaction, so processes sharing the file never get
the same number. A file that is not a SQLite database, or a database of another application,
raises :class:`~seqkv.errors.StoreError` at open; a file of schema 1 is upgraded in place
(its rows keep their format-1 checksums until rewritten).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import FormatVersionError, InvalidInputError, StoreError
from .base import (
    Backend,
    BlobUpdate,
    MetaScan,
    SessionRecord,
    closed_error,
    counter_exhausted,
    merge_meta,
    not_found,
    require_record,
)
from .rows import CorruptRecordError, RowChecksums, blob_crc, check_meta, decode_meta, rechecksum_meta
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
    check_timeout,
    encode_meta,
)

__all__ = ["SQLiteBackend", "APPLICATION_ID", "SCHEMA_VERSION"]

#: ``PRAGMA application_id`` of a seqkv store: the bytes "SQKV".
APPLICATION_ID = 0x53514B56
#: ``PRAGMA user_version``: the schema version this code writes (2: row formats, counters,
#: quarantine; a schema-1 file is upgraded at open).
SCHEMA_VERSION = 2

# The metadata columns come before the container, so that reading the metadata of every
# row (scan_meta) does not walk the containers' overflow pages. Schema-1 files upgraded in
# place keep their old column order; every statement names its columns.
_SCHEMA = """
CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    meta        BLOB NOT NULL,     -- canonical JSON, UTF-8
    meta_crc    INTEGER NOT NULL,  -- CRC-32 of meta (row format 2: and of the id and data_crc)
    data_crc    INTEGER NOT NULL,  -- CRC-32 of container + attachments (row format 2: and of the id)
    row_format  INTEGER NOT NULL DEFAULT 1,
    updated_at  REAL NOT NULL,
    container   BLOB NOT NULL,
    attachments BLOB NOT NULL      -- framed named byte strings (empty: none)
);
CREATE TABLE blobs (
    name       TEXT PRIMARY KEY,
    data       BLOB,               -- NULL once deleted (the version keeps counting)
    crc        INTEGER,
    version    INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
"""

_SCHEMA_2_ADDITIONS = """
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL         -- the last number handed out
);
CREATE TABLE quarantine (          -- a sessions row as it was when quarantined
    id             TEXT PRIMARY KEY,
    meta           BLOB,
    meta_crc       INTEGER,
    data_crc       INTEGER,
    row_format     INTEGER,
    updated_at     REAL,
    container      BLOB,
    attachments    BLOB,
    reason         TEXT NOT NULL,
    quarantined_at REAL NOT NULL
);
"""

_UPGRADE_1_TO_2 = "ALTER TABLE sessions ADD COLUMN row_format INTEGER NOT NULL DEFAULT 1;" + _SCHEMA_2_ADDITIONS

_ROW_COLUMNS = "id, meta, meta_crc, data_crc, row_format, updated_at, container, attachments"
_META_COLUMNS = "meta, data_crc, meta_crc, row_format"

_SYNC_MODES = {"full": "FULL", "normal": "NORMAL", "extra": "EXTRA"}


def _as_bytes(where: str, value: object) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise CorruptRecordError(f"{where}: stored row is malformed (a {type(value).__name__} column)")


def _sums(session_id: str, data_crc: object, meta_crc: object, row_format: object) -> RowChecksums:
    if not all(isinstance(v, int) for v in (data_crc, meta_crc, row_format)):
        raise CorruptRecordError(f"session {session_id!r}: stored checksums are not integers")
    return RowChecksums(int(data_crc), int(meta_crc), int(row_format))  # type: ignore[call-overload]


def _execute_script(con: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            con.execute(statement)


class SQLiteBackend(Backend):
    """A seqkv store in one SQLite file; see the module docstring for the durability contract.

    ``synchronous`` is ``"full"`` (default: durable against power loss) or ``"normal"``
    (durable against a killed process only). ``busy_timeout_s`` is how long a write waits
    for another process's write lock before raising :class:`StoreError`.
    """

    binds_ids = True

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "full", busy_timeout_s: float = 30.0):
        mode = _SYNC_MODES.get(synchronous.lower()) if isinstance(synchronous, str) else None
        if mode is None:
            raise InvalidInputError(f"synchronous must be one of {sorted(_SYNC_MODES)}, not {synchronous!r}")
        busy_timeout_s = check_timeout(busy_timeout_s, "busy_timeout_s")
        if not isinstance(path, (str, os.PathLike)) or "\x00" in os.fspath(path):
            raise InvalidInputError(f"a SQLite store path must be a str or path without NUL, not {path!r}")
        self.path = Path(path)
        self.location = f"sqlite://{self.path}"
        self.synchronous = mode
        self._busy_ms = int(busy_timeout_s * 1000)
        self._pool_lock = threading.Lock()
        self._free: list[sqlite3.Connection] = []
        self._all: list[sqlite3.Connection] = []
        self._closed = False
        if self.path.is_dir():
            raise StoreError(f"cannot open store {self.path}: it is a directory")
        if not self.path.parent.is_dir():
            raise StoreError(f"cannot open store {self.path}: directory {self.path.parent} does not exist")
        try:
            with self._translate("open"):
                self._init_schema()
        except BaseException:
            self.close()
            raise

    # -- connections and errors --------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(
            str(self.path), timeout=self._busy_ms / 1000, isolation_level=None, check_same_thread=False
        )
        try:
            con.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"cannot open store {self.path}: SQLite refused WAL mode (journal_mode={mode})")
            con.execute(f"PRAGMA synchronous = {self.synchronous}")
        except BaseException:
            con.close()
            raise
        return con

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with self._pool_lock:
            if self._closed:
                raise closed_error(self.location)
            con = self._free.pop() if self._free else None
        if con is None:
            con = self._connect()
            with self._pool_lock:
                self._all.append(con)
        try:
            yield con
        finally:
            with self._pool_lock:
                if self._closed:
                    con.close()
                else:
                    self._free.append(con)

    @contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            msg = str(exc)
            if "locked" in msg or "busy" in msg:
                raise StoreError(
                    f"{action} on {self.path} failed: the database is locked by another writer "
                    f"(waited {self._busy_ms / 1000:g} s)"
                ) from None
            if "not a database" in msg:
                raise StoreError(f"cannot open store {self.path}: the file is not a SQLite database") from None
            if "malformed" in msg:
                raise CorruptRecordError(f"{action} on {self.path} failed: the database file is corrupt ({msg})") from None
            raise StoreError(f"{action} on {self.path} failed: {msg}") from None

    @contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed (and, with synchronous=FULL, fsynced) on success,
        rolled back on any error."""
        with self._translate(action), self._conn() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise

    def _init_schema(self) -> None:
        with self._conn() as con:
            app_id = con.execute("PRAGMA application_id").fetchone()[0]
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if app_id == APPLICATION_ID and version == SCHEMA_VERSION:
                return
            if app_id == APPLICATION_ID and version > SCHEMA_VERSION:
                raise FormatVersionError(
                    f"store {self.path} has schema version {version}; this seqkv reads up to {SCHEMA_VERSION}"
                )
            con.execute("BEGIN IMMEDIATE")
            try:
                # read again under the write lock: another process may have created or upgraded it
                app_id = con.execute("PRAGMA application_id").fetchone()[0]
                version = con.execute("PRAGMA user_version").fetchone()[0]
                tables = con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                if app_id != APPLICATION_ID:
                    if tables:
                        raise StoreError(
                            f"cannot open store {self.path}: it is a SQLite database of another "
                            f"application (application_id={app_id:#x}, {tables} schema objects)"
                        )
                    _execute_script(con, _SCHEMA + _SCHEMA_2_ADDITIONS)
                    con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                elif version == 1:
                    _execute_script(con, _UPGRADE_1_TO_2)
                    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                elif version != SCHEMA_VERSION:
                    raise FormatVersionError(
                        f"store {self.path} has schema version {version}; this seqkv reads 1 to {SCHEMA_VERSION}"
                    )
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise

    # -- sessions ----------------------------------------------------------------------

    def put(self, session_id: str, record: SessionRecord, *, blobs: Mapping[str, bytes] | None = None) -> None:
        check_session_id(session_id)
        record = require_record(record)
        meta_json, attachments, sums = record.encoded(session_id)
        new_blobs = check_blobs(blobs)
        row = (session_id, meta_json, sums.meta_crc, sums.data_crc, sums.fmt, time.time(), record.container, attachments)
        # INSERT OR REPLACE deletes the old row and inserts the new one inside this transaction:
        # readers see the old row until COMMIT, then the new one.
        with self._write(f"put({session_id!r})") as con:
            con.execute(f"INSERT OR REPLACE INTO sessions ({_ROW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
            for name, data in new_blobs.items():
                self._write_blob(con, name, data)

    def get(self, session_id: str) -> SessionRecord:
        check_session_id(session_id)
        with self._translate(f"get({session_id!r})"), self._conn() as con:
            row = con.execute(
                "SELECT container, meta, attachments, data_crc, meta_crc, row_format FROM sessions WHERE id = ?",
                (session_id,),
            ).fetchone()
        if row is None:
            raise not_found(session_id)
        container, meta, attachments = (_as_bytes(f"session {session_id!r}", v) for v in row[:3])
        return SessionRecord.from_stored(session_id, container, meta, attachments, sums=_sums(session_id, *row[3:]))

    @staticmethod
    def _checked_meta(session_id: str, meta: object, data_crc: object, meta_crc: object, row_format: object) -> tuple[bytes, RowChecksums]:
        meta_json = _as_bytes(f"session {session_id!r}", meta)
        sums = _sums(session_id, data_crc, meta_crc, row_format)
        check_meta(session_id, meta_json, sums)
        return meta_json, sums

    def get_meta(self, session_id: str) -> dict[str, Any] | bytes:
        check_session_id(session_id)
        with self._translate(f"get_meta({session_id!r})"), self._conn() as con:
            row = con.execute(f"SELECT {_META_COLUMNS} FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise not_found(session_id)
        meta_json, _ = self._checked_meta(session_id, *row)
        return decode_meta(meta_json, f"session {session_id!r}")

    def scan_meta(self) -> MetaScan:
        with self._translate("scan_meta"), self._conn() as con:
            rows = con.execute(f"SELECT id, {_META_COLUMNS} FROM sessions ORDER BY id").fetchall()
        scan = MetaScan({}, {})
        for session_id, *columns in rows:
            try:
                meta_json, _ = self._checked_meta(session_id, *columns)
                scan.meta[session_id] = decode_meta(meta_json, f"session {session_id!r}")
            except CorruptRecordError as exc:
                scan.corrupt[session_id] = str(exc)
        return scan

    def delete(self, session_id: str) -> bool:
        check_session_id(session_id)
        with self._write(f"delete({session_id!r})") as con:
            return con.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount > 0

    def contains(self, session_id: str) -> bool:
        check_session_id(session_id)
        with self._translate("contains"), self._conn() as con:
            return con.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone() is not None

    def ids(self) -> list[str]:
        with self._translate("ids"), self._conn() as con:
            return [r[0] for r in con.execute("SELECT id FROM sessions ORDER BY id")]

    def __len__(self) -> int:
        with self._translate("len"), self._conn() as con:
            return int(con.execute("SELECT count(*) FROM sessions").fetchone()[0])

    def size(self, session_id: str) -> int:
        check_session_id(session_id)
        with self._translate("size"), self._conn() as con:
            row = con.execute(
                "SELECT length(container) + length(meta) + length(attachments) FROM sessions WHERE id = ?",
                (session_id,),
            ).fetchone()
        if row is None:
            raise not_found(session_id)
        return int(row[0])

    def patch_meta(self, session_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        check_session_id(session_id)
        check_changes(changes)
        with self._write(f"patch_meta({session_id!r})") as con:
            row = con.execute(f"SELECT {_META_COLUMNS} FROM sessions WHERE id = ?", (session_id,)).fetchone()
            if row is None:
                raise not_found(session_id)
            old, sums = self._checked_meta(session_id, *row)
            new = encode_meta(merge_meta(decode_meta(old, f"session {session_id!r}"), changes))
            con.execute(
                "UPDATE sessions SET meta = ?, meta_crc = ?, updated_at = ? WHERE id = ?",
                (new, rechecksum_meta(session_id, new, sums).meta_crc, time.time(), session_id),
            )
        return decode_meta(new, f"session {session_id!r}")

    # -- numbers and quarantine --------------------------------------------------------

    def allocate_number(self, name: str = "session", *, after: int = 0) -> int:
        check_counter_name(name)
        check_after(after)
        with self._write(f"allocate_number({name!r})") as con:
            row = con.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
            number = max(int(row[0]) if row else 0, after) + 1
            if number > MAX_NUMBER:
                raise counter_exhausted(name)
            con.execute("INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)", (name, number))
        return number

    def quarantine(self, session_id: str, *, reason: str = "") -> bool:
        check_session_id(session_id)
        check_reason(reason)
        with self._write(f"quarantine({session_id!r})") as con:
            moved = con.execute(
                f"INSERT OR REPLACE INTO quarantine ({_ROW_COLUMNS}, reason, quarantined_at)"
                f" SELECT {_ROW_COLUMNS}, ?, ? FROM sessions WHERE id = ?",
                (reason, time.time(), session_id),
            ).rowcount
            con.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
        return moved > 0

    def quarantined(self) -> list[str]:
        with self._translate("quarantined"), self._conn() as con:
            return [r[0] for r in con.execute("SELECT id FROM quarantine ORDER BY id")]

    # -- blobs -------------------------------------------------------------------------

    @staticmethod
    def _write_blob(con: sqlite3.Connection, name: str, data: bytes | None) -> int:
        row = con.execute("SELECT version FROM blobs WHERE name = ?", (name,)).fetchone()
        version = (row[0] if row else 0) + 1
        con.execute(
            "INSERT OR REPLACE INTO blobs VALUES (?, ?, ?, ?, ?)",
            (name, data, None if data is None else blob_crc(data), version, time.time()),
        )
        return version

    def _read_blob(self, con: sqlite3.Connection, name: str) -> tuple[bytes | None, int]:
        row = con.execute("SELECT data, crc, version FROM blobs WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None, 0
        data, crc, version = row
        if data is None:
            return None, int(version)
        data = _as_bytes(f"blob {name!r}", data)
        if crc is None or blob_crc(data) != crc:
            raise CorruptRecordError(f"blob {name!r} in {self.path} fails its CRC-32 (corrupt database row)")
        return data, int(version)

    def put_blob(self, name: str, data: bytes) -> int:
        check_blob_name(name)
        data = check_blob_data(data, name)
        with self._write(f"put_blob({name!r})") as con:
            return self._write_blob(con, name, data)

    def get_blob_versioned(self, name: str) -> tuple[bytes | None, int]:
        check_blob_name(name)
        with self._translate(f"get_blob({name!r})"), self._conn() as con:
            return self._read_blob(con, name)

    def blob_version(self, name: str) -> int:
        check_blob_name(name)
        with self._translate(f"blob_version({name!r})"), self._conn() as con:
            row = con.execute("SELECT version FROM blobs WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def delete_blob(self, name: str) -> bool:
        check_blob_name(name)
        with self._write(f"delete_blob({name!r})") as con:
            row = con.execute("SELECT data IS NOT NULL FROM blobs WHERE name = ?", (name,)).fetchone()
            if not row or not row[0]:
                return False
            self._write_blob(con, name, None)
            return True

    def blob_names(self) -> list[str]:
        with self._translate("blob_names"), self._conn() as con:
            return [r[0] for r in con.execute("SELECT name FROM blobs WHERE data IS NOT NULL ORDER BY name")]

    def update_blob(
        self, name: str, fn: Callable[[bytes | None], bytes | None], *, max_attempts: int = 100
    ) -> BlobUpdate:
        check_blob_name(name)
        check_callable(fn, "update_blob's fn")
        check_positive_int(max_attempts, "max_attempts")
        # BEGIN IMMEDIATE takes the database's write lock first, so fn runs once, unraced.
        with self._write(f"update_blob({name!r})") as con:
            current, version = self._read_blob(con, name)
            new = fn(current)
            if new is None:
                return BlobUpdate(current, version, 1)
            new = check_blob_data(new, name)
            return BlobUpdate(new, self._write_blob(con, name, new), 1)

    # -- the rest ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._translate("stats"), self._conn() as con:
            count, total = con.execute(
                "SELECT count(*), coalesce(sum(length(container) + length(meta) + length(attachments)), 0)"
                " FROM sessions"
            ).fetchone()
            blobs = [r[0] for r in con.execute("SELECT name FROM blobs WHERE data IS NOT NULL ORDER BY name")]
            quarantined = con.execute("SELECT count(*) FROM quarantine").fetchone()[0]
            page_size = con.execute("PRAGMA page_size").fetchone()[0]
            pages = con.execute("PRAGMA page_count").fetchone()[0]
        wal = Path(str(self.path) + "-wal")
        return {
            "backend": type(self).__name__,
            "location": self.location,
            "sessions": int(count),
            "bytes": int(total),
            "blobs": blobs,
            "quarantined": int(quarantined),
            "file_bytes": int(page_size * pages),
            "wal_bytes": wal.stat().st_size if wal.exists() else 0,
            "journal_mode": "wal",
            "synchronous": self.synchronous.lower(),
        }

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the main file (``PRAGMA wal_checkpoint(TRUNCATE)``)."""
        with self._translate("checkpoint"), self._conn() as con:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._pool_lock:
            if self._closed:
                return
            self._closed = True
            conns, self._all, self._free = self._all, [], []
        for con in conns:
            try:
                con.close()
            except sqlite3.Error:
                pass
