"""16-thread stress of a shared :class:`seqkv.Trie` and a shared :class:`seqkv.SessionStore`
against reference models kept under a lock: nothing lost, nothing wrong, no deadlock.

Every worker runs under one deadline; a worker still alive at the deadline fails the test
(a deadlock or livelock). ``benches/stress.py`` runs the same workload larger."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import seqkv
from seqkv.errors import CapacityError, SeqkvError

THREADS = 16
DEADLINE_S = 45.0  # a bound that fails the test on a hang, not a performance assertion
SHARED = list(range(1, 9))  # a prefix every key shares


def key_of(tid: int, k: int, rng: np.random.Generator) -> list[int]:
    """SHARED, then tokens unique to (thread, key): length 1..24 past the shared prefix."""
    n = int(rng.integers(1, 25))
    return SHARED + [100_000 + tid * 10_000 + k * 30 + i for i in range(n)]


def value_of(tokens: list[int], i: int) -> int:
    """The value stored for position ``i`` of a path: a function of the path, so that a match
    can be checked whatever insert (of whichever thread) stored it."""
    return (tokens[i] << 8) | min(i, 255)


def run_threads(worker, n: int = THREADS, deadline_s: float | None = None) -> None:
    """Runs ``worker(tid)`` on ``n`` threads started together; fails if any raised, or if any is
    still running ``deadline_s`` seconds (default :data:`DEADLINE_S`) after the start."""
    deadline_s = DEADLINE_S if deadline_s is None else deadline_s
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def wrap(tid: int) -> None:
        try:
            start.wait()
            worker(tid)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(t,), daemon=True) for t in range(n)]
    for t in threads:
        t.start()
    end = time.monotonic() + deadline_s
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"workers still running after {deadline_s} s (deadlock?): {alive}"
    if errors:
        raise errors[0]


def trie_workload(trie: seqkv.Trie, ops: int, seed: int = 0, deadline_s: float | None = None) -> dict[str, int]:
    """Insert / match (+pin) / evict from every thread. Checks: every match's values are the
    values of its path; a pinned path survives every eviction; and at the end, tokens stored
    = tokens newly inserted - tokens evicted (nothing lost, nothing freed twice)."""
    lock = threading.Lock()
    totals = {"inserted": 0, "evicted": 0, "matches": 0}

    def worker(tid: int) -> None:
        rng = np.random.default_rng(seed * 1000 + tid)
        keys = [key_of(tid, k, rng) for k in range(16)]
        inserted = evicted = matches = 0
        for _ in range(ops):
            key = keys[int(rng.integers(len(keys)))]
            op = rng.random()
            if op < 0.45:
                try:
                    inserted += trie.insert(key, values=[value_of(key, i) for i in range(len(key))])
                except CapacityError:  # the other threads' pins hold the whole capacity: refused, nothing stored
                    pass
                evicted += len(trie.take_evicted())
            elif op < 0.9:
                m = trie.match_prefix(key, pin=True)
                try:
                    vals = m.values.tolist()
                    assert vals == [value_of(key, i) for i in range(m.length)], "match returned wrong values"
                    # While pinned, another thread's eviction cannot take the matched path.
                    if rng.random() < 0.3:
                        evicted += len(trie.evict(int(rng.integers(1, 40))))
                    again = trie.match_prefix(key)
                    assert again.length >= m.length, "a pinned path was evicted"
                    matches += 1
                finally:
                    trie.unpin(m)
            else:
                evicted += len(trie.evict(int(rng.integers(1, 60)), policy="lru" if op < 0.95 else "plt"))
        with lock:
            totals["inserted"] += inserted
            totals["evicted"] += evicted
            totals["matches"] += matches

    run_threads(worker, deadline_s=deadline_s)
    totals["evicted"] += len(trie.take_evicted())
    assert len(trie) == totals["inserted"] - totals["evicted"], totals
    if trie.stats()["max_tokens"] is not None:
        assert len(trie) <= trie.stats()["max_tokens"]
    assert trie.stats()["pins"] == 0
    return totals


# method="thread": the timeout fires even if the main thread is stuck inside native code (a
# signal handler would wait for it to return to Python); it dumps every stack and fails the run.
@pytest.mark.timeout(90, method="thread")
@pytest.mark.parametrize("max_tokens", [None, 300])
def test_trie_16_threads(max_tokens):
    trie = seqkv.Trie(max_tokens=max_tokens)
    totals = trie_workload(trie, ops=2000)
    assert totals["matches"] > 0 and totals["inserted"] > 0


def store_workload(store: seqkv.SessionStore, sessions: int, vocab: int, seed: int = 0,
                   deadline_s: float | None = None) -> dict[str, int]:
    """put / tokens / get / delete / trie evict from every thread, against a reference dict
    ``session id -> tokens`` updated under a lock; at the end the store holds exactly the
    reference's sessions with exactly their tokens."""
    lock = threading.Lock()
    ref: dict[str, np.ndarray] = {}
    system = np.arange(3, 35, dtype=np.int64) % vocab  # a shared "system prompt"
    counts = {"put": 0, "get": 0, "delete": 0}

    def worker(tid: int) -> None:
        rng = np.random.default_rng(seed * 1000 + 500 + tid)
        mine: list[str] = []
        for k in range(sessions):
            sid = f"t{tid}-s{k}"
            tail = rng.integers(0, vocab, int(rng.integers(1, 20)))
            toks = np.concatenate([system, tail]) if rng.random() < 0.7 else tail
            store.put(sid, toks)
            with lock:
                ref[sid] = toks
                counts["put"] += 1
            mine.append(sid)
            sid2 = mine[int(rng.integers(len(mine)))]
            with lock:
                want = ref[sid2]
            assert np.array_equal(store.tokens(sid2), want), f"{sid2}: wrong tokens"
            r = rng.random()
            if r < 0.15:
                got, _cache = store.get(sid2)
                assert np.array_equal(got, want)
                with lock:
                    counts["get"] += 1
            elif r < 0.35:
                assert store.delete(sid2)
                mine.remove(sid2)
                with lock:
                    del ref[sid2]
                    counts["delete"] += 1
                with pytest.raises(SeqkvError):
                    store.tokens(sid2)
            elif r < 0.45:
                store.trie.evict(int(rng.integers(1, 30)))  # the trie is a cache: sessions survive
            if rng.random() < 0.1:
                store.drop_caches()  # the next reads decode from the records

    run_threads(worker, deadline_s=deadline_s)
    assert sorted(store.ids()) == sorted(ref)
    store.drop_caches()
    for sid, toks in ref.items():
        assert np.array_equal(store.tokens(sid), toks), f"{sid} lost or wrong at the end"
    return counts


@pytest.mark.timeout(120, method="thread")
def test_session_store_16_threads(tiny_llama):
    store = seqkv.SessionStore(tiny_llama, codec="plt", record_hashes=False)
    counts = store_workload(store, sessions=12, vocab=512)
    assert counts["put"] == THREADS * 12
