"""A shared backend on Redis or Valkey (through redis-py), so that several serving processes,
on one machine or many, see the same sessions and the same prefix index.

Keys of a namespace ``ns`` (default ``seqkv``; ``redis://host:port/db?namespace=ns``) all start
with ``seqkv2:<ns>:``, where ``<ns>`` is percent-encoded (``urllib.parse.quote(ns, safe="")``:
only letters, digits, ``_.-~`` and ``%XX`` remain, so it holds no ``:`` and no glob
character). Two namespaces therefore never share a key, whatever their names (``tenant`` and
``tenant:session:x`` included), and ``clear()`` matches its own keys only. Session ids are
never part of a key: they are fields of the namespace's ``ids`` hash, which points each id at
its live record version, stored under a random version token (the full layout is in
:mod:`seqkv.backends.redis_scripts`).

How writes behave:

* Every write is one Lua script, atomic on the server. ``put`` writes the new record version
  under a fresh token and swaps the id's pointer to it in the same script (and any blobs
  passed along), deleting the old version: a reader (``get`` is one script too) sees the old
  record or the new one, never neither and never a mix.
* Every write carries a deadline on the server's clock (half the timeout after it was sent;
  the client measures the offset between its clock and the server's ``TIME`` at connect).
  A write the client gave up on (a stalled server, a timeout) is refused by the server if it
  runs later, so a timed-out ``put`` is never applied behind the caller's back. A put
  delivered twice (redis-py resends a command once after a broken connection) applies once.
* ``patch_meta`` and ``update_blob`` are optimistic read-modify-writes: read, compute in
  Python, then a compare-and-set script that applies only if the record (or the blob's
  version) is unchanged, retried otherwise. Two processes extending the shared trie snapshot
  both call ``update_blob("trie", lambda old: merge(old, mine))``: neither update is lost.
* Counters (:meth:`allocate_number`) are an ``INCR``-like script on ``seqkv2:<ns>:n:<name>``,
  which ``clear()`` keeps: numbers are never handed out twice.

Every call raises :class:`~seqkv.errors.StoreError` when the server does not answer within
``timeout`` seconds (default 10; connecting: 2 or ``timeout``); writes are not retried after a
timeout. Durability: ``put`` returns once the server has executed the script. What survives a
crash of the *server* is set by the server's persistence (``appendonly yes`` with
``appendfsync always`` matches the SQLite backend's contract; see ``docs/durability.md``).

Stores written before namespaces were encoded (keys ``{ns}:session:{id}``) are not read; copy
them once with :meth:`RedisBackend.migrate_legacy_layout` (a warning at open says when a
namespace has such keys and no new ones).
"""

from __future__ import annotations

import time
import urllib.parse
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ..errors import InvalidInputError, MissingExtraError, SessionNotFoundError, StoreError
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
from .redis_scripts import CONFLICT, EXPIRED, SCRIPTS
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

__all__ = ["RedisBackend", "key_prefix", "LAYOUT_TAG"]

#: The first component of every key this backend writes (the key layout's version).
LAYOUT_TAG = "seqkv2"

_OUR_PARAMS = ("namespace", "timeout")
_RECORD_FIELDS = ("container", "meta", "att", "dcrc", "mcrc", "fmt")
_META_FIELDS = ("meta", "dcrc", "mcrc", "fmt")
_DEFAULT_TIMEOUT_S = 10.0
_CONNECT_TIMEOUT_S = 2.0


def key_prefix(namespace: str) -> str:
    """The prefix of every key of ``namespace``: no two namespaces' prefixes are prefixes of
    each other (the encoded namespace holds no ``:``)."""
    return f"{LAYOUT_TAG}:{urllib.parse.quote(namespace, safe='')}:"


def _encode(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise MissingExtraError("the Redis backend needs redis-py: pip install 'seqkv[redis]'") from None
    return redis


def _int(value: bytes | None) -> int | None:
    return None if value is None else int(value)


class _ExpiredWrite(StoreError):
    """A write the server refused because it ran after its deadline (nothing was written)."""


class _Conflict(StoreError):
    """A compare-and-set found its expected value changed (nothing written; the caller retries)."""


def _check_namespace(namespace: object) -> str:
    if not isinstance(namespace, str) or not namespace:
        raise InvalidInputError(f"Redis namespace must be a non-empty str, not {namespace!r}")
    try:
        namespace.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"Redis namespace {namespace!r} is not valid Unicode text") from None
    if any(c in namespace for c in " \n\r\t\x00"):
        raise InvalidInputError(f"Redis namespace {namespace!r} must not contain whitespace or NUL")
    return namespace


class RedisBackend(Backend):
    """Sessions and blobs in a Redis/Valkey server; see the module docstring.

    ``url`` is a redis-py URL (``redis://``, ``rediss://``, ``unix://``) that may carry two
    extra query parameters: ``namespace`` (default ``seqkv``) and ``timeout`` (seconds per
    command, default 10; connecting waits at most 2 s, or ``timeout`` if smaller). The server
    is contacted at once, so an unreachable one raises :class:`StoreError` here.
    """

    binds_ids = True

    def __init__(self, url: str, *, namespace: str | None = None, timeout: float | None = None):
        redis = _import_redis()
        self._redis = redis
        if not isinstance(url, str):
            raise InvalidInputError(f"a Redis URL must be a str, not {type(url).__name__}")
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        ours = {k: query.pop(k)[-1] for k in _OUR_PARAMS if k in query}
        clean = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, doseq=True)))
        self.namespace = _check_namespace(namespace if namespace is not None else ours.get("namespace", "seqkv"))
        if timeout is None and ours.get("timeout"):
            try:
                timeout = float(ours["timeout"])
            except ValueError:
                raise InvalidInputError(f"timeout={ours['timeout']!r} in the Redis URL is not a number") from None
        self.timeout = check_timeout(timeout, "timeout") if timeout is not None else _DEFAULT_TIMEOUT_S
        host = parts.hostname or "localhost"
        quoted = urllib.parse.quote(self.namespace)
        self.location = (
            f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path or '/0'}?namespace={quoted}"
            if parts.scheme != "unix"
            else f"unix://{parts.path}?namespace={quoted}"
        )
        self._prefix = key_prefix(self.namespace)
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        try:
            self._client = redis.Redis.from_url(
                clean,
                socket_connect_timeout=min(_CONNECT_TIMEOUT_S, self.timeout),
                socket_timeout=self.timeout,
                # resend once after a broken connection (a put is idempotent under its token),
                # never after a timeout: that would double the time a caller waits
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
                decode_responses=False,
            )
        except ValueError as exc:
            raise InvalidInputError(f"bad Redis URL {self.location}: {exc}") from None
        self._closed = False
        self._scripts = {name: self._client.register_script(src) for name, src in SCRIPTS.items()}
        self._clock_offset_s = 0.0
        self._measure_clock_offset()
        self._warn_if_legacy_only()

    # -- keys, clocks and errors -------------------------------------------------------

    @property
    def _ids_key(self) -> str:
        return self._prefix + "ids"

    @property
    def _quarantine_key(self) -> str:
        return self._prefix + "q"

    @property
    def _blob_names_key(self) -> str:
        return self._prefix + "bn"

    def _record_key(self, token: str) -> str:
        return f"{self._prefix}r:{token}"

    def _blob_key(self, name: str) -> str:
        return f"{self._prefix}b:{_encode(name)}"

    def _counter_key(self, name: str) -> str:
        return f"{self._prefix}n:{_encode(name)}"

    def _measure_clock_offset(self) -> None:
        with self._translate("connect"):
            sent = time.time()
            seconds, micros = self._client.time()
            received = time.time()
        self._clock_offset_s = seconds + micros / 1e6 - (sent + received) / 2

    def _deadline_us(self) -> int:
        """The server-clock time after which a write sent now must not run: half the timeout
        from now, leaving the other half for the reply to come back."""
        return int((time.time() + self._clock_offset_s + self.timeout / 2) * 1e6)

    @contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        if self._closed:
            raise closed_error(self.location)
        exc_mod = self._redis.exceptions
        try:
            yield
        except exc_mod.TimeoutError as exc:
            raise StoreError(
                f"{action} failed: Redis at {self.location} did not answer within {self.timeout:g} s ({exc}); "
                "a write either took effect completely before its deadline on the server or never will"
            ) from None
        except exc_mod.ConnectionError as exc:
            raise StoreError(f"{action} failed: cannot reach Redis at {self.location} ({exc})") from None
        except exc_mod.ResponseError as exc:
            if str(exc).startswith(EXPIRED):
                raise _ExpiredWrite(
                    f"{action} was not applied: Redis at {self.location} ran it after its deadline "
                    "(the server stalled, or the clocks moved)"
                ) from None
            if str(exc).startswith(CONFLICT):
                raise _Conflict(f"{action}: another writer changed the value first") from None
            raise StoreError(f"{action} on Redis at {self.location} failed: {exc}") from None
        except exc_mod.RedisError as exc:
            raise StoreError(f"{action} on Redis at {self.location} failed: {exc}") from None

    def _write(self, action: str, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run a writing script with a fresh deadline as its first argument; an expired one
        re-measures the clock offset (it may have drifted) before raising."""
        try:
            with self._translate(action):
                return self._scripts[script](keys=keys, args=[self._deadline_us(), *args])
        except _ExpiredWrite:
            self._measure_clock_offset()
            raise

    def _compare_and_set(self, action: str, attempt: Callable[[], Any], max_attempts: int) -> tuple[Any, int]:
        """Call ``attempt()`` (a read, then a compare-and-set script) until no other writer
        got in between."""
        for attempts in range(1, max_attempts + 1):
            try:
                return attempt(), attempts
            except _Conflict:
                continue
        raise StoreError(f"{action} on Redis at {self.location}: gave up after {max_attempts} conflicting writers")

    def _warn_if_legacy_only(self) -> None:
        with self._translate("connect"):
            legacy = self._client.exists(f"{self.namespace}:sessions", f"{self.namespace}:blobs")
            new = self._client.exists(self._ids_key, self._blob_names_key)
        if legacy and not new:
            warnings.warn(
                f"Redis namespace {self.namespace!r} holds sessions in the key layout of an older seqkv "
                f"({self.namespace}:session:<id>), which this version does not read: copy them once with "
                "RedisBackend.migrate_legacy_layout()",
                stacklevel=3,
            )

    # -- sessions ----------------------------------------------------------------------

    def put(self, session_id: str, record: SessionRecord, *, blobs: Mapping[str, bytes] | None = None) -> None:
        check_session_id(session_id)
        record = require_record(record)
        meta_json, attachments, sums = record.encoded(session_id)
        token = uuid.uuid4().hex
        blob_args: list[Any] = []
        for name, data in check_blobs(blobs).items():
            blob_args += [self._blob_key(name), name, data, blob_crc(data)]
        self._write(
            f"put({session_id!r})",
            "put",
            [self._ids_key, self._record_key(token), self._blob_names_key],
            [self._prefix, session_id, token, record.container, meta_json, attachments,
             sums.data_crc, sums.meta_crc, sums.fmt, repr(time.time()), *blob_args],
        )

    def _read(self, session_id: str, fields: tuple[str, ...], action: str) -> tuple[bytes, list[bytes | None]]:
        """(token, values of ``fields``) of the live record, read atomically."""
        with self._translate(action):
            found = self._scripts["read"](keys=[self._ids_key], args=[self._prefix, session_id, *fields])
        if not found:
            raise not_found(session_id)
        token, *values = found
        if any(v is None for v in values):
            raise CorruptRecordError(f"session {session_id!r}: stored record in {self.location} is missing fields")
        return token, values

    @staticmethod
    def _sums(session_id: str, dcrc: bytes, mcrc: bytes, fmt: bytes) -> RowChecksums:
        try:
            return RowChecksums(int(dcrc), int(mcrc), int(fmt))
        except ValueError:
            raise CorruptRecordError(f"session {session_id!r}: stored checksums are not integers") from None

    def get(self, session_id: str) -> SessionRecord:
        check_session_id(session_id)
        _, (container, meta, att, dcrc, mcrc, fmt) = self._read(session_id, _RECORD_FIELDS, f"get({session_id!r})")
        sums = self._sums(session_id, dcrc, mcrc, fmt)  # type: ignore[arg-type]
        return SessionRecord.from_stored(session_id, container, meta, att, sums=sums)  # type: ignore[arg-type]

    def _checked_meta(self, session_id: str, values: list[bytes | None]) -> tuple[bytes, RowChecksums]:
        meta, dcrc, mcrc, fmt = values
        sums = self._sums(session_id, dcrc, mcrc, fmt)  # type: ignore[arg-type]
        check_meta(session_id, meta, sums)  # type: ignore[arg-type]
        return meta, sums  # type: ignore[return-value]

    def get_meta(self, session_id: str) -> dict[str, Any] | bytes:
        check_session_id(session_id)
        _, values = self._read(session_id, _META_FIELDS, f"get_meta({session_id!r})")
        meta, _ = self._checked_meta(session_id, values)
        return decode_meta(meta, f"session {session_id!r}")

    def scan_meta(self) -> MetaScan:
        scan = MetaScan({}, {})
        with self._translate("scan_meta"):
            pointers = [(k.decode("utf-8"), v.decode()) for k, v in self._client.hscan_iter(self._ids_key, count=1000)]
        for start in range(0, len(pointers), 500):
            batch = pointers[start : start + 500]
            with self._translate("scan_meta"), self._client.pipeline(transaction=False) as pipe:
                for _, token in batch:
                    pipe.hmget(self._record_key(token), _META_FIELDS)
                rows = pipe.execute()
            for (session_id, _), values in zip(batch, rows):
                try:
                    if all(v is None for v in values):  # replaced or deleted since: read it afresh
                        scan.meta[session_id] = self.get_meta(session_id)
                        continue
                    if any(v is None for v in values):
                        raise CorruptRecordError(f"session {session_id!r}: stored record is missing fields")
                    meta, _ = self._checked_meta(session_id, values)
                    scan.meta[session_id] = decode_meta(meta, f"session {session_id!r}")
                except SessionNotFoundError:
                    continue
                except CorruptRecordError as exc:
                    scan.corrupt[session_id] = str(exc)
        return MetaScan(dict(sorted(scan.meta.items())), dict(sorted(scan.corrupt.items())))

    def delete(self, session_id: str) -> bool:
        check_session_id(session_id)
        return bool(self._write(f"delete({session_id!r})", "delete", [self._ids_key], [self._prefix, session_id]))

    def contains(self, session_id: str) -> bool:
        check_session_id(session_id)
        with self._translate("contains"):
            return bool(self._client.hexists(self._ids_key, session_id))

    def ids(self) -> list[str]:
        with self._translate("ids"):
            raw = self._client.hkeys(self._ids_key)
        return sorted(r.decode("utf-8") for r in raw)

    def __len__(self) -> int:
        with self._translate("len"):
            return int(self._client.hlen(self._ids_key))

    def size(self, session_id: str) -> int:
        check_session_id(session_id)
        with self._translate("size"):
            lengths = self._scripts["size"](keys=[self._ids_key], args=[self._prefix, session_id])
        if not lengths:
            raise not_found(session_id)
        return int(sum(lengths))

    def patch_meta(self, session_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        check_session_id(session_id)
        check_changes(changes)
        where = f"session {session_id!r}"
        action = f"patch_meta({session_id!r})"

        def attempt() -> dict[str, Any]:
            token, values = self._read(session_id, _META_FIELDS, action)
            old, sums = self._checked_meta(session_id, values)
            new = encode_meta(merge_meta(decode_meta(old, where), changes))
            args = [self._prefix, session_id, token, values[2], new,
                    rechecksum_meta(session_id, new, sums).meta_crc, repr(time.time())]
            if not self._write(action, "patch_meta", [self._ids_key], args):
                raise not_found(session_id)
            return decode_meta(new, where)

        meta: dict[str, Any] = self._compare_and_set(action, attempt, 100)[0]
        return meta

    # -- numbers and quarantine --------------------------------------------------------

    def allocate_number(self, name: str = "session", *, after: int = 0) -> int:
        check_counter_name(name)
        check_after(after)
        number = int(self._write(f"allocate_number({name!r})", "allocate", [self._counter_key(name)], [after]))
        if number > MAX_NUMBER:
            raise counter_exhausted(name)
        return number

    def quarantine(self, session_id: str, *, reason: str = "") -> bool:
        check_session_id(session_id)
        check_reason(reason)
        return bool(
            self._write(
                f"quarantine({session_id!r})",
                "quarantine",
                [self._ids_key, self._quarantine_key],
                [self._prefix, session_id, reason, repr(time.time())],
            )
        )

    def quarantined(self) -> list[str]:
        with self._translate("quarantined"):
            raw = self._client.hkeys(self._quarantine_key)
        return sorted(r.decode("utf-8") for r in raw)

    # -- blobs -------------------------------------------------------------------------

    def _parse_blob(self, name: str, data: bytes | None, crc: bytes | None, version: bytes | None) -> tuple[bytes | None, int]:
        try:
            if data is not None and (crc is None or blob_crc(data) != int(crc)):
                raise ValueError
            return data, _int(version) or 0
        except ValueError:
            raise CorruptRecordError(f"blob {name!r} in {self.location} fails its CRC-32 (corrupt entry)") from None

    def _write_blob(self, name: str, action: str, data: bytes | None, expected_version: int | None) -> int:
        args: list[Any] = [name, "" if expected_version is None else str(expected_version)]
        if data is not None:
            args += [data, blob_crc(data)]
        return int(self._write(action, "write_blob", [self._blob_key(name), self._blob_names_key], args))

    def put_blob(self, name: str, data: bytes) -> int:
        check_blob_name(name)
        return self._write_blob(name, f"put_blob({name!r})", check_blob_data(data, name), None)

    def get_blob_versioned(self, name: str) -> tuple[bytes | None, int]:
        check_blob_name(name)
        with self._translate(f"get_blob({name!r})"):
            data, crc, version = self._client.hmget(self._blob_key(name), ["data", "crc", "version"])
        return self._parse_blob(name, data, crc, version)

    def blob_version(self, name: str) -> int:
        check_blob_name(name)
        with self._translate(f"blob_version({name!r})"):
            return _int(self._client.hget(self._blob_key(name), "version")) or 0

    def delete_blob(self, name: str) -> bool:
        check_blob_name(name)
        return self._write_blob(name, f"delete_blob({name!r})", None, None) > 0

    def blob_names(self) -> list[str]:
        with self._translate("blob_names"):
            raw = self._client.smembers(self._blob_names_key)
        return sorted(r.decode("utf-8") for r in raw)

    def update_blob(
        self, name: str, fn: Callable[[bytes | None], bytes | None], *, max_attempts: int = 100
    ) -> BlobUpdate:
        check_blob_name(name)
        check_callable(fn, "update_blob's fn")
        check_positive_int(max_attempts, "max_attempts")
        action = f"update_blob({name!r})"

        def attempt() -> tuple[bytes | None, int]:
            current, version = self.get_blob_versioned(name)
            new = fn(current)
            if new is None:
                return current, version
            new = check_blob_data(new, name)
            return new, self._write_blob(name, action, new, version)

        (data, version), attempts = self._compare_and_set(action, attempt, max_attempts)
        return BlobUpdate(data, version, attempts)

    # -- the rest ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._translate("stats"):
            tokens = [v.decode() for v in self._client.hvals(self._ids_key)]
            total = 0
            for start in range(0, len(tokens), 500):
                with self._client.pipeline(transaction=False) as pipe:
                    for token in tokens[start : start + 500]:
                        for f in ("container", "meta", "att"):
                            pipe.hstrlen(self._record_key(token), f)
                    total += sum(int(x) for x in pipe.execute())
            quarantined = int(self._client.hlen(self._quarantine_key))
            info = self._client.info("memory")
            server = self._client.info("server")
        return {
            "backend": type(self).__name__,
            "location": self.location,
            "sessions": len(tokens),
            "bytes": total,
            "blobs": self.blob_names(),
            "quarantined": quarantined,
            "server": f"{'valkey' if 'valkey_version' in server else 'redis'} "
            f"{server.get('valkey_version') or server.get('redis_version')}",
            "server_used_memory": int(info.get("used_memory", 0)),
        }

    def clear(self) -> int:
        """Delete every session, quarantined record and blob of this namespace (no other
        namespace's keys: see the module docstring); the counters stay, so numbers are still
        never reused. Returns how many keys went."""
        counters = self._prefix + "n:"
        with self._translate("clear"):
            keys = [
                k for k in self._client.scan_iter(match=self._prefix + "*", count=1000)
                if not k.decode("utf-8").startswith(counters)
            ]
            for start in range(0, len(keys), 1000):
                self._client.delete(*keys[start : start + 1000])
        return len(keys)

    def migrate_legacy_layout(self) -> tuple[int, int]:
        """Copy the sessions and blobs an older seqkv stored in this namespace under the old
        key layout (``{ns}:session:{id}``, ``{ns}:sessions``, ``{ns}:blob:{name}``,
        ``{ns}:blobs``) into the current one, as stored: each record keeps its checksums
        (row format 1, checked on read as before), each blob its version. Ids and blobs that
        already exist in the current layout are skipped, so it can be run again. The old keys
        are left as they were (delete them once every process runs this version). Returns
        ``(sessions copied, blobs copied)``."""
        old = self.namespace
        copied_sessions = copied_blobs = 0
        with self._translate("migrate_legacy_layout"):
            old_ids = [r.decode("utf-8") for r in self._client.smembers(f"{old}:sessions")]
            old_blobs = [r.decode("utf-8") for r in self._client.smembers(f"{old}:blobs")]
        for session_id in sorted(old_ids):
            with self._translate("migrate_legacy_layout"):
                values = self._client.hmget(f"{old}:session:{session_id}", ["container", "meta", "att", "dcrc", "mcrc", "updated"])
            if values[0] is None:
                continue
            token = uuid.uuid4().hex
            args = [session_id, token, *(b"" if v is None else v for v in values[:5]), 1, values[5] or b"0"]
            copied_sessions += self._write(
                "migrate_legacy_layout", "import_record", [self._ids_key, self._record_key(token)], args
            )
        for name in sorted(old_blobs):
            with self._translate("migrate_legacy_layout"):
                data, crc, version = self._client.hmget(f"{old}:blob:{name}", ["data", "crc", "version"])
            if data is None:
                continue
            copied_blobs += self._write(
                "migrate_legacy_layout", "import_blob", [self._blob_key(name), self._blob_names_key],
                [name, data, crc or b"", version or b"1"],
            )
        return copied_sessions, copied_blobs

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._client.close()
        except self._redis.exceptions.RedisError:
            pass
