"""A shared backend on Redis or Valkey (through redis-py), so that several serving processes,
on one machine or many, see the same sessions and the same prefix index.

Layout under a namespace ``ns`` (default ``seqkv``; ``redis://host:port/db?namespace=ns``)::

    {ns}:session:{id}   hash  container, meta (canonical JSON), att (framed attachments),
                              dcrc, mcrc (CRC-32s), updated (unix time)
    {ns}:sessions       set   every session id
    {ns}:blob:{name}    hash  data, crc, version (version survives deletion of data)
    {ns}:blobs          set   names of blobs that hold data

How concurrent writers merge:

* ``put`` / ``delete`` replace a whole session in one ``MULTI``/``EXEC`` transaction (the
  hash and the id set together, plus any blobs passed to ``put``), so a reader never sees a
  half-written record, and the last writer of a session id wins.
* ``patch_meta`` and ``update_blob`` are optimistic read-modify-write: ``WATCH`` the key,
  read, compute, ``MULTI``/``EXEC``; if another client changed the key in between, ``EXEC``
  fails and the update is retried on the new value. Two processes extending the shared
  trie snapshot both call ``update_blob("trie", lambda old: merge(old, mine))``: neither
  update is lost.
* Every blob write increments its version, so a process notices another's change to the
  prefix index with one ``HGET`` (:meth:`blob_version`) and reloads only then.

Durability: ``put`` returns once the server has executed the transaction. What survives a
crash of the *server* is set by the server's persistence (``appendonly yes`` with
``appendfsync always`` matches the SQLite backend's contract; see ``docs/durability.md``).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ..errors import InvalidInputError, MissingExtraError, StoreError
from .base import (
    Backend,
    BlobUpdate,
    CorruptRecordError,
    SessionRecord,
    blob_crc,
    check_blob_data,
    check_blob_name,
    check_meta_crc,
    check_session_id,
    closed_error,
    decode_meta,
    encode_meta,
    merge_meta,
    meta_crc,
    not_found,
)

__all__ = ["RedisBackend"]

_OUR_PARAMS = ("namespace", "timeout")


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise MissingExtraError(
            "the Redis backend needs redis-py: pip install 'seqkv[redis]'"
        ) from None
    return redis


def _int(value: bytes | None) -> int | None:
    return None if value is None else int(value)


class RedisBackend(Backend):
    """Sessions and blobs in a Redis/Valkey server; see the module docstring.

    ``url`` is a redis-py URL (``redis://``, ``rediss://``, ``unix://``) that may carry two
    extra query parameters: ``namespace`` (key prefix, default ``seqkv``) and ``timeout``
    (seconds to connect and per command; default 2 to connect, 10 per command). The server
    is contacted at once, so an unreachable one raises :class:`StoreError` here.
    """

    def __init__(self, url: str, *, namespace: str | None = None, timeout: float | None = None):
        redis = _import_redis()
        self._redis = redis
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        ours = {k: query.pop(k)[-1] for k in _OUR_PARAMS if k in query}
        clean = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, doseq=True)))
        namespace = namespace if namespace is not None else ours.get("namespace", "seqkv")
        if not namespace or any(c in namespace for c in " \n\r\t"):
            raise InvalidInputError(f"Redis namespace {namespace!r} must be non-empty, without whitespace")
        try:
            timeout = float(timeout if timeout is not None else ours.get("timeout", 0) or 0) or None
        except ValueError:
            raise InvalidInputError(f"timeout={ours.get('timeout')!r} in the Redis URL is not a number") from None
        self.namespace = namespace
        host = parts.hostname or "localhost"
        self.location = (
            f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path or '/0'}?namespace={namespace}"
            if parts.scheme != "unix"
            else f"unix://{parts.path}?namespace={namespace}"
        )
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        try:
            self._client = redis.Redis.from_url(
                clean,
                socket_connect_timeout=timeout or 2.0,
                socket_timeout=timeout or 10.0,
                retry=Retry(NoBackoff(), 1),
                decode_responses=False,
            )
        except ValueError as exc:
            raise InvalidInputError(f"bad Redis URL {self.location}: {exc}") from None
        self._closed = False
        with self._translate("connect"):
            self._client.ping()

    # -- keys and errors ---------------------------------------------------------------

    def _skey(self, session_id: str) -> str:
        return f"{self.namespace}:session:{session_id}"

    def _bkey(self, name: str) -> str:
        return f"{self.namespace}:blob:{name}"

    @property
    def _ids_key(self) -> str:
        return f"{self.namespace}:sessions"

    @property
    def _blobs_key(self) -> str:
        return f"{self.namespace}:blobs"

    @contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        if self._closed:
            raise closed_error(self.location)
        exc_mod = self._redis.exceptions
        try:
            yield
        except (exc_mod.ConnectionError, exc_mod.TimeoutError) as exc:
            raise StoreError(f"{action} failed: cannot reach Redis at {self.location} ({exc})") from None
        except exc_mod.RedisError as exc:
            raise StoreError(f"{action} on Redis at {self.location} failed: {exc}") from None

    def _optimistic(self, key: str, action: str, body: Callable[[Any], Any], max_attempts: int) -> tuple[Any, int]:
        """Run ``body(pipe)`` under WATCH key until EXEC succeeds; body reads in immediate mode,
        calls ``pipe.multi()`` and queues its writes, and returns its result."""
        watch_error = self._redis.exceptions.WatchError
        with self._translate(action), self._client.pipeline(transaction=True) as pipe:
            for attempt in range(1, max_attempts + 1):
                try:
                    pipe.watch(key)
                    result = body(pipe)
                    if pipe.explicit_transaction:
                        pipe.execute()
                    else:
                        pipe.unwatch()
                    return result, attempt
                except watch_error:
                    pipe.reset()
                    continue
        raise StoreError(f"{action} on Redis at {self.location}: gave up after {max_attempts} conflicting writers")

    # -- sessions ----------------------------------------------------------------------

    def put(self, session_id: str, record: SessionRecord, *, blobs: Mapping[str, bytes] | None = None) -> None:
        check_session_id(session_id)
        meta_json = record.meta_json()
        fields = {
            "container": record.container,
            "meta": meta_json,
            "att": record.attachments_bytes(),
            "dcrc": record.data_crc(),
            "mcrc": meta_crc(meta_json),
            "updated": repr(time.time()),
        }
        new_blobs = {check_blob_name(n): check_blob_data(d, n) for n, d in (blobs or {}).items()}
        key = self._skey(session_id)
        with self._translate(f"put({session_id!r})"), self._client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            pipe.sadd(self._ids_key, session_id)
            for name, data in new_blobs.items():
                self._queue_blob_write(pipe, name, data)
            pipe.execute()

    def get(self, session_id: str) -> SessionRecord:
        check_session_id(session_id)
        with self._translate(f"get({session_id!r})"):
            values = self._client.hmget(self._skey(session_id), ["container", "meta", "att", "dcrc", "mcrc"])
        container, meta, att, dcrc, mcrc = values
        if container is None and meta is None:
            raise not_found(session_id)
        if container is None or meta is None or att is None or dcrc is None or mcrc is None:
            raise CorruptRecordError(f"session {session_id!r}: stored record in {self.location} is missing fields")
        try:
            dcrc_i, mcrc_i = int(dcrc), int(mcrc)
        except ValueError:
            raise CorruptRecordError(f"session {session_id!r}: stored checksums are not integers") from None
        return SessionRecord.from_stored(session_id, container, meta, att, data_crc=dcrc_i, meta_crc=mcrc_i)

    def get_meta(self, session_id: str) -> dict[str, Any]:
        check_session_id(session_id)
        with self._translate(f"get_meta({session_id!r})"):
            meta, crc = self._client.hmget(self._skey(session_id), ["meta", "mcrc"])
        if meta is None:
            raise not_found(session_id)
        check_meta_crc(session_id, meta, _int(crc))
        return decode_meta(meta, f"session {session_id!r}")

    def delete(self, session_id: str) -> bool:
        check_session_id(session_id)
        with self._translate(f"delete({session_id!r})"), self._client.pipeline(transaction=True) as pipe:
            pipe.delete(self._skey(session_id))
            pipe.srem(self._ids_key, session_id)
            deleted, _ = pipe.execute()
        return bool(deleted)

    def contains(self, session_id: str) -> bool:
        check_session_id(session_id)
        with self._translate("contains"):
            return bool(self._client.exists(self._skey(session_id)))

    def ids(self) -> list[str]:
        with self._translate("ids"):
            raw = list(self._client.sscan_iter(self._ids_key, count=1000))
        return sorted(r.decode("utf-8") for r in raw)

    def __len__(self) -> int:
        with self._translate("len"):
            return int(self._client.scard(self._ids_key))

    def size(self, session_id: str) -> int:
        check_session_id(session_id)
        key = self._skey(session_id)
        with self._translate("size"), self._client.pipeline(transaction=False) as pipe:
            for f in ("container", "meta", "att"):
                pipe.hstrlen(key, f)
            pipe.exists(key)
            *lengths, exists = pipe.execute()
        if not exists:
            raise not_found(session_id)
        return int(sum(lengths))

    def patch_meta(self, session_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        check_session_id(session_id)
        key = self._skey(session_id)
        where = f"session {session_id!r}"

        def body(pipe: Any) -> dict[str, Any]:
            old, crc = pipe.hmget(key, ["meta", "mcrc"])
            if old is None:
                raise not_found(session_id)
            check_meta_crc(session_id, old, _int(crc))
            new = encode_meta(merge_meta(decode_meta(old, where), changes))
            pipe.multi()
            pipe.hset(key, mapping={"meta": new, "mcrc": meta_crc(new), "updated": repr(time.time())})
            return decode_meta(new, where)

        meta: dict[str, Any] = self._optimistic(key, f"patch_meta({session_id!r})", body, 100)[0]
        return meta

    # -- blobs -------------------------------------------------------------------------

    def _queue_blob_write(self, pipe: Any, name: str, data: bytes | None) -> None:
        key = self._bkey(name)
        pipe.hincrby(key, "version", 1)
        if data is None:
            pipe.hdel(key, "data", "crc")
            pipe.srem(self._blobs_key, name)
        else:
            pipe.hset(key, mapping={"data": data, "crc": blob_crc(data)})
            pipe.sadd(self._blobs_key, name)

    def _parse_blob(self, name: str, data: bytes | None, crc: bytes | None, version: bytes | None) -> tuple[bytes | None, int]:
        if data is not None and (crc is None or blob_crc(data) != int(crc)):
            raise CorruptRecordError(f"blob {name!r} in {self.location} fails its CRC-32 (corrupt entry)")
        return data, _int(version) or 0

    def put_blob(self, name: str, data: bytes) -> int:
        check_blob_name(name)
        data = check_blob_data(data, name)
        with self._translate(f"put_blob({name!r})"), self._client.pipeline(transaction=True) as pipe:
            self._queue_blob_write(pipe, name, data)
            return int(pipe.execute()[0])

    def get_blob_versioned(self, name: str) -> tuple[bytes | None, int]:
        check_blob_name(name)
        with self._translate(f"get_blob({name!r})"):
            data, crc, version = self._client.hmget(self._bkey(name), ["data", "crc", "version"])
        return self._parse_blob(name, data, crc, version)

    def blob_version(self, name: str) -> int:
        check_blob_name(name)
        with self._translate(f"blob_version({name!r})"):
            return _int(self._client.hget(self._bkey(name), "version")) or 0

    def delete_blob(self, name: str) -> bool:
        check_blob_name(name)
        key = self._bkey(name)

        def body(pipe: Any) -> bool:
            if not pipe.hexists(key, "data"):
                return False
            pipe.multi()
            self._queue_blob_write(pipe, name, None)
            return True

        return bool(self._optimistic(key, f"delete_blob({name!r})", body, 100)[0])

    def blob_names(self) -> list[str]:
        with self._translate("blob_names"):
            raw = self._client.smembers(self._blobs_key)
        return sorted(r.decode("utf-8") for r in raw)

    def update_blob(
        self, name: str, fn: Callable[[bytes | None], bytes | None], *, max_attempts: int = 100
    ) -> BlobUpdate:
        check_blob_name(name)
        key = self._bkey(name)

        def body(pipe: Any) -> tuple[bytes | None, int]:
            current, version = self._parse_blob(name, *pipe.hmget(key, ["data", "crc", "version"]))
            new = fn(current)
            if new is None:
                return current, version
            new = check_blob_data(new, name)
            pipe.multi()
            self._queue_blob_write(pipe, name, new)
            return new, version + 1

        (data, version), attempts = self._optimistic(key, f"update_blob({name!r})", body, max_attempts)
        return BlobUpdate(data, version, attempts)

    # -- the rest ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        ids = self.ids()
        total = 0
        with self._translate("stats"):
            for start in range(0, len(ids), 500):
                with self._client.pipeline(transaction=False) as pipe:
                    for session_id in ids[start : start + 500]:
                        for f in ("container", "meta", "att"):
                            pipe.hstrlen(self._skey(session_id), f)
                    total += sum(int(x) for x in pipe.execute())
            info = self._client.info("memory")
            server = self._client.info("server")
        return {
            "backend": type(self).__name__,
            "location": self.location,
            "sessions": len(ids),
            "bytes": total,
            "blobs": self.blob_names(),
            "server": f"{'valkey' if 'valkey_version' in server else 'redis'} "
            f"{server.get('valkey_version') or server.get('redis_version')}",
            "server_used_memory": int(info.get("used_memory", 0)),
        }

    def clear(self) -> int:
        """Delete every key of this namespace (sessions and blobs); returns how many keys went."""
        with self._translate("clear"):
            pattern = "".join("\\" + c if c in "*?[]\\" else c for c in self.namespace) + ":*"
            keys = list(self._client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 1000):
                self._client.delete(*keys[start : start + 1000])
        return len(keys)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._client.close()
        except self._redis.exceptions.RedisError:
            pass
