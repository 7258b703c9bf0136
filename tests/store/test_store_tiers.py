"""SessionStore tiers (hot / warm / cold), residual fallback for exact restores, the engine-backed
store, get_prefix, concurrency and bad input — on the tiny random-weight Llama."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import run_threads
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from seqkv.integrations import transformers as hf
from seqkv.errors import CorruptStreamError, InvalidInputError, SessionNotFoundError
from seqkv.store import SessionStore

# KV bytes per token of the tiny Llama in f32: 2 layers x (K, V) x 2 heads x 16 dims x 4 bytes
PER_TOKEN = 2 * 2 * 2 * 16 * 4


def _warm_bound(cache, ref) -> bool:
    """Dequantized 3-bit KV is close to the reference (relative MSE well under 10%)."""
    for (k, v), (rk, rv) in zip(hf.cache_layers(cache), hf.cache_layers(ref)):
        for a, b in ((k, rk), (v, rv)):
            err = float(((a.double() - b.double()) ** 2).mean())
            power = float((b.double() ** 2).mean())
            if not err <= 0.1 * power:
                return False
    return True


@pytest.fixture
def convo(rng):
    system = rng.integers(0, 512, 24)
    return {f"s{i}": np.concatenate([system, rng.integers(0, 512, 8 + i)]) for i in range(6)}


def test_capacity_demotes_and_access_promotes(tiny_llama, convo):
    store = SessionStore(tiny_llama, codec="plt", capacity_bytes=90 * PER_TOKEN, engine=False)
    for sid, toks in convo.items():
        assert store.put(sid, toks)["tier"] == "hot"  # the newest is always placed hot
    st_ = store.tier_stats()
    assert st_["used_bytes"] <= 90 * PER_TOKEN
    tiers = {sid: store.tier_of(sid) for sid in convo}
    assert tiers["s5"] == "hot" and tiers["s0"] != "hot"  # LRU: the oldest went down
    counts = {t: v["count"] for t, v in st_["tiers"].items()}
    assert sum(counts.values()) == len(convo) and counts["warm"] >= 1
    hot = st_["tiers"]["hot"]
    assert hot["logical_bytes"] == sum(convo[s].size * PER_TOKEN for s, t in tiers.items() if t == "hot")
    assert hot["bytes"] == hot["kv_bytes"] < hot["logical_bytes"]  # the system prompt's page is held once
    assert st_["tiers"]["hot"]["bytes"] <= st_["limits"]["hot"]
    # the warm ones: faithful get dequantizes (close, not exact) and promotes to hot
    warm_id = next(s for s, t in tiers.items() if t == "warm")
    toks, cache = store.get(warm_id)
    ref, _ = hf.compute_cache(tiny_llama, convo[warm_id])
    assert np.array_equal(toks, convo[warm_id])
    assert hf.max_abs_diff(cache, ref) > 0 and _warm_bound(cache, ref)
    assert store.tier_of(warm_id) == "hot"
    after = store.tier_stats()
    assert after["tiers"]["warm"]["hits"] == 1 and after["tiers"]["hot"]["promotions_in"] >= 1
    assert after["used_bytes"] <= 90 * PER_TOKEN
    # exact mode never serves the lossy copy: it recomputes, matches the hashes and upgrades
    _, exact = store.get(warm_id, mode="exact")
    assert hf.caches_equal(exact, ref)
    _, again = store.get(warm_id, mode="exact")
    assert hf.caches_equal(again, ref) and store.tier_stats()["tiers"]["hot"]["hits"] >= 1


def test_unbounded_store_keeps_the_old_behaviour(tiny_llama, convo):
    store = SessionStore(tiny_llama, codec="plt", capacity_bytes=None)
    store.put("a", convo["s0"])
    assert store.tier_of("a") == "cold" and store.tier_stats()["capacity_bytes"] is None
    _, c = store.get("a")
    assert store.tier_of("a") == "hot"  # promoted on access: nothing limits memory
    _, c2 = store.get("a")
    assert hf.caches_equal(c, c2) and c is not c2
    assert store.stats()["tiers"]["hot"]["hits"] == 1 and store.stats()["tiers"]["cold"]["hits"] == 1


def test_zero_capacity_keeps_everything_cold(tiny_llama, convo):
    store = SessionStore(tiny_llama, codec="raw", capacity_bytes=0)
    for sid, toks in convo.items():
        store.put(sid, toks)
        assert store.tier_of(sid) == "cold"
    for sid, toks in convo.items():
        got, cache = store.get(sid)
        assert np.array_equal(got, toks) and hf.cache_length(cache) == toks.size
        assert store.tier_of(sid) == "cold"
    assert store.tier_stats()["used_bytes"] == 0


def test_two_tiers_and_plt_policy(tiny_llama, convo):
    store = SessionStore(tiny_llama, codec="plt", capacity_bytes=70 * PER_TOKEN, tiers=("hot", "cold"), policy="plt")
    for sid, toks in convo.items():
        store.put(sid, toks)
    st_ = store.tier_stats()
    assert set(st_["tiers"]) == {"hot", "cold"} and st_["policy"] == "plt"
    assert st_["used_bytes"] <= 70 * PER_TOKEN
    for sid, toks in convo.items():
        assert np.array_equal(store.get(sid, mode="exact")[0], toks)
    # warm only: every kept session is quantized at put
    warm = SessionStore(tiny_llama, codec="plt", capacity_bytes=10_000, tiers=("warm", "cold"))
    warm.put("a", convo["s0"])
    assert warm.tier_of("a") == "warm"
    _, c = warm.get("a")
    assert _warm_bound(c, hf.compute_cache(tiny_llama, convo["s0"])[0])


def test_get_prefix(tiny_llama, convo, rng):
    store = SessionStore(tiny_llama, codec="plt", capacity_bytes=400 * PER_TOKEN, engine=False)
    store.put("s0", convo["s0"])
    request = np.concatenate([convo["s0"], rng.integers(0, 512, 5)])
    n, cache = store.get_prefix(request)
    assert n == convo["s0"].size and hf.cache_length(cache) == n
    ref, _ = hf.compute_cache(tiny_llama, convo["s0"])
    assert hf.caches_equal(cache, ref)  # the hot copy, sliced
    # a request sharing only the system prompt gets the prompt's KV
    other = np.concatenate([convo["s0"][:24], rng.integers(0, 512, 4)])
    n2, c2 = store.get_prefix(other)
    assert n2 >= 24 and hf.cache_length(c2) == n2
    assert hf.max_abs_diff(c2, hf.compute_cache(tiny_llama, other[:n2])[0]) == 0.0
    # nothing in memory: the cold tier restores the stored prefix
    store.drop_caches()
    n3, c3 = store.get_prefix(request)
    assert n3 == convo["s0"].size and hf.caches_equal(c3, ref)
    assert store.tier_of("s0") == "hot" and store.tier_stats()["tiers"]["cold"]["hits"] == 1
    assert store.get_prefix([]) == (0, None)
    with pytest.raises(InvalidInputError):
        store.get_prefix([9999])


def test_residual_fallback_is_bit_exact(tiny_llama, convo):
    toks = convo["s3"]
    steps, _ = hf.compute_cache(tiny_llama, toks, [1] * toks.size)  # the caller's KV: single steps
    prefill, _ = hf.compute_cache(tiny_llama, toks)
    assert not hf.caches_equal(steps, prefill), "the schedules must differ for this test to mean anything"
    store = SessionStore(tiny_llama, codec="plt", engine=False)
    info = store.put("r", toks, kv=steps, residual=True)  # recorded schedule: one prefill
    assert info["residual_bytes"] > 10
    _, cache = store.get("r", mode="exact")
    assert hf.caches_equal(cache, steps)
    assert store.stats()["residual_bytes"] == info["residual_bytes"]
    # without a residual (or the schedule it was computed with) put refuses it (issue 18.16:
    # a later exact get could not serve it)
    with pytest.raises(InvalidInputError, match="residual=True"):
        store.put("n", toks, kv=steps)
    assert "n" not in store
    # same schedule: the residual is all zero (10 bytes: header and CRC)
    assert store.put("z", toks, kv=prefill, residual=True)["residual_bytes"] == 10
    assert hf.caches_equal(store.get("z", mode="exact")[1], prefill)
    # kept hot, the exact copy is served; from cold the residual is applied again
    store.drop_caches()
    assert hf.caches_equal(store.get("r", mode="exact")[1], steps)


def test_residual_survives_reopen(tiny_llama, convo, tmp_path):
    toks = convo["s1"]
    steps, _ = hf.compute_cache(tiny_llama, toks, [3] * (toks.size // 3) + [toks.size % 3] * bool(toks.size % 3))
    path = tmp_path / "r.sqlite"
    store = SessionStore(tiny_llama, codec="plt", backend=str(path))
    store.put("r", toks, kv=steps, residual=True)
    store.close()
    again = SessionStore(tiny_llama, codec="plt", backend=str(path), capacity_bytes=10**6)
    assert again.tier_of("r") == "cold"
    assert hf.caches_equal(again.get("r", mode="exact")[1], steps)
    again.close()


def test_corrupt_residual_is_a_seqkv_error(tiny_llama, convo):
    from seqkv.backends import SessionRecord

    toks = convo["s2"]
    steps, _ = hf.compute_cache(tiny_llama, toks, [1] * toks.size)
    store = SessionStore(tiny_llama, codec="plt")
    store.put("r", toks, kv=steps, residual=True, keep_kv=False)
    rec = store.backend.get("r")
    bad = bytearray(rec.attachments["residual"])
    bad[len(bad) // 2] ^= 0x10
    store.backend.put("r", SessionRecord(rec.container, rec.meta, {"residual": bytes(bad)}))
    with pytest.raises(CorruptStreamError):
        store.get("r", mode="exact")


def test_engine_backed_exact_restore_needs_no_residual(tiny_llama, convo):
    from seqkv.engine import Engine

    eng = Engine.from_hf(tiny_llama, "f32")
    store = SessionStore(tiny_llama, codec="plt", engine=eng, capacity_bytes=0)
    assert store.kv_source == "seqkv-engine"
    toks = convo["s4"]
    # the engine's KV computed under three schedules is the same bits
    caches = []
    for chunks in ([toks.size], [1] * toks.size, [5, 11, toks.size - 16]):
        seq = eng.new_sequence()
        pos = 0
        for c in chunks:
            eng.prefill(seq, toks[pos : pos + c], logits="none")
            pos += c
        caches.append(seq.kv_cache(config=tiny_llama.config))
    assert all(hf.caches_equal(caches[0], c) for c in caches[1:])
    # put records a single-step schedule; exact restore (cold: capacity 0) is one engine prefill
    info = store.put("e", toks, schedule=[1] * toks.size, kv=caches[1], residual=True)
    assert info["residual_bytes"] == 10  # all-zero residual: only the header and CRC
    _, cache = store.get("e", mode="exact")
    assert hf.caches_equal(cache, caches[1])
    store.put("e2", toks, schedule=[2] * (toks.size // 2) + [1] * (toks.size % 2))  # KV computed by the engine
    assert hf.caches_equal(store.get("e2", mode="exact")[1], caches[0])
    # transformers' KV is not the engine's: without a residual, exact mode could not serve it,
    # so put refuses it (issue 18.16: refused at put, not at a later get)
    tf, _ = hf.compute_cache(tiny_llama, toks)
    with pytest.raises(InvalidInputError, match="residual=True"):
        store.put("tf", toks, kv=tf)
    assert "tf" not in store
    store.put("tf-r", toks, kv=tf, residual=True)
    assert hf.caches_equal(store.get("tf-r", mode="exact")[1], tf)
    # "auto" picks the engine for a Llama; the engine's KV agrees with transformers' closely
    auto = SessionStore(tiny_llama, codec="plt", engine="auto")
    assert auto.kv_source == "seqkv-engine"
    auto.put("a", toks)
    assert hf.max_abs_diff(auto.get("a")[1], tf) < 1e-4


def test_bad_input(tiny_llama, convo):
    with pytest.raises(InvalidInputError, match="tiers"):
        SessionStore(tiny_llama, tiers=("warm", "hot", "cold"))
    with pytest.raises(InvalidInputError, match="tiers"):
        SessionStore(tiny_llama, tiers=("hot", "warm"))
    with pytest.raises(InvalidInputError, match="tiers"):
        SessionStore(tiny_llama, tiers="hot")
    with pytest.raises(InvalidInputError, match="capacity"):
        SessionStore(tiny_llama, capacity_bytes=-1)
    with pytest.raises(InvalidInputError, match="capacity"):
        SessionStore(tiny_llama, capacity_bytes=1.5)
    with pytest.raises(InvalidInputError, match="policy"):
        SessionStore(tiny_llama, capacity_bytes=10, policy="fifo")
    with pytest.raises(InvalidInputError, match="engine"):
        SessionStore(tiny_llama, engine="fast")
    with pytest.raises(InvalidInputError, match="engine"):
        SessionStore(tiny_llama, engine=object())
    store = SessionStore(tiny_llama, codec="raw", capacity_bytes=1000)
    with pytest.raises(InvalidInputError, match="residual"):
        store.put("a", convo["s0"], residual=True)
    with pytest.raises(InvalidInputError, match="kv holds"):
        store.put("a", convo["s0"], kv=hf.compute_cache(tiny_llama, convo["s1"])[0])
    with pytest.raises(SessionNotFoundError):
        store.tier_of("nope")
    with pytest.raises(SessionNotFoundError):
        store.get("nope")
    assert len(store) == 0 and store.tier_stats()["used_bytes"] == 0


def test_threads_put_get_while_demoting(tiny_llama, rng):
    store = SessionStore(tiny_llama, codec="plt", capacity_bytes=120 * PER_TOKEN, engine=False)
    system = rng.integers(0, 512, 16)
    seqs = {f"t{i}": np.concatenate([system, rng.integers(0, 512, 10 + i % 5)]) for i in range(16)}
    refs = {sid: hf.compute_cache(tiny_llama, toks)[0] for sid, toks in seqs.items()}

    def work(items):
        for rnd in range(3):
            for sid, toks in items:
                if rnd == 0:
                    store.put(sid, toks)
                mode = "exact" if (rnd + len(sid)) % 2 else "faithful"
                got, cache = store.get(sid, mode=mode)
                assert np.array_equal(got, toks)
                if mode == "exact":
                    assert hf.caches_equal(cache, refs[sid])
                else:
                    assert _warm_bound(cache, refs[sid])
                n, pre = store.get_prefix(toks)
                assert n >= 16 and hf.cache_length(pre) == n
                assert store.tier_stats()["used_bytes"] <= 120 * PER_TOKEN

    items = list(seqs.items())
    run_threads(work, [(items[i::4],) for i in range(4)])
    st_ = store.tier_stats()
    assert sum(v["count"] for v in st_["tiers"].values()) == 16
    assert st_["tiers"]["hot"]["demotions_out"] > 0
    for sid, toks in seqs.items():
        assert hf.caches_equal(store.get(sid, mode="exact")[1], refs[sid])


class StoreMachine(RuleBasedStateMachine):
    """Random put / get / get_prefix / delete / drop sequences under a small budget: every stored
    session stays restorable (tokens, exact KV, faithful KV within the warm bound) and memory stays
    within the budget."""

    model = None

    @initialize(
        capacity=st.sampled_from([0, 30 * PER_TOKEN, 80 * PER_TOKEN, 200 * PER_TOKEN]),
        policy=st.sampled_from(["lru", "plt"]),
        tiers=st.sampled_from([("hot", "warm", "cold"), ("hot", "cold"), ("warm", "cold")]),
    )
    def setup(self, capacity, policy, tiers):
        self.store = SessionStore(self.model, codec="plt", capacity_bytes=capacity, policy=policy, tiers=tiers, engine=False)
        self.capacity = capacity
        self.expected: dict[str, np.ndarray] = {}
        self.refs: dict[str, object] = {}
        self.system = np.arange(100, 116)

    def _ref(self, sid):
        if sid not in self.refs:
            self.refs[sid] = hf.compute_cache(self.model, self.expected[sid])[0]
        return self.refs[sid]

    @rule(sid=st.sampled_from(["a", "b", "c", "d", "e"]), tail=st.lists(st.integers(0, 511), min_size=0, max_size=12),
          shared=st.booleans(), keep=st.sampled_from([None, True, False]))
    def put(self, sid, tail, shared, keep):
        toks = np.concatenate([self.system if shared else np.array([7], np.int64), np.array(tail, np.int64)])
        self.store.put(sid, toks, keep_kv=keep)
        self.expected[sid] = toks
        self.refs.pop(sid, None)

    @precondition(lambda self: self.expected)
    @rule(data=st.data(), mode=st.sampled_from(["faithful", "exact"]), promote=st.booleans())
    def get(self, data, mode, promote):
        sid = data.draw(st.sampled_from(sorted(self.expected)))
        toks, cache = self.store.get(sid, mode=mode, promote=promote)
        assert np.array_equal(toks, self.expected[sid])
        assert hf.cache_length(cache) == toks.size
        if mode == "exact":
            assert hf.caches_equal(cache, self._ref(sid))
        else:
            assert _warm_bound(cache, self._ref(sid))

    @precondition(lambda self: self.expected)
    @rule(data=st.data(), extra=st.integers(0, 3))
    def get_prefix(self, data, extra):
        sid = data.draw(st.sampled_from(sorted(self.expected)))
        request = np.concatenate([self.expected[sid], np.arange(extra)])
        n, cache = self.store.get_prefix(request)
        assert 0 <= n <= request.size
        if n:  # (a trie value of a dropped session can shorten a cold match; memory hits are exact)
            assert hf.cache_length(cache) == n
            assert _warm_bound(cache, hf.compute_cache(self.model, request[:n])[0])
        else:
            assert cache is None

    @precondition(lambda self: self.expected)
    @rule(data=st.data())
    def delete(self, data):
        sid = data.draw(st.sampled_from(sorted(self.expected)))
        assert self.store.delete(sid)
        del self.expected[sid]
        self.refs.pop(sid, None)

    @rule()
    def drop(self):
        self.store.drop_caches()

    @invariant()
    def within_budget_and_nothing_lost(self):
        if not hasattr(self, "store"):
            return
        st_ = self.store.tier_stats()
        assert st_["used_bytes"] <= self.capacity
        assert sum(v["count"] for v in st_["tiers"].values()) == len(self.expected)
        assert sorted(self.store.ids()) == sorted(self.expected)
        for sid, toks in self.expected.items():
            assert np.array_equal(self.store.tokens(sid), toks)


@pytest.fixture
def store_machine(tiny_llama):
    StoreMachine.model = tiny_llama
    return StoreMachine


def test_store_machine(store_machine):
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        store_machine,
        settings=settings(max_examples=25, stateful_step_count=14, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]),
    )


@given(n=st.integers(1, 40), cut=st.integers(1, 40))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_warm_slices_match_the_full_restore(tiny_llama, n, cut):
    """get_prefix from the warm tier returns the first positions of the dequantized session."""
    cut = min(cut, n)
    toks = (np.arange(n) * 37 + 11) % 512
    store = SessionStore(tiny_llama, codec="raw", capacity_bytes=10**6, tiers=("warm", "cold"))
    store.put("w", toks)
    k, part = store.get_prefix(toks[:cut])
    _, full = store.get("w", promote=False)
    assert k == cut
    for (pk, pv), (fk, fv) in zip(hf.cache_layers(part), hf.cache_layers(full)):
        assert bool((pk == fk[..., :cut, :]).all()) and bool((pv == fv[..., :cut, :]).all())


def test_explicit_demotion(tiny_llama, convo):
    store = SessionStore(tiny_llama, codec="plt", capacity_bytes=10**6, engine=False)
    store.put("a", convo["s0"])
    ref, _ = hf.compute_cache(tiny_llama, convo["s0"])
    assert store.tier_of("a") == "hot"
    assert store.demote("a", "warm") == "warm"
    st_ = store.tier_stats()
    assert st_["tiers"]["warm"]["count"] == 1 and 0 < st_["used_bytes"] < convo["s0"].size * PER_TOKEN / 4
    _, c = store.get("a", promote=False)
    assert store.tier_of("a") == "warm" and _warm_bound(c, ref) and not hf.caches_equal(c, ref)
    assert store.demote("a", "warm") == "warm"  # already there
    with pytest.raises(InvalidInputError):
        store.demote("a", "hot")
    assert store.demote("a", "cold") == "cold" and store.tier_stats()["used_bytes"] == 0
    assert store.demote("a", "warm") == "cold"  # demotion only: it stays cold
    with pytest.raises(InvalidInputError):
        SessionStore(tiny_llama, codec="raw", tiers=("hot", "cold"), engine=False).demote("a", "warm")
    with pytest.raises(SessionNotFoundError):
        store.demote("nope")
    assert hf.caches_equal(store.get("a", mode="exact")[1], ref)


def test_default_tiers_follow_the_head_dim():
    """A head dim the warm quantizer cannot take (here 24) drops the warm tier by default and
    refuses an explicit one."""
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=24)
    model = LlamaForCausalLM(config).eval()
    store = SessionStore(model, codec="raw", capacity_bytes=10**6)
    assert set(store.tier_stats()["tiers"]) == {"hot", "cold"}
    store.put("a", np.arange(10))
    assert store.tier_of("a") == "hot" and store.get("a", mode="exact")[0].size == 10
    with pytest.raises(InvalidInputError, match="power-of-two"):
        SessionStore(model, codec="raw", tiers=("hot", "warm", "cold"))


@pytest.mark.model
def test_smollm2_residual_and_engine_exact(smollm2):
    """Real SmolLM2 KV: single steps restored bit for bit through the residual; the engine-backed
    store restores its own KV exactly with an all-zero residual; warm KV within the 3-bit bound."""
    model, tokenizer = smollm2
    toks = np.asarray(tokenizer("The quick brown fox jumps over the lazy dog. " * 3)["input_ids"])[:32]
    steps, _ = hf.compute_cache(model, toks, [1] * toks.size)
    store = SessionStore(model, codec="plt", capacity_bytes=1 << 30)
    info = store.put("s", toks, kv=steps, residual=True)
    # f32 KV differs by many ulps between schedules: the residual costs several bits per
    # component, but stays well under the KV itself (46,080 bytes per token)
    assert 10 < info["residual_bytes"] < toks.size * 46_080 // 2
    store.demote("s", "cold")
    assert hf.caches_equal(store.get("s", mode="exact")[1], steps)
    store.demote("s", "warm")
    assert _warm_bound(store.get("s", promote=False)[1], steps)
    eng = SessionStore(model, codec="plt", engine="auto", capacity_bytes=0)
    assert eng.kv_source == "seqkv-engine"
    assert eng.put("e", toks, schedule=[1] * toks.size, kv=eng.kv_builder.compute(toks, None), residual=True)["residual_bytes"] == 10
    assert hf.max_abs_diff(eng.get("e", mode="exact")[1], steps) < 1e-2


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_warm_bits(tiny_llama, convo, bits):
    """Warm codes pack to `bits` bits each (the one bit packer) and round-trip; more bits,
    smaller error, more bytes."""
    from seqkv.kv.quantizers import pack_codes, unpack_codes

    codes = np.random.default_rng(bits).integers(0, 1 << bits, 1003).astype(np.uint8)
    packed = pack_codes(codes, bits)
    assert packed.size == (1003 * bits + 7) // 8 and np.array_equal(unpack_codes(packed, bits, 1003), codes)
    store = SessionStore(tiny_llama, codec="raw", capacity_bytes=10**6, tiers=("warm", "cold"), warm_bits=bits)
    store.put("a", convo["s0"])
    n = convo["s0"].size
    key_means = 2 * 2 * 16 * 4  # layers × heads × head dim, f32
    assert store.tier_stats()["tiers"]["warm"]["bytes"] == 2 * 2 * ((2 * n * 16 + 7) // 8 * bits + 4 * 2 * n) + key_means
    _, cache = store.get("a", promote=False)
    ref, _ = hf.compute_cache(tiny_llama, convo["s0"])
    err = sum(float(((a.double() - b.double()) ** 2).mean()) for (a, _), (b, _) in
              zip(hf.cache_layers(cache), hf.cache_layers(ref)))
    bound = {2: 0.15, 3: 0.05, 4: 0.015}[bits]  # relative MSE of Lloyd-Max on N(0,1): .118, .035, .0095
    power = sum(float((b.double() ** 2).mean()) for (b, _) in hf.cache_layers(ref))
    assert err <= bound * power
    with pytest.raises(InvalidInputError, match="warm_bits"):
        SessionStore(tiny_llama, codec="raw", warm_bits=5)


def test_concurrent_puts_of_one_id_leave_one_session(tiny_llama, rng):
    store = SessionStore(tiny_llama, codec="plt", capacity_bytes=50 * PER_TOKEN, engine=False)
    versions = [rng.integers(0, 512, 12 + i) for i in range(4)]

    def work(k: int) -> None:
        for i in range(6):
            store.put("same", versions[(k + i) % 4])
            store.put(f"other{k}", versions[k])

    run_threads(work, [(k,) for k in range(4)])
    st_ = store.stats()
    assert st_["sessions"] == 5 and sum(v["count"] for v in st_["tiers"].values()) == 5
    assert any(np.array_equal(store.tokens("same"), v) for v in versions)
    toks, cache = store.get("same", mode="exact")
    assert hf.caches_equal(cache, hf.compute_cache(tiny_llama, toks)[0])
    assert sorted(store.backend.ids()) == sorted(store.ids() + [k for k in store.backend.ids() if k.startswith("__")])


def test_warm_keys_are_centred_per_channel():
    """A large per-channel key offset (outlier channel) costs the centred keys nothing."""
    import torch

    from seqkv.store.warm import WarmCodec as _WarmCodec

    codec = _WarmCodec(16, 3)
    k = torch.randn(1, 2, 64, 16, generator=torch.Generator().manual_seed(0))
    k[..., 3] += 40.0

    def mse(q):
        return float(((codec._dequantize(q, 64, k.dtype, k.device) - k) ** 2).mean())

    plain, centred = codec._quantize(k), codec._quantize(k, center=True)
    assert plain.mean is None and centred.mean is not None and centred.mean.shape == (1, 2, 1, 16)
    assert mse(centred) < 0.05  # Lloyd-Max 3-bit on unit-variance components: ~0.035
    assert mse(centred) < mse(plain) / 10
