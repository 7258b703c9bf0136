"""The Redis/Valkey backend against a throwaway local redis-server (marker `redis`)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqkv import StoreError
from seqkv.backends import CorruptRecordError, open_backend
from seqkv.backends.testing import free_port, local_redis_server, redis_server_binary

from test_backends import BackendContract, make_record

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


@needs_server
def test_corrupt_entry(redis_url, namespace):
    import redis

    with open_backend(f"{redis_url}?namespace={namespace}") as b:
        b.put("a", make_record(1))
        b.put("b", make_record(2))
        b.put_blob("trie", b"T")
        raw = redis.Redis.from_url(redis_url)
        raw.hset(f"{namespace}:session:a", "container", b"flipped")
        raw.hdel(f"{namespace}:session:b", "mcrc")
        raw.hset(f"{namespace}:blob:trie", "data", b"X")
        raw.close()
        with pytest.raises(CorruptRecordError, match="'a'.*CRC"):
            b.get("a")
        with pytest.raises(CorruptRecordError, match="'b'.*missing fields"):
            b.get("b")
        with pytest.raises(CorruptRecordError, match="blob 'trie'"):
            b.get_blob("trie")
        b.clear()


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
from test_backends import make_record
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
