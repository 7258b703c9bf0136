"""Issue 18 item 11: values of insert-triggered evictions wait for ``take_evicted()`` in a bounded
queue, so a capped trie whose owner never drains it stays bounded in memory."""

from __future__ import annotations

import pytest

import seqkv
from seqkv import Trie


def test_an_undrained_queue_stops_evicting_inserts_until_drained():
    t = Trie(max_tokens=4, evicted_queue=4)
    for k in range(4):
        t.insert([10 * k, 10 * k + 1])
    assert t.stats()["pending_evicted"] == 4
    with pytest.raises(seqkv.CapacityError, match="take_evicted"):
        t.insert([90, 91])
    assert len(t.take_evicted()) == 4
    assert t.insert([90, 91]) == 2


def test_a_trie_that_keeps_no_evicted_values_stays_bounded():
    t = Trie(max_tokens=64, evicted_queue=0)
    for k in range(20_000):
        t.insert([2 * k, 2 * k + 1])
    assert len(t) <= 64
    assert t.stats()["pending_evicted"] == 0 and t.take_evicted().size == 0


def test_the_default_queue_is_bounded():
    t = Trie(max_tokens=8)
    with pytest.raises(seqkv.CapacityError):
        for k in range(1 << 20):
            t.insert([2 * k, 2 * k + 1])
    assert t.stats()["pending_evicted"] <= (1 << 20) + 8


@pytest.mark.parametrize("bad", [-1, True, 1.5, "8", 1 << 41])
def test_bad_queue_limits_are_refused(bad):
    with pytest.raises(seqkv.InvalidInputError):
        Trie(max_tokens=8, evicted_queue=bad)
