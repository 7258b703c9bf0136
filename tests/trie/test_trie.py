"""seqkv.Trie: API semantics, input conversion, errors, pages, namespaces, snapshots."""

from __future__ import annotations

import math

import numpy as np
import pytest

import seqkv
from seqkv import CapacityError, CorruptStreamError, FormatVersionError, InvalidInputError
from seqkv.trie import Match, Node, Pin, Trie


def test_basic_insert_match_split():
    t = Trie()
    assert t.insert([1, 2, 3, 4], values=[10, 11, 12, 13]) == 4
    assert t.insert([1, 2, 7], values=[10, 11, 17]) == 1
    assert len(t) == 5
    m = t.match_prefix([1, 2, 3, 9])
    assert isinstance(m, Match)
    assert m.length == 3 and len(m) == 3
    assert m.values.dtype == np.uint64
    assert m.values.tolist() == [10, 11, 12]
    assert isinstance(m.node, Node)
    assert t.match_prefix([1, 2, 7, 7]).values.tolist() == [10, 11, 17]
    assert t.match_prefix([5]).length == 0
    assert t.match_prefix([]).length == 0
    # a prefix of a stored key stores nothing new
    assert t.insert([1, 2]) == 0
    st = t.stats()
    assert st["tokens"] == 5 and st["nodes"] == 3 and st["leaves"] == 2
    assert seqkv.Trie is Trie


def test_auto_values_are_unique_and_shared_prefix_stored_once():
    t = Trie()
    prompt = list(range(100, 164))
    for s in range(20):
        t.insert(prompt + [s, s + 1, s + 2])
    assert len(t) == 64 + 20 * 3
    vals = [t.match_prefix(prompt + [s, s + 1, s + 2]).values for s in range(20)]
    assert all((v[:64] == vals[0][:64]).all() for v in vals)
    tails = np.concatenate([v[64:] for v in vals])
    assert len(set(tails.tolist())) == 60


@pytest.mark.parametrize(
    "conv",
    [
        list,
        tuple,
        lambda x: np.asarray(x, dtype=np.uint32),
        lambda x: np.asarray(x, dtype=np.int64),
        lambda x: np.asarray(x, dtype=np.int32),
        lambda x: np.asarray(x, dtype=np.uint16),
        lambda x: np.asarray(x, dtype=np.int16),
        lambda x: np.asarray(x, dtype=np.uint64),
        lambda x: np.asarray(x, dtype=np.int64)[::-1][::-1],  # non-contiguous view chain
        lambda x: np.repeat(np.asarray(x, dtype=np.int64), 2)[::2],  # strided
        lambda x: range(x[0], x[0] + len(x)) if list(x) == list(range(x[0], x[0] + len(x))) else list(x),
    ],
)
def test_token_input_kinds(conv):
    t = Trie()
    key = [5, 6, 7, 8, 9]
    assert t.insert(conv(key)) == 5
    assert t.match_prefix(conv(key)).length == 5


def test_torch_tensor_input():
    torch = pytest.importorskip("torch")
    t = Trie()
    t.insert(torch.tensor([1, 2, 3, 4]), values=torch.tensor([9, 8, 7, 6]))
    m = t.match_prefix(torch.tensor([1, 2, 3], dtype=torch.int32))
    assert m.values.tolist() == [9, 8, 7]
    with pytest.raises(InvalidInputError):
        t.match_prefix(torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize(
    "bad",
    [
        [-1],
        [2**32],
        [2**80],
        [1.5],
        [True],
        ["a"],
        "abc",
        b"abc",
        np.zeros((2, 2), dtype=np.int64),
        np.array(3),
        np.array([1.0, 2.0]),
        np.array([True]),
        np.array([-1], dtype=np.int8),
        np.array([2**33], dtype=np.uint64),
        object(),
        5,
    ],
)
def test_bad_tokens_raise_invalid_input(bad):
    t = Trie()
    t.insert([1, 2, 3])
    for call in (
        lambda: t.insert(bad),
        lambda: t.match_prefix(bad),
        lambda: t.next_counts(bad),
        lambda: t.log_prob(bad),
    ):
        with pytest.raises(InvalidInputError):
            call()
    assert len(t) == 3


def test_other_errors():
    t = Trie()
    t.insert([1, 2, 3])
    with pytest.raises(InvalidInputError):
        t.insert([1, 2], values=[1])  # length mismatch
    with pytest.raises(InvalidInputError):
        t.insert([1, 2], values=[-1, 2])
    with pytest.raises(InvalidInputError):
        t.insert([1, 2], logprobs=[0.5, -1.0])  # not a log-probability
    with pytest.raises(InvalidInputError):
        t.insert([1, 2], logprobs=[float("nan"), -1.0])
    with pytest.raises(InvalidInputError):
        t.insert([1, 2], logprobs=np.array([1, 2]))  # int dtype
    with pytest.raises(InvalidInputError):
        t.insert([1], namespace=1.5)
    with pytest.raises(InvalidInputError):
        t.evict(-1)
    with pytest.raises(InvalidInputError):
        t.evict(1, policy="mru")
    with pytest.raises(InvalidInputError):
        Trie(page_size=0)
    with pytest.raises(InvalidInputError):
        Trie(page_size=2.5)
    with pytest.raises(InvalidInputError):
        Trie(max_tokens=-1)
    with pytest.raises(InvalidInputError):
        Trie(policy="fifo")
    # unknown node, foreign node, double unpin, pin after eviction
    for bad in (None, 3, "node", object()):
        with pytest.raises(InvalidInputError):
            t.pin(bad)
        with pytest.raises(InvalidInputError):
            t.unpin(bad)
    other = Trie()
    other.insert([1])
    with pytest.raises(InvalidInputError):
        t.pin(other.match_prefix([1]).node)
    m = t.match_prefix([1, 2, 3])
    with pytest.raises(InvalidInputError):
        t.unpin(m.node)
    p = t.pin(m.node)
    t.unpin(p)
    with pytest.raises(InvalidInputError):
        t.unpin(p)
    t.evict(10)
    assert m.node.evicted
    with pytest.raises(InvalidInputError):
        t.pin(m.node)
    # errors are seqkv errors and ValueErrors
    assert issubclass(InvalidInputError, ValueError) and issubclass(InvalidInputError, seqkv.SeqkvError)


def test_pin_context_manager_and_eviction():
    t = Trie()
    t.insert([1, 2, 3], values=[1, 2, 3])
    t.insert([1, 2, 4], values=[1, 2, 4])
    t.insert([9, 9], values=[9, 9])
    m = t.match_prefix([1, 2, 3])
    with t.pin(m.node) as p:
        assert isinstance(p, Pin) and m.node.pins == 1
        freed = t.evict(100)
        assert sorted(freed.tolist()) == [4, 9, 9]
        assert t.match_prefix([1, 2, 3]).values.tolist() == [1, 2, 3]
        assert t.stats()["pinned_nodes"] == 1
    assert p.released and m.node.pins == 0
    assert sorted(t.evict(100).tolist()) == [1, 2, 3]
    assert len(t) == 0
    # pin=True: match and pin atomically
    t.insert([5, 6])
    m = t.match_prefix([5, 6], pin=True)
    assert m.node.pins == 1
    assert t.evict(10).size == 0
    t.unpin(m.node)
    # a length-0 match returns the root; pinning it is harmless
    r = t.match_prefix([42])
    assert r.node.is_root
    with t.pin(r.node):
        pass


def test_lru_and_plt_policies():
    t = Trie()
    for k in ([1, 1], [2, 2], [3, 3]):
        t.insert(k, values=k)
    t.match_prefix([1, 1])
    assert t.evict(1).tolist() == [2, 2]
    t2 = Trie()
    t2.insert([1, 1], values=[1, 1])
    t2.insert([1, 1])
    t2.insert([2, 2], values=[2, 2], logprobs=[-0.1, -0.1])
    t2.insert([3, 3], values=[3, 3], logprobs=[-5.0, -5.0])
    assert t2.evict(1, policy="plt").tolist() == [3, 3]  # 1 + e^-5 < 1 + e^-0.1 < 2
    assert t2.evict(1, policy="plt").tolist() == [2, 2]


def test_capacity_bound():
    t = Trie(max_tokens=10)
    t.insert(list(range(6)), values=list(range(6)))
    m = t.match_prefix(list(range(6)), pin=True)
    t.insert([100, 101, 102, 103])
    assert len(t) == 10
    before = t._dump()
    with pytest.raises(CapacityError):
        t.insert([200, 201, 202, 203, 204])  # needs 5: only [100..103] (4) evictable
    after = t._dump()
    assert [(a[1].tolist(), a[2].tolist()) for a in before] == [(a[1].tolist(), a[2].tolist()) for a in after]
    assert t.take_evicted().size == 0
    with pytest.raises(CapacityError):
        t.insert(list(range(500, 520)))  # can never fit
    t.insert([200, 201, 202])  # evicts the unpinned leaf
    assert len(t.take_evicted()) == 4
    t.unpin(m.node)
    assert t.stats()["capacity_errors"] == 2
    t.insert(list(range(300, 310)))  # evicts everything else
    assert len(t) == 10


def test_page_alignment():
    t = Trie(page_size=4)
    assert t.insert(list(range(10))) == 8
    assert len(t) == 8
    assert t.match_prefix(list(range(7))).length == 4
    key = [0, 1, 2, 3, 4, 99, 6, 7]  # diverges inside the second page
    assert t.match_prefix(key).length == 4
    assert t.insert(key) == 4
    assert t.match_prefix(key).length == 8
    assert t.match_prefix(list(range(8))).length == 8
    for _, toks, vals in t._dump():
        assert len(toks) % 4 == 0 and len(vals) == len(toks)
    toks, counts = t.next_counts([0, 1, 2, 3, 4])
    assert toks.tolist() == [5, 99] and counts.tolist() == [1, 1]
    assert t.insert([1, 2, 3]) == 0 and len(t) == 12


def test_namespace_isolation():
    t = Trie()
    key = [1, 2, 3, 4]
    t.insert(key, values=[1, 1, 1, 1], namespace="tenant-a", logprobs=[-1.0] * 4)
    t.insert(key, values=[2, 2, 2, 2], namespace=b"tenant-a")
    t.insert(key, values=[3, 3, 3, 3], namespace=7)
    t.insert(key, values=[4, 4, 4, 4], namespace="7")
    t.insert(key, values=[5, 5, 5, 5])
    assert len(t) == 20
    for ns, v in (("tenant-a", 1), (b"tenant-a", 2), (7, 3), ("7", 4), (None, 5)):
        m = t.match_prefix(key, namespace=ns)
        assert m.values.tolist() == [v] * 4
        assert t.next_counts([1], namespace=ns)[1].tolist() == [1]
    assert t.match_prefix(key, namespace="tenant-b").length == 0
    assert t.next_counts([1], namespace="tenant-b")[0].size == 0
    assert t.log_prob(key, namespace="tenant-a") == pytest.approx(-4.0)
    with pytest.raises(InvalidInputError):
        t.log_prob(key)  # default namespace has no log-probs
    with pytest.raises(InvalidInputError):
        t.d_t(key, key, namespace="tenant-b")
    assert t.stats()["namespaces"] == 4


def test_logprobs_d_t_and_counts():
    t = Trie()
    ln2 = math.log(2)
    t.insert([1, 2, 3], logprobs=np.array([-ln2, -ln2, -2 * ln2], dtype=np.float32))
    t.insert([1, 2, 4])
    t.insert([1, 2, 4], logprobs=[-0.5, -0.5, -0.25])  # fills in missing log-probs
    assert t.d_t([1, 2, 3], [1, 2, 4]) == pytest.approx(2.0, abs=1e-6)
    assert t.d_t([1, 2, 3], [1, 2, 3, 5]) == pytest.approx(4.0, abs=1e-6)
    assert t.d_t([5], [6]) == 0.0
    assert t.log_prob([1, 2, 4]) == pytest.approx(-2 * ln2 - 0.25, abs=1e-6)
    with pytest.raises(InvalidInputError):
        t.log_prob([1, 2, 9])
    toks, counts = t.next_counts([1, 2])
    assert toks.dtype == np.uint32 and counts.dtype == np.uint64
    assert toks.tolist() == [3, 4] and counts.tolist() == [1, 2]
    assert t.next_counts([1]) [1].tolist() == [3]
    assert t.next_counts([]) [0].tolist() == [1]


def test_snapshot_roundtrip_and_validation():
    t = Trie(page_size=2, max_tokens=1000, policy="plt")
    t.insert([1, 2, 3, 4], logprobs=[-0.1, -0.2, -0.3, -0.4])
    t.insert([1, 2, 5, 6], namespace="x")
    t.insert([1, 2, 5, 6, 7, 8])
    data = t.snapshot()
    r = Trie.restore(data)
    assert r.page_size == 2 and r.max_tokens == 1000 and r.policy == "plt"
    assert len(r) == len(t)
    assert [(a, b.tolist(), c.tolist()) for a, b, c in r._dump()] == [
        (a, b.tolist(), c.tolist()) for a, b, c in t._dump()
    ]
    assert r.snapshot() == data
    assert Trie.restore(bytearray(data)).snapshot() == data
    # new values continue after the restored ones
    r.insert([9, 9])
    assert set(r.match_prefix([9, 9]).values.tolist()).isdisjoint(
        np.concatenate([c for _, _, c in t._dump()]).tolist()
    )
    rng = np.random.default_rng(0)
    for _ in range(200):
        b = bytearray(data)
        i = int(rng.integers(0, len(b)))
        b[i] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises((CorruptStreamError, FormatVersionError)):
            Trie.restore(bytes(b))
    for n in range(len(data)):
        with pytest.raises(CorruptStreamError):
            Trie.restore(data[:n])
    with pytest.raises(InvalidInputError):
        Trie.restore("not bytes")


def test_stats_bytes_per_token():
    t = Trie()
    rng = np.random.default_rng(1)
    prompt = rng.integers(0, 49152, 512)
    for _ in range(50):
        t.insert(np.concatenate([prompt, rng.integers(0, 49152, 256)]))
    s = t.stats()
    assert s["tokens"] == 512 + 50 * 256
    # fresh values are consecutive: kept as runs, and ids below 2^16 as 16 bits, so a token
    # costs its 2 bytes plus the nodes
    assert 2 <= s["bytes_per_token"] < 4
    # a vocabulary past 2^16 (e.g. 151,936 ids) keeps 4 bytes per id
    wide = Trie()
    for _ in range(50):
        wide.insert(np.concatenate([prompt + 100_000, rng.integers(100_000, 151_936, 256)]))
    assert s["bytes_per_token"] + 2 <= wide.stats()["bytes_per_token"] < s["bytes_per_token"] + 2.1
    # values that are not consecutive are kept one by one (8 bytes more per token)
    t2 = Trie()
    for _ in range(50):
        key = np.concatenate([prompt, rng.integers(0, 49152, 256)])
        vals = rng.permutation(1 << 20)[: key.size].astype(np.uint64)
        t2.insert(key, values=vals)
    s2 = t2.stats()
    assert s2["tokens"] == s["tokens"]
    assert s["bytes_per_token"] + 8 <= s2["bytes_per_token"] < s["bytes_per_token"] + 8.1
    # either way the values come back as given (the last key's tail is its own)
    m = t2.match_prefix(key)
    assert m.length == key.size
    assert np.array_equal(np.asarray(m.values)[512:], vals[512:])


def test_read_bench_pins_threads_or_raises():
    """The bench hooks pin thread i to cpus[i % len]; a CPU outside the process's set is an error."""
    import os

    t = Trie()
    keys = np.arange(64, dtype=np.uint32).reshape(4, 16)
    t.insert(keys[0])
    cpu = min(os.sched_getaffinity(0))
    assert t._read_bench(keys, 2, 50, cpus=[cpu]) > 0
    assert Trie._spin_bench(2, 1000, [cpu]) > 0
    with pytest.raises(InvalidInputError, match="pin"):
        t._read_bench(keys, 1, 10, cpus=[1 << 20])
    with pytest.raises(InvalidInputError, match="pin"):
        Trie._spin_bench(1, 10, [1 << 20])
