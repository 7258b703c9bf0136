"""The Backend contract (memory, SQLite; Redis in test_redis.py) and SQLite's error handling."""

from __future__ import annotations

import json
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from backend_records import make_record
from helpers import run_threads

from seqkv import InvalidInputError, SessionNotFoundError, StoreError
from seqkv.backends import CorruptRecordError, MemoryBackend, SessionRecord, SQLiteBackend, open_backend
from seqkv.errors import CorruptStreamError, FormatVersionError

ROOT = Path(__file__).resolve().parents[2]


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def is_json(value: object, depth: int = 0) -> bool:
    """The test's own definition of what session metadata may hold."""
    if depth > 60:
        return False
    if value is None or isinstance(value, (bool, int)):
        return True
    if isinstance(value, float):
        return value == value and abs(value) != float("inf")
    if isinstance(value, str):
        return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, list):
        return all(is_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_json(k) and is_json(v, depth + 1) for k, v in value.items())
    return False


def valid_name(value: str) -> bool:
    try:
        return 0 < len(value.encode("utf-8")) <= 1024 and "\x00" not in value
    except UnicodeEncodeError:
        return False


_surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
odd_text = st.one_of(
    st.text(max_size=8),
    st.text(st.one_of(st.characters(), _surrogates, st.just("\x00")), max_size=6),
    st.integers(1020, 1030).map(lambda n: "k" * n),
    st.integers(340, 345).map(lambda n: "€" * n),  # 3 UTF-8 bytes each
)
odd_values = st.one_of(
    odd_text,
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.binary(max_size=8),
    st.just(bytearray(b"ba")),
    st.lists(st.integers(), max_size=3),
    st.just(object()),
)
odd_meta = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), odd_text, st.binary(max_size=3)),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(odd_text, st.integers(), st.none()), children, max_size=3),
    ),
    max_leaves=8,
).map(lambda v: v if isinstance(v, dict) else {"v": v})


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

    @given(meta=st.binary(min_size=1, max_size=64))
    @settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
    def test_binary_meta_roundtrips_as_bytes(self, backend, meta):
        backend.put("bin", SessionRecord(b"payload", meta, {"r": b"x"}))
        assert backend.get("bin").meta == meta and backend.get_meta("bin") == meta
        assert backend.scan_meta().meta["bin"] == meta
        assert backend.size("bin") == len(b"payload") + 1 + len(meta) + len(SessionRecord(b"", {}, {"r": b"x"}).attachments_bytes())
        with pytest.raises(InvalidInputError, match="binary session metadata cannot be patched"):
            backend.patch_meta("bin", {"a": 1})
        assert backend.get_meta("bin") == meta

    def test_empty_binary_meta_is_refused(self, backend):
        with pytest.raises(InvalidInputError, match="empty"):
            backend.put("e", SessionRecord(b"x", b""))
        assert "e" not in backend

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

    # -- numbers ----------------------------------------------------------------------

    def test_allocate_number_never_repeats(self, backend):
        assert [backend.allocate_number() for _ in range(3)] == [1, 2, 3]
        assert backend.allocate_number("other") == 1  # counters are independent
        backend.put("a", make_record(1))
        backend.delete("a")
        assert backend.allocate_number() == 4  # deletes give nothing back
        assert backend.allocate_number(after=100) == 101  # start past numbers used before the counter
        assert backend.allocate_number(after=5) == 102  # ... and never go back
        for bad in ("", "\x00", "\ud800", 3, None):
            with pytest.raises(InvalidInputError):
                backend.allocate_number(bad)
        for bad in (-1, 2**53, 1.5, True, "1"):
            with pytest.raises(InvalidInputError):
                backend.allocate_number(after=bad)
        assert backend.allocate_number() == 103  # the refused calls allocated nothing

    def test_allocate_number_threads(self, backend):
        got: list[list[int]] = [[] for _ in range(8)]

        def work(t: int) -> None:
            got[t].extend(backend.allocate_number() for _ in range(25))

        run_threads(work, [(t,) for t in range(8)])
        numbers = [n for per in got for n in per]
        assert sorted(numbers) == list(range(1, 201))
        assert all(per == sorted(per) for per in got)  # increasing as each thread saw them

    # -- atomic replacement -----------------------------------------------------------

    def test_reput_is_atomic_for_readers(self, backend):
        """Readers hammer get() while a writer re-puts the id: every read is one complete
        version (old or new), never a SessionNotFoundError, never a mix of two."""
        versions = [make_record(i, size=20_000 + 1000 * i) for i in range(4)]
        backend.put("hot", versions[0])
        stop = threading.Event()
        reads = [0] * 4

        def reader(t: int) -> None:
            while not stop.is_set():
                got = backend.get("hot")
                assert got in versions, "a read mixed two versions"
                assert backend.get_meta("hot") in [v.meta for v in versions]
                reads[t] += 1

        def writer() -> None:
            deadline = time.monotonic() + 30
            try:
                i = 0
                while (i < 100 or min(reads) < 20) and time.monotonic() < deadline:
                    i += 1
                    backend.put("hot", versions[i % 4])
            finally:
                stop.set()

        run_threads(lambda role, t: writer() if role == "w" else reader(t), [("w", 0), *(("r", t) for t in range(4))])
        assert all(reads), reads

    # -- quarantine and scans ---------------------------------------------------------

    def test_quarantine(self, backend):
        for i in range(3):
            backend.put(f"s{i}", make_record(i))
        assert backend.quarantined() == []
        assert backend.quarantine("s1", reason="metadata fails its CRC") is True
        assert backend.ids() == ["s0", "s2"] and "s1" not in backend and len(backend) == 2
        with pytest.raises(SessionNotFoundError):
            backend.get("s1")
        assert backend.quarantined() == ["s1"] and backend.stats()["quarantined"] == 1
        assert sorted(backend.scan_meta().meta) == ["s0", "s2"]
        assert backend.quarantine("s1") is False and backend.quarantine("nope") is False
        backend.put("s1", make_record(7))  # the id starts afresh
        assert backend.get("s1") == make_record(7)
        assert backend.quarantine("s1") is True and backend.quarantined() == ["s1"]
        with pytest.raises(InvalidInputError):
            backend.quarantine("s0", reason=b"bytes")  # type: ignore[arg-type]
        assert "s0" in backend

    def test_scan_meta_of_intact_records(self, backend):
        for i in range(5):
            backend.put(f"s{i}", make_record(i))
        scan = backend.scan_meta()
        assert scan.corrupt == {}
        assert scan.meta == {f"s{i}": dict(make_record(i).meta) for i in range(5)}

    # -- bad input --------------------------------------------------------------------

    def test_bad_arguments_raise_invalid_input(self, backend):
        backend.put("a", make_record(1))
        calls = [
            lambda: backend.put("b", b"not a record"),  # type: ignore[arg-type]
            lambda: backend.put("b", make_record(1), blobs=[("trie", b"x")]),  # type: ignore[arg-type]
            lambda: backend.put("b", SessionRecord(b"x", {1: "int key"})),  # json.dumps would make it "1"
            lambda: backend.put("b", SessionRecord(b"x", {"s": "\udc80"})),
            lambda: backend.put("b", SessionRecord(b"x", {"deep": nested(200)})),
            lambda: backend.put("b", SessionRecord(b"x", {"big": 10**5000})),
            lambda: backend.patch_meta("a", ["not", "a", "dict"]),  # type: ignore[arg-type]
            lambda: backend.patch_meta("a", {2: "x"}),  # type: ignore[dict-item]
            lambda: backend.patch_meta("a", {"x": {1, 2}}),
            lambda: backend.update_blob("t", "not callable"),  # type: ignore[arg-type]
            lambda: backend.update_blob("t", lambda old: b"x", max_attempts=0),
            lambda: backend.update_blob("t", lambda old: 12),  # type: ignore[arg-type, return-value]
            lambda: backend.put_blob("t", "text"),  # type: ignore[arg-type]
            lambda: backend.get_blob("\ud800"),
            lambda: backend.get("x" * 1025),
            lambda: backend.get("é" * 513),  # 1026 UTF-8 bytes
        ]
        for call in calls:
            with pytest.raises(InvalidInputError):
                call()
        assert backend.ids() == ["a"] and backend.get("a") == make_record(1) and backend.blob_names() == []

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(value=odd_values)
    def test_odd_ids_and_names(self, backend, value):
        """Any value as an id or a name: accepted (and round-tripped) or InvalidInputError."""
        for call in (
            lambda: backend.put(value, SessionRecord(b"c", {"k": 1})),
            lambda: backend.get(value),
            lambda: backend.contains(value),
            lambda: backend.delete(value),
            lambda: backend.quarantine(value),
            lambda: backend.put_blob(value, b"b"),
            lambda: backend.allocate_number(value),
        ):
            try:
                call()
            except (InvalidInputError, SessionNotFoundError):
                pass
        if isinstance(value, str) and valid_name(value):
            assert backend.contains(value) is False  # put, then deleted or quarantined
            assert backend.get_blob(value) == b"b"

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(container=odd_values, meta=odd_meta)
    def test_odd_records(self, backend, container, meta):
        """Any container and metadata: stored and read back as their JSON round trip when they
        are bytes and JSON (str keys only: no silent {1: x} -> {"1": x}), else InvalidInputError
        with nothing written."""
        valid = isinstance(container, (bytes, bytearray)) and is_json(meta)
        if not valid:
            with pytest.raises(InvalidInputError):
                backend.put("r", SessionRecord(container, meta))
            assert "r" not in backend
            return
        backend.put("r", SessionRecord(container, meta))
        got = backend.get("r")
        assert got.container == container and got.meta == json.loads(json.dumps(meta))
        backend.delete("r")

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
        from seqkv.backends.rows import checksums

        bad_json = b"[1, 2]"
        s2 = checksums("s2", make_record(2).container, bad_json, b"")
        self._corrupt(path, "UPDATE sessions SET meta = ?, meta_crc = ? WHERE id = 's2'", bad_json, s2.meta_crc)
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
from backend_records import make_record
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


# -- records bound to their id -------------------------------------------------------

def _copy_row(path: Path, src: str, dst: str) -> None:
    """Overwrite row ``dst`` with every stored column of row ``src`` (a row swap, as a bad
    restore or a hand edit would do it)."""
    con = sqlite3.connect(path)
    cols = "meta, meta_crc, data_crc, row_format, container, attachments"
    con.execute(f"UPDATE sessions SET ({cols}) = (SELECT {cols} FROM sessions WHERE id = ?) WHERE id = ?", (src, dst))
    con.commit()
    con.close()


def test_sqlite_row_copied_under_another_id_is_corrupt(tmp_path):
    path = tmp_path / "swap.sqlite"
    with SQLiteBackend(path) as b:
        for i in range(3):
            b.put(f"s{i}", make_record(i))
    _copy_row(path, "s2", "s0")
    with SQLiteBackend(path) as b:
        with pytest.raises(CorruptRecordError, match="'s0'.*another session"):
            b.get("s0")
        with pytest.raises(CorruptRecordError, match="'s0'"):
            b.get_meta("s0")
        scan = b.scan_meta()
        assert sorted(scan.corrupt) == ["s0"] and sorted(scan.meta) == ["s1", "s2"]
        assert b.quarantine("s0", reason=scan.corrupt["s0"]) is True
        assert b.ids() == ["s1", "s2"] and b.quarantined() == ["s0"] and b.scan_meta().corrupt == {}
        assert b.get("s2") == make_record(2)
    con = sqlite3.connect(path)  # quarantine keeps the bad row as it was, with the reason
    reason, container = con.execute("SELECT reason, container FROM quarantine WHERE id = 's0'").fetchone()
    con.close()
    assert "another session" in reason and container == make_record(2).container


SCHEMA_1 = """
CREATE TABLE sessions (id TEXT PRIMARY KEY, container BLOB NOT NULL, meta BLOB NOT NULL,
    attachments BLOB NOT NULL, data_crc INTEGER NOT NULL, meta_crc INTEGER NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE blobs (name TEXT PRIMARY KEY, data BLOB, crc INTEGER, version INTEGER NOT NULL, updated_at REAL NOT NULL);
"""


def write_schema_1_store(path: Path, records: dict[str, SessionRecord]) -> None:
    """A store file exactly as seqkv wrote it before row format 2 (schema version 1)."""
    con = sqlite3.connect(path)
    con.executescript(SCHEMA_1)
    for sid, rec in records.items():
        meta, att = rec.meta_json(), rec.attachments_bytes()
        dcrc = zlib.crc32(att, zlib.crc32(rec.container, zlib.crc32(struct.pack("<QQ", len(rec.container), len(att)))))
        con.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, 0)", (sid, rec.container, meta, att, dcrc, zlib.crc32(meta)))
    con.execute("INSERT INTO blobs VALUES ('trie', x'54', ?, 3, 0)", (zlib.crc32(b"T"),))
    con.execute("PRAGMA application_id = 1397836630")
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()


def test_sqlite_reads_and_upgrades_schema_1_files(tmp_path):
    path = tmp_path / "old.sqlite"
    write_schema_1_store(path, {f"s{i}": make_record(i) for i in range(3)})
    with SQLiteBackend(path) as b:
        assert [b.get(f"s{i}") for i in range(3)] == [make_record(i) for i in range(3)]
        assert b.get_blob_versioned("trie") == (b"T", 3)
        assert b.scan_meta().corrupt == {}
        assert b.patch_meta("s1", {"tier": "warm"})["tier"] == "warm"  # stays a format-1 row
        assert b.get("s1").meta["tier"] == "warm"
        b.put("s2", make_record(9))  # a rewrite is format 2
        b.put("new", make_record(4))
        assert b.allocate_number() == 1 and b.quarantine("s0") is True
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 2
    formats = dict(con.execute("SELECT id, row_format FROM sessions"))
    con.close()
    assert formats == {"s1": 1, "s2": 2, "new": 2}
    # a corrupt format-1 row is still caught by the checksums it was written with
    con = sqlite3.connect(path)
    con.execute("UPDATE sessions SET container = x'00' WHERE id = 's1'")
    con.commit()
    con.close()
    with SQLiteBackend(path) as b:
        with pytest.raises(CorruptRecordError, match="'s1'"):
            b.get("s1")
        assert b.get("new") == make_record(4) and b.allocate_number() == 2


COUNTER = """
import sys
from seqkv.backends import SQLiteBackend
with SQLiteBackend({path!r}) as b:
    print(*(b.allocate_number() for _ in range({n})))
"""


def test_two_processes_allocate_distinct_numbers(tmp_path):
    path = str(tmp_path / "numbers.sqlite")
    with SQLiteBackend(path) as b:
        b.put("a", make_record(1))
        assert b.allocate_number() == 1
        b.delete("a")
    n = 150
    procs = [
        subprocess.Popen([sys.executable, "-c", COUNTER.format(path=path, n=n)], stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    per_process = [[int(x) for x in out.split()] for out in outs]
    assert all(nums == sorted(nums) and len(nums) == n for nums in per_process)
    assert sorted(per_process[0] + per_process[1]) == list(range(2, 2 * n + 2))  # all distinct, none lost
    with SQLiteBackend(path) as b:  # reopened: the counter goes on
        assert b.allocate_number() == 2 * n + 2
