"""The Redis/Valkey backend against a throwaway local redis-server (marker `redis`)."""

from __future__ import annotations

import importlib.util
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from seqkv import SessionNotFoundError, StoreError
from seqkv.backends import CorruptRecordError, open_backend
from seqkv.backends.redis import key_prefix
from seqkv.backends.testing import free_port, local_redis_server, redis_server_binary

from backend_records import make_record
from test_backends import BackendContract

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(importlib.util.find_spec("redis") is None, reason="redis-py not installed (seqkv[redis])"),
]

needs_server = pytest.mark.skipif(
    redis_server_binary() is None, reason="no redis-server binary (apt-get install redis-server)"
)


@pytest.fixture(scope="module")
def redis_url():
    if redis_server_binary() is None:
        pytest.skip("no redis-server binary (apt-get install redis-server)")
    with local_redis_server() as url:
        yield url


_namespaces = iter(range(1_000_000))


@pytest.fixture
def namespace():
    return f"test{next(_namespaces)}"


@needs_server
class TestRedisContract(BackendContract):
    @pytest.fixture
    def backend_factory(self, redis_url, namespace):
        return lambda: open_backend(f"{redis_url}?namespace={namespace}")

    @pytest.fixture
    def backend(self, backend_factory):
        with backend_factory() as b:
            yield b
            b.clear()


@needs_server
def test_namespaces_are_separate(redis_url):
    with open_backend(f"{redis_url}?namespace=n1") as a, open_backend(f"{redis_url}?namespace=n2") as b:
        a.put("x", make_record(1))
        a.put_blob("trie", b"A")
        assert "x" not in b and b.get_blob("trie") is None and b.ids() == []
        assert a.clear() >= 2 and a.ids() == []


def _record_key(raw, namespace: str, session_id: str) -> str:
    prefix = key_prefix(namespace)
    return prefix + "r:" + raw.hget(prefix + "ids", session_id).decode()


@needs_server
def test_namespace_prefixes_cannot_collide(redis_url):
    """The issue's cases: under raw key prefixes, namespace `tenant` read and overwrote the
    sessions of namespace `tenant:session:x`, its clear() deleted them, and a session id
    clobbered another namespace's id set."""
    with open_backend(f"{redis_url}?namespace=tenant") as a, \
            open_backend(f"{redis_url}?namespace=tenant:session:x") as b, \
            open_backend(f"{redis_url}?namespace=tenant:session") as c:
        b.put("y", make_record(1))
        b.put_blob("trie", b"B")
        c.put("s1", make_record(2))
        # `tenant` + id `x:session:y` was the key of `tenant:session:x` + id `y`
        assert "x:session:y" not in a
        with pytest.raises(SessionNotFoundError):
            a.get("x:session:y")
        a.put("x:session:y", make_record(3))
        assert b.get("y") == make_record(1)
        # `tenant` + id `session:sessions` was the id set of `tenant:session`; + blob `x:blob:trie` b's blob
        a.put("session:sessions", make_record(4))
        a.put_blob("x:blob:trie", b"A")
        assert c.ids() == ["s1"] and c.get("s1") == make_record(2)
        assert b.get_blob("trie") == b"B"
        a.clear()
        assert a.ids() == [] and b.ids() == ["y"] and c.ids() == ["s1"] and b.get_blob("trie") == b"B"
        b.clear()
        c.clear()


@needs_server
def test_counter_survives_clear_and_reopen(redis_url, namespace):
    url = f"{redis_url}?namespace={namespace}"
    with open_backend(url) as b:
        assert [b.allocate_number() for _ in range(3)] == [1, 2, 3]
        b.put("a", make_record(1))
        b.clear()
        assert b.ids() == []
    with open_backend(url) as b:
        assert b.allocate_number() == 4
        b.clear()


@needs_server
def test_corrupt_entry(redis_url, namespace):
    import redis

    with open_backend(f"{redis_url}?namespace={namespace}") as b:
        b.put("a", make_record(1))
        b.put("b", make_record(2))
        b.put("c", make_record(3))
        b.put_blob("trie", b"T")
        raw = redis.Redis.from_url(redis_url)
        raw.hset(_record_key(raw, namespace, "a"), "container", b"flipped")
        raw.hdel(_record_key(raw, namespace, "b"), "mcrc")
        raw.hset(key_prefix(namespace) + "b:trie", "data", b"X")
        with pytest.raises(CorruptRecordError, match="'a'.*CRC"):
            b.get("a")
        with pytest.raises(CorruptRecordError, match="'b'.*missing fields"):
            b.get("b")
        with pytest.raises(CorruptRecordError, match="blob 'trie'"):
            b.get_blob("trie")
        assert sorted(b.scan_meta().corrupt) == ["b"]  # a's metadata is intact: only get() checks containers
        # a record copied under another id is refused too
        c_fields = raw.hgetall(_record_key(raw, namespace, "c"))
        raw.hset(_record_key(raw, namespace, "a"), mapping=c_fields)
        with pytest.raises(CorruptRecordError, match="'a'.*another session"):
            b.get_meta("a")
        raw.hset(key_prefix(namespace) + "ids", "a", raw.hget(key_prefix(namespace) + "ids", "c"))  # a pointer swap
        with pytest.raises(CorruptRecordError, match="'a'.*another session"):
            b.get("a")
        scan = b.scan_meta()
        assert sorted(scan.corrupt) == ["a", "b"] and sorted(scan.meta) == ["c"]
        assert b.quarantine("b", reason=scan.corrupt["b"]) and b.quarantined() == ["b"] and b.ids() == ["a", "c"]
        raw.close()
        b.clear()


def _server_pid(url: str) -> int:
    import redis

    raw = redis.Redis.from_url(url)
    try:
        return int(raw.info("server")["process_id"])
    finally:
        raw.close()


@needs_server
def test_write_to_a_stalled_server_fails_in_time_and_never_lands(namespace):
    """A put that times out on a stopped server raises StoreError within the timeout, and is
    not applied when the server resumes (before: 2x the timeout, then applied later)."""
    timeout = 1.0
    with local_redis_server() as url, open_backend(f"{url}?namespace={namespace}&timeout={timeout}") as b:
        b.put("a", make_record(1))
        pid = _server_pid(url)
        os.kill(pid, signal.SIGSTOP)
        try:
            for action in (lambda: b.put("a", make_record(2)), lambda: b.put("new", make_record(3)),
                           lambda: b.delete("a"), lambda: b.allocate_number()):
                t0 = time.monotonic()
                with pytest.raises(StoreError):
                    action()
                assert time.monotonic() - t0 < timeout * 1.5
        finally:
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.2)  # the server now runs the queued scripts, past their deadlines
        assert b.get("a") == make_record(1) and b.ids() == ["a"]
        assert b.allocate_number() == 1
        b.put("a", make_record(4))  # and goes on normally
        assert b.get("a") == make_record(4)


@needs_server
def test_put_is_idempotent_under_its_token(redis_url, namespace):
    """The same put delivered twice (redis-py resends once after a broken connection) is
    applied once: a resend does not replace what the first delivery wrote."""
    with open_backend(f"{redis_url}?namespace={namespace}") as b:
        calls = []
        script = b._scripts["put"]
        b._scripts["put"] = lambda keys, args: calls.append((keys, args)) or script(keys=keys, args=args)
        b.put("a", make_record(1))
        keys, args = calls[0]
        assert script(keys=keys, args=[b._deadline_us(), *args[1:]]) == 0  # the resend: a no-op
        assert b.get("a") == make_record(1) and len(b.scan_meta().meta) == 1
        b.clear()


@needs_server
def test_legacy_layout_migration(redis_url, namespace):
    """Keys written by the previous layout ({ns}:session:{id} ...) are copied as stored and
    read with their old checksums; the open warns while only old keys exist."""
    import redis

    raw = redis.Redis.from_url(redis_url)
    records = {"a": make_record(1), "b:c": make_record(2)}
    for sid, rec in records.items():
        meta, att = rec.meta_json(), rec.attachments_bytes()
        dcrc = zlib.crc32(att, zlib.crc32(rec.container, zlib.crc32(struct.pack("<QQ", len(rec.container), len(att)))))
        raw.hset(f"{namespace}:session:{sid}", mapping={"container": rec.container, "meta": meta, "att": att,
                                                        "dcrc": dcrc, "mcrc": zlib.crc32(meta), "updated": "0"})
        raw.sadd(f"{namespace}:sessions", sid)
    raw.hset(f"{namespace}:blob:trie", mapping={"data": b"T", "crc": zlib.crc32(b"T"), "version": 5})
    raw.sadd(f"{namespace}:blobs", "trie")
    with pytest.warns(UserWarning, match="migrate_legacy_layout"):
        b = open_backend(f"{redis_url}?namespace={namespace}")
    with b:
        assert b.ids() == []
        assert b.migrate_legacy_layout() == (2, 1)
        assert b.migrate_legacy_layout() == (0, 0)  # idempotent
        assert {sid: b.get(sid) for sid in b.ids()} == records
        assert b.get_blob_versioned("trie") == (b"T", 5)
        raw.hset(_record_key(raw, namespace, "a"), "container", b"flipped")
        with pytest.raises(CorruptRecordError, match="'a'"):
            b.get("a")
        b.clear()
    assert raw.exists(f"{namespace}:session:a")  # old keys left for the operator
    raw.delete(f"{namespace}:session:a", f"{namespace}:session:b:c", f"{namespace}:sessions",
               f"{namespace}:blob:trie", f"{namespace}:blobs")
    raw.close()


def test_unreachable_redis_is_a_fast_store_error():
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="cannot reach Redis"):
        open_backend(f"redis://127.0.0.1:{port}/0?timeout=1")
    assert time.monotonic() - t0 < 5


@needs_server
def test_server_going_away_is_a_store_error(namespace):
    with local_redis_server() as url:
        b = open_backend(f"{url}?namespace={namespace}&timeout=1")
        b.put("a", make_record(1))
    # the server is stopped now
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="cannot reach Redis"):
        b.get("a")
    with pytest.raises(StoreError):
        b.put("b", make_record(2))
    assert time.monotonic() - t0 < 10
    b.close()


SHARER = """
import sys
sys.path.insert(0, {tests!r})
from seqkv.backends import open_backend
from backend_records import make_record
me, other, n = {me}, {other}, {n}
with open_backend({url!r}) as b:
    for i in range(n):
        b.put("p%d-%d" % (me, i), make_record(me * 1000 + i))
        # merge this process's part into the shared prefix index (a read-modify-write)
        b.update_blob("trie", lambda old: (old or b"") + b"%d:%d," % (me, i))
    b.put_blob("done-%d" % me, b"1")
    # wait for the other process, then restore every one of its sessions
    import time
    deadline = time.monotonic() + 60
    while b.get_blob("done-%d" % other) is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for i in range(n):
        assert b.get("p%d-%d" % (other, i)) == make_record(other * 1000 + i)
    print("ok", len(b))
"""


@needs_server
def test_two_processes_store_and_restore_each_others_sessions(redis_url, namespace):
    url = f"{redis_url}?namespace={namespace}"
    n = 40
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SHARER.format(tests=str(ROOT / "tests" / "backends"), me=me, other=1 - me, n=n, url=url)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for me in (0, 1)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
        assert out.decode().startswith("ok")
    with open_backend(url) as b:
        assert len(b) == 2 * n
        entries = b.get_blob("trie").decode().strip(",").split(",")
        # both processes' index updates survived the concurrent read-modify-writes
        assert sorted(entries) == sorted(f"{me}:{i}" for me in (0, 1) for i in range(n))
        assert b.blob_version("trie") == 2 * n
        b.clear()


@needs_server
def test_cli_store_commands_on_redis(capsys, tmp_path, redis_url, namespace):
    from seqkv.cli import main

    db = f"{redis_url}?namespace={namespace}"
    src = tmp_path / "ids.txt"
    src.write_text(" ".join(str(i) for i in range(500)))
    assert main(["-q", "store", "put", "--db", db, "--tokens", "--codec", "raw", "s1", str(src)]) == 0
    assert main(["store", "ls", "--db", db, "--json"]) == 0
    rows = __import__("json").loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == ["s1"] and rows[0]["tokens"] == 500
    out = tmp_path / "s1.skv"
    assert main(["store", "get", "--db", db, "s1", "-o", str(out)]) == 0
    assert out.read_bytes()[:4] == b"SQKV"
    assert main(["store", "stats", "--db", db]) == 0
    assert "RedisBackend" in capsys.readouterr().out
    port = free_port()
    assert main(["store", "ls", "--db", f"redis://127.0.0.1:{port}/0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach Redis" in err
