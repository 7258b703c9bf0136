"""The SQLite durability contract (docs/durability.md): a process killed with SIGKILL in the
middle of writing loses nothing that put() had returned for, and leaves a store that opens."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqkv.backends import SessionRecord, SQLiteBackend

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

# Puts sessions in a loop, several threads at once, and prints "<id>" after each put returns.
WRITER = r"""
import sys, threading
sys.path.insert(0, {tests!r})
from seqkv.backends import SQLiteBackend
from test_durability import expected

b = SQLiteBackend(sys.argv[1], synchronous=sys.argv[2])
start, threads = int(sys.argv[3]), int(sys.argv[4])
out = threading.Lock()

def loop(t):
    i = start + t
    while True:
        b.put("s%d" % i, expected(i), blobs={{"trie": b"snapshot-%d" % i}} if i % 5 == 0 else None)
        with out:
            sys.stdout.write("%d\n" % i)
            sys.stdout.flush()
        i += threads

for t in range(threads):
    threading.Thread(target=loop, args=(t,), daemon=True).start()
threading.Event().wait()
""".format(tests=str(Path(__file__).resolve().parent))


def expected(i: int) -> SessionRecord:
    """The record the writer stores under ``s{i}``: up to 256 KiB, so a kill often lands mid-write."""
    seed = hashlib.sha256(b"%d" % i).digest()
    size = 1 + (int.from_bytes(seed[:4], "little") % (256 * 1024))
    body = (seed * (size // 32 + 1))[:size]
    return SessionRecord(
        body,
        {"i": i, "size": size, "sha": hashlib.sha256(body).hexdigest()},
        {"residual": seed} if i % 3 == 0 else {},
    )


def run_and_kill(path: str, sync: str, start: int, threads: int, min_puts: int, rng_delay: float) -> list[int]:
    """Start a writer, let it report ``min_puts`` returned puts, wait a little more, SIGKILL it.
    Returns the ids it reported (a put is reported only after it returned)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, path, sync, str(start), str(threads)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    reported: list[int] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while len(reported) < min_puts:
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"writer exited early ({proc.wait()}): {err}")
        reported.append(int(line))
        assert time.monotonic() < deadline, "writer too slow"
    time.sleep(rng_delay)  # keep writing a little so the kill lands mid-write
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    reported += [int(x) for x in rest.split()]  # lines written before the kill
    assert proc.returncode == -signal.SIGKILL
    return reported


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_sigkill_mid_write_loses_nothing(tmp_path, sync):
    path = str(tmp_path / "crash.sqlite")
    reported: list[int] = []
    for round_, delay in enumerate([0.0, 0.05, 0.13, 0.21]):
        reported += run_and_kill(path, sync, start=round_ * 100_000, threads=3, min_puts=30, rng_delay=delay)
        # reopen after every kill: every reported session present and intact
        with SQLiteBackend(path) as b:
            stored = set(b.ids())
            for i in reported:
                assert f"s{i}" in stored, f"session s{i} was reported stored but is missing"
                assert b.get(f"s{i}") == expected(i)
            # anything else in the store (a put that committed but was not yet reported) is intact too
            for sid in stored:
                assert b.get(sid) == expected(int(sid[1:]))
            trie = b.get_blob("trie")
            assert trie is None or trie.startswith(b"snapshot-")
    assert len(reported) >= 4 * 30


def test_checkpointed_store_survives_kill(tmp_path):
    """The same after the WAL was folded into the main file once and writing resumed."""
    path = str(tmp_path / "ckpt.sqlite")
    first = run_and_kill(path, "full", start=0, threads=1, min_puts=20, rng_delay=0.05)
    with SQLiteBackend(path) as b:
        b.checkpoint()
    second = run_and_kill(path, "full", start=50_000, threads=2, min_puts=20, rng_delay=0.1)
    with SQLiteBackend(path) as b:
        for i in first + second:
            assert b.get(f"s{i}") == expected(i)
