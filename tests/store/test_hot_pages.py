"""The hot tier's shared KV pages (seqkv.store.pages): the page pool, the trie-indexed hot prefix index
(sharing, bit-exact gathers, the bits-differ fallback, accounting, concurrency) and the
SessionStore on top of it (pages of a shared system prompt held once, charges = bytes held)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import run_threads
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from seqkv.integrations import transformers as hf  # noqa: E402
from seqkv.errors import InvalidInputError  # noqa: E402
from seqkv.store.pages import HotPrefixIndex, KVPagePool, ReleasedHandleError  # noqa: E402
from seqkv.store import SessionStore  # noqa: E402

L, H, D, V = 2, 2, 16, 512  # the tiny Llama's KV layout (conftest.tiny_llama)
TOKEN_BYTES = L * 2 * H * D * 4
_BASE = np.random.default_rng(7).standard_normal((V, L, 2, H, D)).astype(np.float32)


def causal_kv(tokens, config=None, flip: int | None = None):
    """A synthetic KV cache whose position ``i`` depends on every token up to ``i`` (as a model's
    does), so sessions with a common prefix have bit-identical KV there. ``flip``: change the
    last bit of one component at that position (another schedule's rounding)."""
    x = np.zeros((L, 2, H, D), np.float32)
    rows = []
    for t in np.asarray(tokens).reshape(-1):
        x = (_BASE[int(t)] + np.float32(0.5) * x).astype(np.float32)
        rows.append(x)
    kv = np.stack(rows, axis=3) if rows else np.zeros((L, 2, H, 0, D), np.float32)  # [L, 2, H, n, D]
    if flip is not None:
        kv = kv.copy()
        kv.view(np.uint32)[0, 0, 0, flip, 0] ^= 1
    t = torch.from_numpy(np.ascontiguousarray(kv))
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(t[i, 0][None], t[i, 1][None]) for i in range(L)], config=config)


def new_index(tiny_llama, page_tokens=4, **kw):
    return HotPrefixIndex(L, H, D, page_tokens, dtype=torch.float32, config=tiny_llama.config, **kw)


def check_accounting(index, handles):
    """Charges add up to the bytes held; pages in use are exactly those of the live handles."""
    live = [h for h in handles if not h.released]
    assert sum(h.charge for h in live) == index.bytes_held()
    st_ = index.stats()
    assert st_["handles"] == len(live)
    assert st_["pages"] == len({int(s) for h in live for s in h.pages})
    assert st_["logical_bytes"] == sum(h.n for h in live) * TOKEN_BYTES


# -- the pool -------------------------------------------------------------------------------


def test_pool_alloc_write_read_free():
    pool = KVPagePool(L, H, D, 4, dtype=torch.float32, chunk_bytes=3 * 4 * TOKEN_BYTES)  # 3 pages a chunk
    assert pool.page_bytes == 4 * TOKEN_BYTES and pool.chunk_pages == 3
    kv = torch.randn(L, 2, H, 12, D)
    a = pool.alloc(3)
    pool.write(a, kv)
    more = pool.alloc(4)  # grows by two chunks: the first pages do not move
    assert pool.bytes_in_use == 7 * pool.page_bytes and pool.bytes_reserved == 9 * pool.page_bytes
    out = torch.zeros(L, 2, H, 12, D)
    pool.read_into(out, a, 10)  # a partial last page
    assert torch.equal(out[..., :10, :], kv[..., :10, :]) and not out[..., 10:, :].any()
    assert pool.equal_pages(a, kv) == 3
    bent = kv.clone()
    bent.view(torch.int32)[1, 1, 0, 5, 3] ^= 1  # one bit of page 1
    assert pool.equal_pages(a, bent) == 1
    pool.free(more)
    assert pool.bytes_reserved == 3 * pool.page_bytes  # trailing empty chunks are given back
    with pytest.raises(InvalidInputError):
        pool.free(more[:1])
    with pytest.raises(InvalidInputError):
        pool.free(a[:1].tolist() * 2)
    pool.free(a)
    assert pool.pages_in_use == 0 and pool.bytes_reserved == 0
    with pytest.raises(InvalidInputError):
        KVPagePool(L, H, D, 0)


# -- the index -------------------------------------------------------------------------------


def test_sessions_sharing_a_prefix_hold_its_pages_once(tiny_llama, rng):
    index = new_index(tiny_llama, page_tokens=8)
    system = rng.integers(0, V, 64)  # 8 full pages
    handles, caches = [], []
    for i in range(6):
        toks = np.concatenate([system, rng.integers(0, V, 5 + 3 * i)])
        cache = causal_kv(toks, tiny_llama.config)
        h = index.insert(toks, cache, owner=i)
        assert h.shared >= 64
        handles.append(h)
        caches.append(cache)
        check_accounting(index, handles)
    st_ = index.stats()
    # the system prompt's 8 pages once; each session's own full pages and tail privately
    own_pages = sum((h.n - 64) // 8 for h in handles)
    assert st_["pages"] == 8 + own_pages and st_["pages_shared"] == 8
    assert st_["unique_bytes"] == st_["logical_bytes"] - 5 * 64 * TOKEN_BYTES
    for h, c in zip(handles, caches):
        assert hf.caches_equal(index.gather(h), c)
    # releasing the payer moves the shared pages' charge to the most recent remaining user
    index.touch(handles[2])
    moved = index.release(handles[2])
    assert set(moved) == {handles[5]} and moved[handles[5]] == handles[5].charge
    check_accounting(index, handles)
    for h, c in zip(handles, caches):
        if not h.released:
            assert hf.caches_equal(index.gather(h), c)
    with pytest.raises(ReleasedHandleError):
        index.gather(handles[2])
    assert index.release(handles[2]) == {}  # twice: nothing
    for h in handles:
        index.release(h)
    st_ = index.stats()
    assert st_["pages"] == 0 and st_["unique_bytes"] == 0 and st_["trie"]["tokens"] == 0


def test_bits_that_differ_are_not_shared(tiny_llama, rng):
    """A session whose prefix KV differs in one bit (another schedule's rounding) keeps its own
    pages from the first differing page on, and is served its own bits."""
    index = new_index(tiny_llama, page_tokens=4)
    toks = rng.integers(0, V, 30)
    a = causal_kv(toks, tiny_llama.config)
    b = causal_kv(toks, tiny_llama.config, flip=9)  # page 2 of 4-token pages
    ha = index.insert(toks, a)
    hb = index.insert(toks, b)
    assert ha.shared == 28 and hb.shared == 8 and hb.private_bytes == 22 * TOKEN_BYTES
    assert hf.caches_equal(index.gather(ha), a) and hf.caches_equal(index.gather(hb), b)
    assert not hf.caches_equal(a, b)
    assert index.stats()["pages_shared"] == 2
    check_accounting(index, [ha, hb])
    # a flip in the very first page: nothing shared, the session still round-trips
    hc = index.insert(toks, causal_kv(toks, tiny_llama.config, flip=0))
    assert hc.shared == 0 and hf.caches_equal(index.gather(hc), causal_kv(toks, tiny_llama.config, flip=0))
    check_accounting(index, [ha, hb, hc])
    # share=False keeps everything private; a cache of another dtype is kept whole (foreign)
    hd = index.insert(toks, a, share=False)
    he = index.insert(toks, hf.cache_from_layers(tiny_llama, [(k.double(), v.double()) for k, v in hf.cache_layers(a)]))
    assert hd.shared == he.shared == 0 and hf.caches_equal(index.gather(hd), a)
    assert index.gather(he).layers[0].keys.dtype == torch.float64
    check_accounting(index, [ha, hb, hc, hd, he])
    with pytest.raises(InvalidInputError):
        index.insert(toks[:-1], a)
    with pytest.raises(InvalidInputError):
        index.gather(ha, 31)


def test_lookup_serves_the_longest_hot_prefix(tiny_llama, rng):
    index = new_index(tiny_llama, page_tokens=4)
    toks = rng.integers(0, V, 22)
    full = causal_kv(toks, tiny_llama.config)
    h = index.insert(toks, full, owner="s")
    ref = hf.cache_layers(full)
    for request, want in (
        (np.concatenate([toks, [1, 2]]), 22),  # whole session, then its private tail
        (toks[:13], 13),  # inside a page
        (np.concatenate([toks[:10], (toks[10:11] + 1) % V, toks[11:]]), 10),  # diverges mid-page
        (toks[:3], 3),  # shorter than a page
        ((toks[:5] + 1) % V, 0),
    ):
        n, cache, owner = index.lookup(request)
        assert n == want
        if n:
            assert owner == "s"
            for (k, v), (rk, rv) in zip(hf.cache_layers(cache), ref):
                assert torch.equal(k, rk[..., :n, :]) and torch.equal(v, rv[..., :n, :])
        else:
            assert cache is None
    n, pages = index.match(toks)
    assert n == 20 and np.array_equal(pages, h.pages)
    assert index.lookup(toks, limit=7)[0] == 7
    assert index.lookup([])[0] == 0


@st.composite
def prompt_trees(draw):
    """Sessions whose tokens extend a random earlier session's prefix (a prompt tree)."""
    n = draw(st.integers(1, 8))
    sessions: list[list[int]] = []
    for _ in range(n):
        if sessions and draw(st.booleans()):
            parent = sessions[draw(st.integers(0, len(sessions) - 1))]
            cut = draw(st.integers(0, len(parent)))
            base = parent[:cut]
        else:
            base = []
        tail = draw(st.lists(st.integers(0, 7), min_size=0 if base else 1, max_size=14))
        sessions.append(base + tail)
    flips = [draw(st.one_of(st.none(), st.integers(0, len(s) - 1))) if s else None for s in sessions]
    order = draw(st.permutations(range(n)))
    return sessions, flips, order


@given(tree=prompt_trees(), page_tokens=st.sampled_from([1, 2, 4]))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_prompt_trees_round_trip(tiny_llama, tree, page_tokens):
    """Every session's gathered KV is bit for bit what it was inserted with, whatever it shares,
    before and after others are released; charges always add up to the bytes held."""
    sessions, flips, order = tree
    index = new_index(tiny_llama, page_tokens=page_tokens)
    caches = [causal_kv(s, tiny_llama.config, flip=f) for s, f in zip(sessions, flips)]
    handles = [index.insert(s, c, owner=i) for i, (s, c) in enumerate(zip(sessions, caches))]
    check_accounting(index, handles)
    unflipped = {i for i, f in enumerate(flips) if f is None}
    if len(unflipped) == len(sessions):  # all from the same "schedule": every common full page shared
        distinct = {tuple(s[: (j + 1) * page_tokens]) for s in sessions for j in range(len(s) // page_tokens)}
        assert index.stats()["pages"] == len(distinct)
    for i in order:
        for j, h in enumerate(handles):
            if not h.released:
                assert hf.caches_equal(index.gather(h), caches[j])
        index.touch(handles[(i + 1) % len(handles)])
        index.release(handles[i])
        check_accounting(index, handles)
    assert index.stats()["pages"] == 0 and index.stats()["trie"]["tokens"] == 0


def test_threads_insert_gather_lookup_release(tiny_llama, rng):
    """Threads insert the same new prefixes at once (one set of pages wins, the losers' slots are
    freed), gather, look up and release; every read is exact, nothing leaks."""
    index = new_index(tiny_llama, page_tokens=4)
    systems = [rng.integers(0, V, 24) for _ in range(2)]
    work_items = []
    for t in range(4):
        items = []
        for i in range(6):
            toks = np.concatenate([systems[(t + i) % 2], rng.integers(0, V, 1 + (7 * i + t) % 9)])
            items.append((toks, causal_kv(toks, tiny_llama.config)))
        work_items.append(items)
    held: list = []

    def work(items):
        mine = []
        for rnd in range(3):
            for toks, cache in items:
                h = index.insert(toks, cache)
                mine.append((h, cache))
                n, got, _ = index.lookup(toks)
                assert n == toks.size
                assert hf.caches_equal(got, cache)
            for h, cache in mine[rnd::2]:
                assert hf.caches_equal(index.gather(h), cache)
                index.touch(h)
            for h, _ in mine[: len(mine) // 2]:
                index.release(h)
            mine = mine[len(mine) // 2 :]
        held.extend(h for h, _ in mine)

    run_threads(work, [(items,) for items in work_items])
    check_accounting(index, held)
    # each system prompt's 6 pages are stored once
    assert index.stats()["pages_shared"] >= 12
    index.close()  # releases every handle
    assert all(h.released for h in held)
    st_ = index.stats()
    assert st_["pages"] == 0 and st_["unique_bytes"] == 0 and st_["trie"]["tokens"] == 0 and st_["reserved_bytes"] == 0


# -- the store -----------------------------------------------------------------------------------


def _hot_invariant(store):
    """The hot tier's charged bytes are the KV the index really holds (plus kept warm codes)."""
    st_ = store.tier_stats()
    hot = st_["tiers"].get("hot")
    if hot is None:
        return
    assert hot["bytes"] == hot["kv_bytes"] + hot["codes_bytes"]
    assert hot["kv_bytes"] == st_["hot_index"]["unique_bytes"]
    assert hot["count"] == st_["hot_index"]["handles"]


def test_store_holds_a_shared_system_prompt_once(tiny_llama, rng):
    from seqkv.engine import Engine

    store = SessionStore(tiny_llama, codec="raw", engine=Engine.from_hf(tiny_llama, "f32"), capacity_bytes=10**7,
                         page_tokens=8)
    system = rng.integers(0, V, 48)
    seqs = {f"u{i}": np.concatenate([system, rng.integers(0, V, 3 + i)]) for i in range(5)}
    for sid, toks in seqs.items():
        store.put(sid, toks)
        _hot_invariant(store)
    hot = store.tier_stats()["tiers"]["hot"]
    assert hot["count"] == 5 and hot["pages_shared"] == 6 and hot["page_tokens"] == 8
    assert hot["logical_bytes"] - hot["bytes"] == 4 * 48 * TOKEN_BYTES  # the prompt's KV once, not 5 times
    for sid, toks in seqs.items():
        got, cache = store.get(sid, mode="exact")  # served hot, still the recorded bits
        assert np.array_equal(got, toks)
    assert store.tier_stats()["tiers"]["hot"]["hits"] == 5
    n, cache = store.get_prefix(np.concatenate([system, [1, 2, 3]]))
    assert n >= 48 and store.stats()["tiers"]["hot"]["hits"] == 6
    assert hf.caches_equal(cache, hf.cache_from_layers(
        tiny_llama, [(k[..., :n, :], v[..., :n, :]) for k, v in hf.cache_layers(store.get("u0")[1])]))
    store.demote("u4", "warm")
    store.delete("u0")
    _hot_invariant(store)
    assert store.tier_stats()["tiers"]["hot"]["pages_shared"] == 6
    store.drop_caches()
    assert store.tier_stats()["hot_index"]["pages"] == 0


def test_store_keeps_given_kv_whose_bits_differ(tiny_llama, rng):
    """put(kv=...) of a cache whose prefix bits differ from a hot session's: nothing is shared
    from that page on, and exact gets serve each session its own bits."""
    store = SessionStore(tiny_llama, codec="raw", capacity_bytes=10**6, page_tokens=4, engine=False)
    toks = rng.integers(0, V, 21)
    a, _ = hf.compute_cache(tiny_llama, toks)
    b = hf.clone_cache(tiny_llama, a)
    b.layers[1].values.view(torch.int32)[0, 1, 6, 2] ^= 1
    store.put("a", toks, kv=a)
    store.put("b", toks, kv=b, residual=True)  # bits no recompute gives: exact needs the residual
    hot = store.tier_stats()["tiers"]["hot"]
    assert hot["pages_shared"] == 1 and hot["bytes"] == hot["logical_bytes"] - 4 * TOKEN_BYTES
    assert hf.caches_equal(store.get("a", mode="exact")[1], a)
    assert hf.caches_equal(store.get("b", mode="exact")[1], b)
    _hot_invariant(store)


class HotAccountingMachine(RuleBasedStateMachine):
    """Random put / get / get_prefix / demote / delete on a store under a small budget: the hot
    tier's charges always equal the bytes its index holds, and exact gets stay exact."""

    model = None

    @initialize(capacity=st.sampled_from([40 * TOKEN_BYTES, 120 * TOKEN_BYTES, 10**6]),
                tiers=st.sampled_from([("hot", "warm", "cold"), ("hot", "cold")]), page_tokens=st.sampled_from([2, 8]))
    def setup(self, capacity, tiers, page_tokens):
        self.store = SessionStore(self.model, codec="raw", capacity_bytes=capacity, tiers=tiers, page_tokens=page_tokens, engine=False)
        self.capacity = capacity
        self.expected: dict[str, np.ndarray] = {}
        self.system = np.arange(200, 220)

    @rule(sid=st.sampled_from("abcdef"), tail=st.lists(st.integers(0, V - 1), max_size=10), shared=st.booleans())
    def put(self, sid, tail, shared):
        toks = np.concatenate([self.system if shared else np.array([3], np.int64), np.array(tail, np.int64)])
        self.store.put(sid, toks)
        self.expected[sid] = toks

    @precondition(lambda self: self.expected)
    @rule(data=st.data(), mode=st.sampled_from(["faithful", "exact"]))
    def get(self, data, mode):
        sid = data.draw(st.sampled_from(sorted(self.expected)))
        toks, cache = self.store.get(sid, mode=mode)
        assert np.array_equal(toks, self.expected[sid]) and hf.cache_length(cache) == toks.size
        if mode == "exact":
            assert hf.caches_equal(cache, hf.compute_cache(self.model, toks)[0])

    @precondition(lambda self: self.expected)
    @rule(data=st.data())
    def get_prefix(self, data):
        sid = data.draw(st.sampled_from(sorted(self.expected)))
        n, cache = self.store.get_prefix(np.concatenate([self.expected[sid], [1]]))
        assert n == 0 or hf.cache_length(cache) == n

    @precondition(lambda self: self.expected)
    @rule(data=st.data(), tier=st.sampled_from(["warm", "cold"]))
    def demote(self, data, tier):
        sid = data.draw(st.sampled_from(sorted(self.expected)))
        if tier in self.store.tiers:
            self.store.demote(sid, tier)

    @precondition(lambda self: self.expected)
    @rule(data=st.data())
    def delete(self, data):
        sid = data.draw(st.sampled_from(sorted(self.expected)))
        assert self.store.delete(sid)
        del self.expected[sid]

    @invariant()
    def charges_are_the_bytes_held(self):
        if not hasattr(self, "store"):
            return
        _hot_invariant(self.store)
        st_ = self.store.tier_stats()
        assert st_["used_bytes"] <= self.capacity
        assert sum(v["count"] for v in st_["tiers"].values()) == len(self.expected)


def test_hot_accounting_machine(tiny_llama):
    from hypothesis.stateful import run_state_machine_as_test

    HotAccountingMachine.model = tiny_llama
    run_state_machine_as_test(
        HotAccountingMachine,
        settings=settings(max_examples=25, stateful_step_count=14, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]),
    )


def test_store_threads_share_pages(tiny_llama, rng):
    """Threads put, get (exact and faithful) and get_prefix sessions sharing two system prompts
    under a budget that forces demotions; afterwards the accounting holds and every session
    restores exactly."""
    store = SessionStore(tiny_llama, codec="raw", capacity_bytes=150 * TOKEN_BYTES, page_tokens=4, engine=False)
    systems = [rng.integers(0, V, 16) for _ in range(2)]
    seqs = {f"t{i}": np.concatenate([systems[i % 2], rng.integers(0, V, 4 + i % 6)]) for i in range(12)}
    refs = {sid: hf.compute_cache(tiny_llama, toks)[0] for sid, toks in seqs.items()}

    def work(items):
        for rnd in range(3):
            for sid, toks in items:
                if rnd == 0:
                    store.put(sid, toks)
                got, cache = store.get(sid, mode="exact" if rnd % 2 else "faithful")
                assert np.array_equal(got, toks)
                if rnd % 2:
                    assert hf.caches_equal(cache, refs[sid])
                n, pre = store.get_prefix(toks)
                assert n >= 16 and hf.cache_length(pre) == n

    items = list(seqs.items())
    run_threads(work, [(items[i::4],) for i in range(4)])
    _hot_invariant(store)
    assert store.tier_stats()["used_bytes"] <= 150 * TOKEN_BYTES
    for sid in seqs:
        assert hf.caches_equal(store.get(sid, mode="exact")[1], refs[sid])
    _hot_invariant(store)
    store.close()
    assert store.tier_stats()["hot_index"]["pages"] == 0


def test_page_tokens_is_checked(tiny_llama):
    with pytest.raises(InvalidInputError, match="page_tokens"):
        SessionStore(tiny_llama, codec="raw", page_tokens=0)
    assert SessionStore(tiny_llama, codec="raw", tiers=("warm", "cold")).tier_stats()["hot_index"] is None
