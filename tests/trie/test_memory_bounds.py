"""Memory bounds of a capped trie: with ``Trie(max_tokens=N)``, ``len(trie) <= N`` after every
insert, ``stats()["bytes"]`` stays within N tokens' worth of structure, and the process RSS
(``/proc/self/statm``) grows by at most that plus the documented overhead (docs/trie.md,
"Memory bound"). ``benches/stress.py`` runs the same check over 10^6 inserted tokens."""

from __future__ import annotations

import os

import numpy as np
import pytest

import seqkv

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
#: Structural bytes per stored token, upper bound for keys of >= 8 tokens (node + link
#: + u32 token + u64 value + child table share); docs/trie.md "Memory bound".
BYTES_PER_TOKEN_BOUND = 64
#: Fixed allowance for allocator slack, epoch-deferred frees and NumPy temporaries.
RSS_SLACK = 32 << 20


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def fill(trie: seqkv.Trie, n_inserted: int, key_len: int, seed: int, check_every: int = 1) -> dict[str, int]:
    """Inserts random keys (half sharing a 4-token prefix with an earlier key) until
    ``n_inserted`` tokens went in; checks the bounds after every ``check_every``-th insert."""
    rng = np.random.default_rng(seed)
    cap = trie.stats()["max_tokens"]
    peak_len = peak_bytes = 0
    done = i = 0
    prev = rng.integers(0, 50_000, key_len)
    while done < n_inserted:
        key = rng.integers(0, 50_000, key_len)
        if i % 2:
            key[:4] = prev[:4]
        prev = key
        done += trie.insert(key)
        trie.take_evicted()
        i += 1
        if i % check_every == 0:
            n = len(trie)
            assert n <= cap, f"len {n} above max_tokens {cap}"
            b = trie.stats()["bytes"]
            peak_len, peak_bytes = max(peak_len, n), max(peak_bytes, b)
    return {"inserted": done, "peak_len": peak_len, "peak_bytes": peak_bytes}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("policy", ["lru", "plt"])
def test_len_and_bytes_bounded(policy):
    cap = 2_000
    trie = seqkv.Trie(max_tokens=cap, policy=policy)
    r = fill(trie, 40_000, key_len=16, seed=1)
    assert r["peak_len"] <= cap
    assert r["peak_bytes"] <= cap * BYTES_PER_TOKEN_BOUND + 64 * 1024, r
    assert trie.stats()["evicted_tokens"] >= 40_000 - cap


@pytest.mark.timeout(60)
def test_rss_bounded():
    """RSS after 2*10^5 inserted tokens into a 20,000-token trie grows by at most the structure
    bound plus the fixed slack (it would grow ~10x that if evicted nodes were not freed)."""
    cap = 20_000
    trie = seqkv.Trie(max_tokens=cap)
    fill(trie, 20_000, key_len=32, seed=2, check_every=50)  # warm: allocator arenas at steady state
    r0 = rss_bytes()
    r = fill(trie, 200_000, key_len=32, seed=3, check_every=50)
    grown = rss_bytes() - r0
    assert r["peak_len"] <= cap
    assert grown <= cap * BYTES_PER_TOKEN_BOUND + RSS_SLACK, (grown, r)


@pytest.mark.timeout(30)
def test_pinned_tokens_never_exceed_the_cap():
    """When everything is pinned, inserts fail with CapacityError and store nothing."""
    trie = seqkv.Trie(max_tokens=10)
    trie.insert(list(range(10)))
    m = trie.match_prefix(list(range(10)), pin=True)
    try:
        with pytest.raises(seqkv.CapacityError):
            trie.insert([100, 101])
        assert len(trie) == 10
    finally:
        trie.unpin(m)
    trie.insert([100, 101])
    assert len(trie) <= 10
