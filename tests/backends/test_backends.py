"""The Backend contract (memory, SQLite; Redis in test_redis.py) and SQLite's error handling."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_threads

from seqkv import InvalidInputError, SessionNotFoundError, StoreError
from seqkv.backends import CorruptRecordError, MemoryBackend, SessionRecord, SQLiteBackend, open_backend
from seqkv.errors import CorruptStreamError, FormatVersionError

ROOT = Path(__file__).resolve().parents[2]


def make_record(i: int, size: int = 300) -> SessionRecord:
    body = hashlib.sha256(str(i).encode()).digest()
    container = (body * (size // 32 + 1))[:size]
    meta = {
        "tokens": i,
        "prefix": {"parent": f"s{i - 1}" if i else None, "length": i // 2},
        "schedule": {"prefill_chunks": [i, 3], "single_steps": 2},
        "layer_hashes": [body.hex()[:16]] * 3,
        "tier": "cold",
        "sizes": {"container": size},
        "text": "naïve ✓",
    }
    return SessionRecord(container, meta, {"residual": body} if i % 2 else {})


class BackendContract:
    """Behaviour every backend shares; subclasses provide the ``backend`` fixture."""

    def test_put_get_roundtrip(self, backend):
        rec = make_record(3)
        backend.put("a", rec)
        got = backend.get("a")
        assert got == rec
        assert got.meta["prefix"] == {"parent": "s2", "length": 1}
        assert backend.get_meta("a") == got.meta
        assert backend.contains("a") and "a" in backend and "b" not in backend

    def test_meta_json_roundtrip_is_uniform(self, backend):
        backend.put("t", SessionRecord(b"x", {"pair": (1, 2), "nested": {"k": [1.5, None, True]}}))
        assert backend.get("t").meta == {"pair": [1, 2], "nested": {"k": [1.5, None, True]}}

    def test_missing_session(self, backend):
        with pytest.raises(SessionNotFoundError, match="'nope'"):
            backend.get("nope")
        with pytest.raises(KeyError):  # SessionNotFoundError is a KeyError too
            backend.get("nope")
        with pytest.raises(SessionNotFoundError):
            backend.patch_meta("nope", {"a": 1})
        with pytest.raises(SessionNotFoundError):
            backend.size("nope")
        with pytest.raises(SessionNotFoundError):
            backend.get_meta("nope")
        assert backend.delete("nope") is False

    def test_replace_and_delete(self, backend):
        backend.put("a", make_record(1))
        backend.put("a", make_record(2))
        assert backend.get("a") == make_record(2)
        assert backend.get("a").attachments == {}  # the old attachment went with the old record
        assert backend.delete("a") is True
        assert "a" not in backend and backend.ids() == []

    def test_ids_sorted_len_iter(self, backend):
        names = ["b", "a", "ü", "z:1", "sess with space"]
        for i, n in enumerate(names):
            backend.put(n, make_record(i))
        assert backend.ids() == sorted(names)
        assert list(backend) == sorted(names)
        assert len(backend) == len(names)

    def test_size_and_stats(self, backend):
        rec = make_record(5, size=1000)
        backend.put("a", rec)
        assert backend.size("a") == rec.nbytes
        st = backend.stats()
        assert st["sessions"] == 1 and st["bytes"] == rec.nbytes

    def test_patch_meta(self, backend):
        backend.put("a", make_record(4))
        new = backend.patch_meta("a", {"tier": "warm", "text": None, "extra": [1]})
        assert new["tier"] == "warm" and "text" not in new and new["extra"] == [1]
        got = backend.get("a")
        assert got.meta == new and got.container == make_record(4).container

    def test_blobs(self, backend):
        assert backend.get_blob("trie") is None and backend.blob_version("trie") == 0
        assert backend.put_blob("trie", b"snap1") == 1
        assert backend.put_blob("trie", b"snap2") == 2
        assert backend.get_blob_versioned("trie") == (b"snap2", 2)
        assert backend.blob_names() == ["trie"]
        assert backend.delete_blob("trie") is True and backend.delete_blob("trie") is False
        assert backend.get_blob_versioned("trie") == (None, 3)
        assert backend.blob_names() == []
        assert backend.put_blob("trie", b"") == 4 and backend.get_blob("trie") == b""

    def test_put_with_blobs_is_one_write(self, backend):
        backend.put("a", make_record(1), blobs={"trie": b"T1", "index": b"I"})
        assert backend.get_blob("trie") == b"T1" and backend.get_blob("index") == b"I"
        # an invalid blob rejects the whole put: neither the session nor the blobs change
        with pytest.raises(InvalidInputError):
            backend.put("b", make_record(2), blobs={"trie": b"T2", "bad": "not bytes"})  # type: ignore[dict-item]
        assert "b" not in backend and backend.get_blob("trie") == b"T1"

    def test_update_blob(self, backend):
        def append(old):
            return (old or b"") + b"x"

        r = backend.update_blob("log", append)
        assert (r.data, r.version) == (b"x", 1)
        r = backend.update_blob("log", append)
        assert (r.data, r.version) == (b"xx", 2)
        r = backend.update_blob("log", lambda old: None)  # keep as is
        assert (r.data, r.version) == (b"xx", 2)

    def test_invalid_inputs_change_nothing(self, backend):
        backend.put("a", make_record(1))
        with pytest.raises(InvalidInputError, match="JSON"):
            backend.put("a", SessionRecord(b"x", {"bad": object()}))
        with pytest.raises(InvalidInputError, match="JSON"):
            backend.put("a", SessionRecord(b"x", {"nan": float("nan")}))
        with pytest.raises(InvalidInputError):
            backend.put("", make_record(1))
        with pytest.raises(InvalidInputError):
            backend.put(3, make_record(1))  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError):
            SessionRecord("text")  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="attachment name"):
            SessionRecord(b"x", {}, {"bad name!": b""})
        assert backend.get("a") == make_record(1)

    def test_threads(self, backend):
        def work(t: int) -> None:
            for i in range(40):
                sid = f"t{t}-{i}"
                backend.put(sid, make_record(t * 100 + i))
                assert backend.get(sid) == make_record(t * 100 + i)
                backend.put("shared", make_record(i))
                backend.get("shared")
                backend.update_blob("counter", lambda old: str(int(old or b"0") + 1).encode())

        run_threads(work, [(t,) for t in range(8)])
        assert len(backend) == 8 * 40 + 1
        assert backend.get_blob("counter") == b"320"  # no lost update

    def test_context_manager_and_closed(self, backend_factory):
        with backend_factory() as b:
            b.put("a", make_record(1))
        with pytest.raises(StoreError, match="closed"):
            b.get("a")
        b.close()  # idempotent


class TestMemory(BackendContract):
    @pytest.fixture
    def backend_factory(self):
        return MemoryBackend

    @pytest.fixture
    def backend(self):
        with open_backend(":memory:") as b:
            yield b


@pytest.mark.parametrize("sync", ["full", "normal"])
class TestSQLite(BackendContract):
    @pytest.fixture
    def backend_factory(self, tmp_path, sync):
        return lambda: SQLiteBackend(tmp_path / "s.sqlite", synchronous=sync)

    @pytest.fixture
    def backend(self, backend_factory):
        with backend_factory() as b:
            yield b

    def test_persists_across_reopen(self, tmp_path, sync):
        path = tmp_path / "p.sqlite"
        with SQLiteBackend(path, synchronous=sync) as b:
            b.put("a", make_record(1), blobs={"trie": b"T"})
        with open_backend(str(path)) as b:
            assert b.get("a") == make_record(1) and b.get_blob_versioned("trie") == (b"T", 1)
            assert b.stats()["synchronous"] == "full"


def test_open_backend_dispatch(tmp_path):
    assert isinstance(open_backend(":memory:"), MemoryBackend)
    b = open_backend(tmp_path / "a.sqlite")
    assert isinstance(b, SQLiteBackend) and open_backend(b) is b
    b.close()
    with open_backend(f"sqlite://{tmp_path}/b.sqlite?synchronous=normal") as b:
        assert isinstance(b, SQLiteBackend) and b.synchronous == "NORMAL" and b.path == tmp_path / "b.sqlite"
    with pytest.raises(InvalidInputError, match="scheme"):
        open_backend("ftp://x/y")
    with pytest.raises(InvalidInputError, match="option"):
        open_backend(f"sqlite://{tmp_path}/c.sqlite?color=red")
    with pytest.raises(InvalidInputError, match="synchronous"):
        open_backend(tmp_path / "d.sqlite", synchronous="sometimes")


class TestSQLiteErrors:
    def test_bad_paths(self, tmp_path):
        with pytest.raises(StoreError, match="does not exist"):
            open_backend(str(tmp_path / "no" / "such" / "dir.sqlite"))
        with pytest.raises(StoreError, match="is a directory"):
            open_backend(str(tmp_path))

    def test_not_a_database(self, tmp_path):
        path = tmp_path / "junk.sqlite"
        path.write_bytes(b"this is not a database at all" * 100)
        with pytest.raises(StoreError, match="not a SQLite database"):
            open_backend(str(path))
        assert path.read_bytes() == b"this is not a database at all" * 100  # untouched

    def test_other_application_database(self, tmp_path):
        path = tmp_path / "other.sqlite"
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE people (name TEXT)")
        con.commit()
        con.close()
        with pytest.raises(StoreError, match="another application"):
            open_backend(str(path))

    def test_newer_schema(self, tmp_path):
        path = tmp_path / "new.sqlite"
        SQLiteBackend(path).close()
        con = sqlite3.connect(path)
        con.execute("PRAGMA user_version = 99")
        con.commit()
        con.close()
        with pytest.raises(FormatVersionError, match="schema version 99"):
            open_backend(str(path))

    def _corrupt(self, path: Path, sql: str, *args) -> None:
        con = sqlite3.connect(path)
        con.execute(sql, args)
        con.commit()
        con.close()

    def test_corrupt_rows(self, tmp_path):
        path = tmp_path / "c.sqlite"
        with SQLiteBackend(path) as b:
            for i in range(4):
                b.put(f"s{i}", make_record(i))
            b.put_blob("trie", b"snapshot")
        self._corrupt(path, "UPDATE sessions SET container = ? WHERE id = 's0'", b"flipped")
        self._corrupt(path, "UPDATE sessions SET meta = ? WHERE id = 's1'", b'{"tokens": 1')
        bad_json = b"[1, 2]"
        import zlib

        self._corrupt(path, "UPDATE sessions SET meta = ?, meta_crc = ? WHERE id = 's2'", bad_json, zlib.crc32(bad_json))
        self._corrupt(path, "UPDATE blobs SET data = ? WHERE name = 'trie'", b"snapshoT")
        with SQLiteBackend(path) as b:
            with pytest.raises(CorruptRecordError, match="'s0'.*container fails its CRC"):
                b.get("s0")
            with pytest.raises(CorruptStreamError, match="'s1'.*metadata fails its CRC"):
                b.get("s1")
            with pytest.raises(CorruptRecordError, match="'s1'.*metadata fails its CRC"):
                b.get_meta("s1")
            with pytest.raises(StoreError, match="'s2'.*not an object"):
                b.get("s2")
            with pytest.raises(CorruptRecordError, match="'s1'"):
                b.patch_meta("s1", {"tier": "hot"})  # does not bless a corrupt row with a new checksum
            with pytest.raises(CorruptRecordError, match="blob 'trie'"):
                b.get_blob("trie")
            assert b.get("s3") == make_record(3)  # the intact row is unaffected
            assert b.ids() == ["s0", "s1", "s2", "s3"]
            b.put("s0", make_record(0))  # a corrupt row can be overwritten
            assert b.get("s0") == make_record(0)

    def test_locked_database_fails_cleanly(self, tmp_path):
        path = tmp_path / "l.sqlite"
        with SQLiteBackend(path) as b:
            b.put("a", make_record(1))
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with SQLiteBackend(path, busy_timeout_s=0.2) as b:
                with pytest.raises(StoreError, match="locked"):
                    b.put("a", make_record(2))
                assert b.get("a") == make_record(1)  # readers go on under WAL
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        with SQLiteBackend(path) as b:
            assert b.get("a") == make_record(1)
            b.put("a", make_record(2))
            assert b.get("a") == make_record(2)


WRITER = """
import sys
from seqkv.backends import SQLiteBackend
sys.path.insert(0, {tests!r})
from test_backends import make_record
with SQLiteBackend({path!r}) as b:
    for i in range({start}, {stop}):
        b.update_blob("log", lambda old: (old or b"") + b"%d," % i)
        b.put("p%d" % i, make_record(i))
"""


def test_two_processes_share_one_file(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    SQLiteBackend(path).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER.format(tests=str(ROOT / "tests" / "backends"), path=path, start=s, stop=s + 60)]
        )
        for s in (0, 1000)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    with SQLiteBackend(path) as b:
        assert len(b) == 120
        for i in [*range(60), *range(1000, 1060)]:
            assert b.get("p%d" % i) == make_record(i)
        log = [int(x) for x in b.get_blob("log").decode().strip(",").split(",")]
        assert sorted(log) == [*range(60), *range(1000, 1060)]  # no update lost between processes
