"""SessionStore on the tiny random Llama: dedup through the trie, faithful and exact restore,
references kept alive across deletes, thread safety, persistence, transformers helpers."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import run_threads

from seqkv.integrations import transformers as hf
from seqkv.errors import InvalidInputError, NumericsMismatchError, SessionNotFoundError
from seqkv.store import SessionStore


@pytest.fixture
def sessions(rng):
    system = rng.integers(0, 512, 24)
    return {
        "a": np.concatenate([system, rng.integers(0, 512, 12)]),
        "b": np.concatenate([system, rng.integers(0, 512, 9)]),
        "c": rng.integers(0, 512, 10),
    }


def test_put_get_dedup(tiny_llama, sessions):
    store = SessionStore(tiny_llama, engine=False)
    ra = store.put("a", sessions["a"])
    rb = store.put("b", sessions["b"])
    assert ra["prefix_tokens"] == 0 and ra["coded_tokens"] == 36
    assert rb["prefix_tokens"] == 24 and rb["coded_tokens"] == 9
    store.put("c", sessions["c"])
    assert len(store) == 3 and "b" in store and "zz" not in store
    for sid, toks in sessions.items():
        got, cache = store.get(sid)
        assert np.array_equal(got, toks)
        ref, _ = hf.compute_cache(tiny_llama, toks)
        assert hf.cache_length(cache) == toks.size
        assert hf.max_abs_diff(cache, ref) == 0.0  # faithful = one prefill, same machine
    st = store.stats()
    assert st["tokens"] == 36 + 33 + 10 and st["coded_tokens"] == 36 + 9 + 10
    assert st["dedup_ratio"] == pytest.approx(79 / 55)
    assert st["trie"]["pins"] == 1
    with pytest.raises(SessionNotFoundError):
        store.get("nope")


def test_whole_session_is_a_prefix(tiny_llama, sessions):
    store = SessionStore(tiny_llama)
    store.put("a", sessions["a"])
    r = store.put("a-head", sessions["a"][:20])
    assert r["coded_tokens"] == 0 and r["prefix_tokens"] == 20
    assert np.array_equal(store.tokens("a-head"), sessions["a"][:20])


def test_exact_mode_replays_the_schedule(tiny_llama, sessions):
    store = SessionStore(tiny_llama, engine=False)
    toks = sessions["a"]
    schedule = [16, 8] + [1] * 12
    store.put("a", toks, schedule=schedule)
    got, cache = store.get("a", mode="exact")
    ref, _ = hf.compute_cache(tiny_llama, toks, schedule)
    assert hf.caches_equal(cache, ref)
    # a cache computed with another schedule: the replay cannot match it, so put refuses it
    # (issue 18.16: refused at put rather than by a later exact get)
    other, _ = hf.compute_cache(tiny_llama, toks, [1] * toks.size)
    if not hf.caches_equal(other, ref):
        with pytest.raises(InvalidInputError, match="schedule="):
            store.put("a2", toks, schedule=schedule, kv=other)
        store.put("a2", toks, schedule=[1] * toks.size, kv=other)
        assert hf.caches_equal(store.get("a2", mode="exact")[1], other)
    # a record whose recomputation no longer matches (another machine's numerics) is an error
    reopened = _with_other_hashes(store, "a")
    with pytest.raises(NumericsMismatchError, match="layers"):
        reopened.get("a", mode="exact")
    with pytest.raises(InvalidInputError):
        store.put("bad", toks, schedule=[5, 5])
    with pytest.raises(InvalidInputError):
        store.get("a", mode="fast")


def _with_other_hashes(store: SessionStore, sid: str) -> SessionStore:
    """The store reopened after a record's KV hashes were rewritten as if put had computed other
    bits (a record written on a machine whose numerics differ)."""
    from dataclasses import replace

    from seqkv.backends import SessionRecord
    from seqkv.store.catalog import RecordMeta

    record = store.backend.get(sid)
    meta = RecordMeta.from_stored(record.meta, sid, store._table)
    meta = replace(meta, hashes=tuple(bytes(len(h)) for h in meta.hashes))
    store.backend.put(sid, SessionRecord(record.container, meta.to_stored(store._table, binds_ids=store.backend.binds_ids), record.attachments))
    return SessionStore(store.model, backend=store.backend, engine=store.config.engine)


def test_restored_cache_continues_generation(tiny_llama, sessions):
    store = SessionStore(tiny_llama, keep_kv=False)
    toks = sessions["b"]
    store.put("b", toks)
    _, cache = store.get("b")
    assert hf.greedy_continuation(tiny_llama, toks, cache, 6) == hf.greedy_continuation(tiny_llama, toks, None, 6)


def test_delete_keeps_referenced_parents(tiny_llama, sessions):
    store = SessionStore(tiny_llama)
    store.put("a", sessions["a"])
    store.put("b", sessions["b"])
    assert store.delete("a") and not store.delete("a")
    assert "a" not in store and len(store) == 1
    assert store.stats()["hidden_sessions"] == 1
    assert np.array_equal(store.get("b")[0], sessions["b"])
    store.delete("b")
    st = store.stats()
    assert st["sessions"] == 0 and st["hidden_sessions"] == 0 and st["trie"]["pins"] == 0
    assert store.backend.ids() == []


def test_replace_and_ids(tiny_llama, sessions):
    store = SessionStore(tiny_llama, codec="raw")
    store.put("a", sessions["a"])
    store.put("a", sessions["c"])
    assert np.array_equal(store.tokens("a"), sessions["c"])
    with pytest.raises(InvalidInputError):
        store.put("", sessions["c"])
    with pytest.raises(InvalidInputError):
        store.put("x", [600])


@pytest.mark.parametrize("codec", ["raw", "plt", "lm-robust"])
def test_other_codecs(tiny_llama, sessions, codec):
    from seqkv import codecs

    if codec not in codecs.available():
        pytest.skip(f"{codec} not built")
    store = SessionStore(tiny_llama, codec=codec, record_hashes=False)
    for sid, toks in sessions.items():
        store.put(sid, toks)
    for sid, toks in sessions.items():
        assert np.array_equal(store.tokens(sid), toks)
    with pytest.raises(InvalidInputError):
        store.get("a", mode="exact")  # no hashes recorded


def test_keep_kv(tiny_llama, sessions):
    store = SessionStore(tiny_llama, keep_kv=True)
    store.put("a", sessions["a"])
    _, c1 = store.get("a")
    _, c2 = store.get("a")
    assert hf.caches_equal(c1, c2) and c1 is not c2
    assert store.stats()["kept_kv_sessions"] == 1


def test_threads(tiny_llama, rng):
    store = SessionStore(tiny_llama)
    system = rng.integers(0, 512, 16)
    seqs = {f"s{i}": np.concatenate([system, rng.integers(0, 512, 6)]) for i in range(6)}

    def work(items):
        for sid, toks in items:
            store.put(sid, toks)
            assert np.array_equal(store.get(sid)[0], toks)

    items = list(seqs.items())
    run_threads(work, [(items[i::3],) for i in range(3)])
    assert len(store) == 6
    assert store.stats()["coded_tokens"] < sum(len(s) for s in seqs.values())
    for sid, toks in seqs.items():
        assert np.array_equal(store.tokens(sid), toks)


def test_persistent_backend_reopens(tiny_llama, sessions, tmp_path):
    path = tmp_path / "s.sqlite"
    store = SessionStore(tiny_llama, backend=str(path))
    store.put("a", sessions["a"])
    store.put("b", sessions["b"])
    ns = store.namespace
    store.close()
    again = SessionStore(tiny_llama, backend=str(path))
    assert again.namespace == ns and sorted(again.ids()) == ["a", "b"]
    assert np.array_equal(again.get("b", mode="exact")[0], sessions["b"])
    r = again.put("d", np.concatenate([sessions["a"][:24], [1, 2, 3]]))
    assert r["prefix_tokens"] == 24  # the trie came back from the backend
    again.close()


def test_bf16_round_trip_and_hashes(tiny_llama, sessions):
    import torch

    cache, _ = hf.compute_cache(tiny_llama, sessions["a"])
    blob = hf.kv_to_bf16_bytes(cache)
    back = hf.kv_from_bf16_bytes(tiny_llama, blob)
    assert hf.cache_length(back) == sessions["a"].size
    err = hf.max_abs_diff(cache, back)
    assert 0 < err < 0.05
    bf = hf.cache_from_layers(tiny_llama, [(k.to(torch.bfloat16).float(), v.to(torch.bfloat16).float()) for k, v in hf.cache_layers(cache)])
    assert hf.caches_equal(bf, back)
    assert hf.layer_hashes(cache) == hf.layer_hashes(hf.clone_cache(tiny_llama, cache))
    assert hf.layer_hashes(cache) != hf.layer_hashes(back)
    assert hf.kv_bits_per_token(tiny_llama) == 2 * 2 * 2 * 16 * 16
