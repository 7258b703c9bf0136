"""16 Python threads on one Trie (every method releases the GIL, so the Rust parts run
concurrently): every match returns values inserted for exactly that prefix, no pinned
value is freed, no value is freed twice, and the final contents are exactly the values
stored and not freed."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from seqkv import CapacityError, InvalidInputError
from seqkv.trie import Trie

THREADS = 16


def _run(trie: Trie, ops: int, seed: int) -> None:
    origin: dict[int, tuple[object, tuple[int, ...]]] = {}  # value -> (namespace, prefix)
    stored: set[int] = set()
    freed: set[int] = set()
    pinned: dict[int, int] = {}
    failures: list[str] = []
    lock = threading.Lock()
    rng0 = np.random.default_rng(seed)
    prompts = [rng0.integers(0, 6, int(rng0.integers(8, 40))).tolist() for _ in range(4)]
    barrier = threading.Barrier(THREADS)
    ps = trie.page_size

    def check(key, ns, m):
        vals = m.values.tolist()
        if len(vals) != m.length or m.length % ps:
            failures.append(f"bad match length {m.length} / {len(vals)}")
            return vals
        for i, v in enumerate(vals):
            if origin.get(v) != (ns, tuple(key[: i + 1])):
                failures.append(f"value {v} at {i} of {key} in {ns!r} has origin {origin.get(v)}")
        return vals

    def record_freed(vals):
        with lock:
            for v in vals.tolist():
                if v in freed:
                    failures.append(f"value {v} freed twice")
                freed.add(v)
                if pinned.get(v, 0) > 0:
                    failures.append(f"pinned value {v} freed")

    def worker(tid: int) -> None:
        rng = np.random.default_rng(seed * 1000 + tid)
        counter = 0
        barrier.wait()
        for _ in range(ops):
            key = prompts[int(rng.integers(4))] + rng.integers(0, 4, int(rng.integers(0, 20))).tolist()
            key = key[: int(rng.integers(1, len(key) + 1))]
            ns = None if rng.integers(8) else "tenant"
            r = int(rng.integers(100))
            try:
                if r < 40:
                    vals = []
                    for i in range(len(key)):
                        counter += 1
                        v = (tid << 40) | counter
                        vals.append(v)
                        origin[v] = (ns, tuple(key[: i + 1]))
                    arr = np.asarray(key, dtype=np.int64) if r % 2 else key
                    try:
                        k = trie.insert(arr, values=vals, namespace=ns)
                    except CapacityError:
                        continue
                    n = len(key) // ps * ps
                    with lock:
                        stored.update(vals[n - k : n])
                elif r < 75:
                    check(key, ns, trie.match_prefix(key, namespace=ns))
                elif r < 90:
                    m = trie.match_prefix(np.asarray(key, dtype=np.uint32), namespace=ns, pin=True)
                    vals = check(key, ns, m)
                    with lock:
                        for v in vals:
                            pinned[v] = pinned.get(v, 0) + 1
                        if freed.intersection(vals):
                            failures.append("pinned match returned freed values")
                    for _ in range(int(rng.integers(3))):
                        trie.match_prefix(key)
                    with lock:
                        if freed.intersection(vals):
                            failures.append("value freed while pinned")
                        for v in vals:
                            pinned[v] -= 1
                    if r % 2:
                        trie.unpin(m.node)
                    else:
                        trie.pin(m.node).release()  # pin again + release, then drop the first pin
                        trie.unpin(m.node)
                elif r < 98:
                    record_freed(trie.evict(int(rng.integers(1, 64)), policy="plt" if r % 2 else "lru"))
                else:
                    record_freed(trie.take_evicted())
            except InvalidInputError as e:  # pragma: no cover - reported below
                failures.append(f"unexpected {e!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    record_freed(trie.take_evicted())
    assert not failures, failures[:10]
    assert freed <= stored
    live: set[int] = set()
    for ns_key, toks, vals in trie._dump():
        ns = None if ns_key is None else ns_key[1:].decode()
        for i, v in enumerate(vals.tolist()):
            assert origin[v] == (ns, tuple(toks[: i + 1].tolist()))
            live.add(v)
    assert live == stored - freed
    assert len(trie) == len(live)
    assert trie.stats()["pins"] == 0
    if trie.max_tokens is not None:
        assert len(trie) <= trie.max_tokens


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(max_tokens=500), dict(page_size=2, max_tokens=300, policy="plt")],
    ids=["unbounded", "bounded-lru", "bounded-plt-pages"],
)
def test_sixteen_python_threads(kwargs):
    _run(Trie(**kwargs), ops=600, seed=len(kwargs))


def test_gil_released_during_match():
    """Readers in other threads keep running while one thread matches: the per-call work is
    done without the GIL (smoke test: all threads finish and agree)."""
    t = Trie()
    rng = np.random.default_rng(0)
    keys = [rng.integers(0, 49152, 768).astype(np.uint32) for _ in range(64)]
    for k in keys:
        t.insert(k)
    out = []

    def reader(i):
        total = 0
        for j in range(2000):
            total += t.match_prefix(keys[(i + j) % 64]).length
        out.append(total)

    ths = [threading.Thread(target=reader, args=(i,)) for i in range(THREADS)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    assert out == [2000 * 768] * THREADS
