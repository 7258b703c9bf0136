"""Tenant isolation: namespaces never share a match, a count (``next_counts``), a d_T value
(``d_t`` / ``log_prob``), an eviction pin, or a stored session. See ``docs/security.md``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import seqkv
from seqkv.errors import InvalidInputError, SessionNotFoundError

NAMESPACES = [None, "alice", b"alice", 7, "bob"]
keys = st.lists(st.integers(0, 5), min_size=1, max_size=10)


@settings(max_examples=60, deadline=None)
@given(data=st.lists(st.tuples(st.sampled_from(range(len(NAMESPACES))), keys), min_size=1, max_size=20))
def test_every_read_sees_only_its_namespace(data):
    """Against one trie per namespace as the reference: matches, counts, d_T and log-probs in
    the shared trie equal those of the tenant's own trie (nothing leaks from other tenants)."""
    shared = seqkv.Trie()
    own = {i: seqkv.Trie() for i in range(len(NAMESPACES))}
    for i, key in data:
        lp = [-0.5 - 0.1 * t for t in key]
        shared.insert(key, logprobs=lp, namespace=NAMESPACES[i])
        own[i].insert(key, logprobs=lp)
    probes = [key for _, key in data] + [[0], [1, 2], [5, 5, 5]]
    for i, ns in enumerate(NAMESPACES):
        for key in probes:
            a, b = shared.match_prefix(key, namespace=ns), own[i].match_prefix(key)
            assert a.length == b.length
            ta, ca = shared.next_counts(key, namespace=ns)
            tb, cb = own[i].next_counts(key)
            assert ta.tolist() == tb.tolist() and ca.tolist() == cb.tolist()
            for other in probes[:5]:
                try:
                    want = own[i].d_t(key, other)
                except InvalidInputError:
                    with pytest.raises(InvalidInputError):
                        shared.d_t(key, other, namespace=ns)
                    continue
                assert shared.d_t(key, other, namespace=ns) == want


def test_namespace_keys_are_distinct():
    """str "1", int 1 and bytes b"1" and None are four tenants, not one."""
    t = seqkv.Trie()
    t.insert([1, 2, 3], namespace="1")
    for ns in (None, 1, b"1", "1 ", "2"):
        assert t.match_prefix([1, 2, 3], namespace=ns).length == 0, ns
        assert t.next_counts([], namespace=ns)[0].tolist() == []
        with pytest.raises(InvalidInputError):
            t.log_prob([1], namespace=ns)
    assert t.match_prefix([1, 2, 3], namespace="1").length == 3


def test_unknown_namespace_pin_touches_no_tenant():
    """A match in an empty namespace hands back a node that pins nothing of other tenants:
    the other tenant's leaf stays evictable."""
    t = seqkv.Trie()
    t.insert([1, 2, 3], values=[10, 11, 12], namespace="alice")
    m = t.match_prefix([1, 2, 3], namespace="mallory", pin=True)
    assert m.length == 0
    try:
        assert sorted(t.evict(10).tolist()) == [10, 11, 12]
    finally:
        t.unpin(m)


def test_counts_do_not_mix():
    """The same continuation inserted by two tenants is counted once in each, not twice."""
    t = seqkv.Trie()
    for ns in ("a", "b"):
        t.insert([9, 1], namespace=ns)
        t.insert([9, 2], namespace=ns)
    t.insert([9, 1], namespace="a")
    assert t.next_counts([9], namespace="a")[1].tolist() == [2, 1]
    assert t.next_counts([9], namespace="b")[1].tolist() == [1, 1]


@pytest.mark.timeout(120)
def test_session_stores_share_no_session(tiny_llama):
    """Two stores (two tenants) on one trie: a session of one is not visible to the other,
    and the other's identical tokens are coded without a reference to it (no cross-tenant
    dedup, whose savings would reveal the first tenant's data through the stored size)."""
    trie = seqkv.Trie()
    a = seqkv.SessionStore(tiny_llama, codec="plt", trie=trie, namespace="tenant-a", record_hashes=False)
    b = seqkv.SessionStore(tiny_llama, codec="plt", trie=trie, namespace="tenant-b", record_hashes=False)
    toks = np.arange(40) % 512
    a.put("s", toks)
    assert "s" not in b and b.ids() == []
    with pytest.raises(SessionNotFoundError):
        b.tokens("s")
    first_in_b = b.put("x", toks)
    assert first_in_b["prefix_tokens"] == 0  # nothing of tenant a was reused
    again_in_a = a.put("t", toks)
    assert again_in_a["prefix_tokens"] > 0  # ...while within a tenant the prefix is shared
    assert b.delete("x")
    assert np.array_equal(a.tokens("s"), toks)
