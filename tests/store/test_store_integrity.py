"""The store never loses or mixes up a session (issue 18): atomic re-puts, session numbers never
reused, records bound to their id and checked on every read, a store that opens past a corrupt
row, ids validated before anything is touched, a bounded default, dedup that survives deletes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from seqkv.backends import SessionRecord
from seqkv.errors import CorruptStreamError, InvalidInputError, SeqkvError
from seqkv.store import SessionStore
from seqkv.store.catalog import RecordMeta

TESTS = str(Path(__file__).resolve().parent)

# The tiny_llama fixture's model, built the same way in a child process.
CHILD_PRELUDE = r"""
import sys
import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from seqkv.store import SessionStore

torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
    tie_word_embeddings=True)).eval()

def version(i):
    rng = np.random.default_rng(i)
    system = np.random.default_rng(7).integers(0, 512, 24)
    return np.concatenate([system, rng.integers(0, 512, 4 + i % 9)])

store = SessionStore(model, codec="raw", backend=sys.argv[1], record_hashes=False, capacity_bytes=None,
                     namespace="shared")
"""

REPUTTER = CHILD_PRELUDE + r"""
i = int(sys.argv[2])
while True:
    store.put("s%d" % (i % 5), version(i))
    sys.stdout.write("%d\n" % i)
    sys.stdout.flush()
    i += 1
"""

WRITER = CHILD_PRELUDE + r"""
k = int(sys.argv[2])
for i in range(k * 1000, k * 1000 + 25):
    store.put("p%d" % i, version(i))
    if i % 4 == 0:
        store.delete("p%d" % (i - 2))
store.close()
"""


def version(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    system = np.random.default_rng(7).integers(0, 512, 24)
    return np.concatenate([system, rng.integers(0, 512, 4 + i % 9)])


def raw_store(model, **kw) -> SessionStore:
    return SessionStore(model, codec="raw", record_hashes=False, capacity_bytes=None, **kw)


def test_readers_never_miss_a_session_during_a_reput(tiny_llama):
    store = raw_store(tiny_llama)
    a, b = version(1), version(2)
    store.put("x", a)
    store.put("y", version(3))  # references x's prefix: re-puts of x go through a hidden copy
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(60):
                store.put("x", b if i % 2 == 0 else a)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            stop.set()

    def reader() -> None:
        try:
            while not stop.is_set():
                got = store.tokens("x")
                assert np.array_equal(got, a) or np.array_equal(got, b)
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert np.array_equal(store.tokens("y"), version(3))


def lost_sessions(model, path: str, acked: dict[str, int]) -> list[str]:
    """Ids that do not hold their last acknowledged version, nor the next put of it if that
    committed before the kill (printed only after put returned), and quarantined rows."""
    store = raw_store(model, backend=path)
    try:
        lost = list(store.quarantined)
        for sid, i in acked.items():
            try:
                got = store.tokens(sid)
            except SeqkvError:  # missing or unreadable
                lost.append(sid)
                continue
            if not (np.array_equal(got, version(i)) or np.array_equal(got, version(i + 5))):
                lost.append(sid)
        return lost
    finally:
        store.close()


def kill_reputters(model, path: str, delays: tuple[float, ...], puts_before_kill: int = 15) -> dict[str, int]:
    """Start a re-putting child process on ``path`` and SIGKILL it mid-put once per delay, checking
    after each kill that no acknowledged version was lost. Returns ``kills``, ``acknowledged_puts``
    and ``sessions_lost``."""
    acked: dict[str, int] = {}
    start = acknowledged = lost = 0
    for delay in delays:
        proc = subprocess.Popen([sys.executable, "-c", REPUTTER, path, str(start)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        for _ in range(puts_before_kill):
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"re-putter exited early: {proc.stderr.read().decode() if proc.stderr else ''}")
            acked[f"s{int(line) % 5}"] = int(line)
            acknowledged += 1
            if time.monotonic() > deadline:
                raise RuntimeError("re-putter too slow")
        time.sleep(delay)  # keep re-putting a little so the kill lands mid-put
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
        for i in map(int, rest.split()):
            acked[f"s{i % 5}"] = i
            acknowledged += 1
        lost += len(lost_sessions(model, path, acked))
        start = max(acked.values()) + 10  # past any put that committed unacknowledged
    return {"kills": len(delays), "acknowledged_puts": acknowledged, "sessions_lost": lost}


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_during_reputs_loses_no_acknowledged_version(tiny_llama, tmp_path):
    path = str(tmp_path / "reput.sqlite")
    result = kill_reputters(tiny_llama, path, (0.0, 0.05, 0.11, 0.17, 0.23, 0.29))
    assert result["sessions_lost"] == 0, result


def test_two_processes_writing_one_sqlite_file(tiny_llama, tmp_path):
    path = str(tmp_path / "two.sqlite")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, path, str(k)], stderr=subprocess.PIPE) for k in (1, 2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    store = raw_store(tiny_llama, backend=path)
    expected = {f"p{i}" for k in (1, 2) for i in range(k * 1000, k * 1000 + 25)}
    expected -= {f"p{i - 2}" for k in (1, 2) for i in range(k * 1000, k * 1000 + 25) if i % 4 == 0}
    assert set(store.ids()) == expected and store.quarantined == []
    for sid in expected:
        assert np.array_equal(store.tokens(sid), version(int(sid[1:]))), sid
    # a new session deduplicates against the reopened ones and reads back right
    r = store.put("new", np.concatenate([version(1001)[:26], [5, 6, 7]]))
    assert r["prefix_tokens"] >= 24
    assert np.array_equal(store.tokens("new"), np.concatenate([version(1001)[:26], [5, 6, 7]]))


def test_numbers_are_never_reused_after_delete_and_reopen(tiny_llama, tmp_path):
    path = str(tmp_path / "reuse.sqlite")
    store = raw_store(tiny_llama, backend=path)
    store.put("a", version(1))
    rb = store.put("b", np.arange(100, 140))
    store.close()
    store = raw_store(tiny_llama, backend=path)
    store.delete("b")
    store.close()
    store = raw_store(tiny_llama, backend=path)
    rc = store.put("c", np.arange(300, 340))
    assert rc["number"] > rb["number"]
    d = np.concatenate([np.arange(100, 140), [1, 2, 3]])  # b's tokens: the trie may still name b
    store.put("d", d)
    assert np.array_equal(store.tokens("d"), d)
    store.close()
    store = raw_store(tiny_llama, backend=path)
    assert np.array_equal(store.tokens("d"), d) and np.array_equal(store.tokens("c"), np.arange(300, 340))


def test_a_reference_to_another_parent_is_detected(tiny_llama):
    store = raw_store(tiny_llama)
    store.put("a", version(1))
    store.put("b", version(2))  # references a's first 24 tokens
    record = store.backend.get("b")
    meta = RecordMeta.from_stored(record.meta, "b", store._table)
    meta = replace(meta, parent_crc32c=(meta.parent_crc32c + 1) % (1 << 32))
    store.backend.put("b", SessionRecord(record.container, meta.to_stored(store._table, binds_ids=store.backend.binds_ids), record.attachments))
    reopened = raw_store(tiny_llama, backend=store.backend)
    with pytest.raises(CorruptStreamError, match="references"):
        reopened.tokens("b")


def test_token_checksum_is_checked_on_every_get(tiny_llama):
    store = raw_store(tiny_llama)
    store.put("a", np.arange(10, 40))
    store.put("b", np.arange(50, 80))
    a, b = store.backend.get("a"), store.backend.get("b")
    # b's container under a's metadata: the backend's row checksums hold, the tokens do not
    store.backend.put("a", SessionRecord(b.container, a.meta, a.attachments))
    store.drop_caches()
    with pytest.raises(CorruptStreamError, match="checksum"):
        store.tokens("a")
    with pytest.raises(CorruptStreamError, match="checksum"):
        store.get("a")
    # a whole row under another id (a swapped row) is refused too
    store.backend.put("a", b)
    with pytest.raises(CorruptStreamError, match="swapped"):
        store.tokens("a")


@pytest.mark.parametrize("bad_id", ["a\x00b", "x" * 1025, "\ud800"])
def test_a_rejected_id_leaks_nothing(tiny_llama, bad_id):
    store = raw_store(tiny_llama)
    store.put("a", version(1))
    before = (len(store.trie), store.trie.stats()["pins"], store.backend.ids(), store.stats().sessions)
    with pytest.raises(InvalidInputError):
        store.put(bad_id, version(2))
    assert (len(store.trie), store.trie.stats()["pins"], store.backend.ids(), store.stats().sessions) == before


def test_default_store_is_bounded(tiny_llama):
    store = SessionStore(tiny_llama, codec="raw")
    assert store.capacity_bytes == 256 << 20 and store.tier_stats()["capacity_bytes"] == 256 << 20
    assert SessionStore(tiny_llama, codec="raw", capacity_bytes=None).tier_stats()["capacity_bytes"] is None


def test_corrupt_row_and_trie_blob_do_not_stop_the_store(tiny_llama, tmp_path):
    path = tmp_path / "corrupt.sqlite"
    store = raw_store(tiny_llama, backend=str(path))
    store.put("a", np.arange(10, 40))
    store.put("b", np.arange(50, 80))
    store.close()
    with sqlite3.connect(path) as con:
        con.execute("UPDATE sessions SET meta = CAST('{not json' AS BLOB) WHERE id = 'a'")
        con.execute("UPDATE blobs SET data = CAST('garbage' AS BLOB) WHERE name = 'trie'")
    store = raw_store(tiny_llama, backend=str(path))
    assert [q.split(":")[0] for q in store.quarantined] == ["a", "blob 'trie'"]
    assert store.stats().quarantined == store.quarantined
    assert store.ids() == ["b"] and np.array_equal(store.tokens("b"), np.arange(50, 80))
    r = store.put("c", np.concatenate([np.arange(50, 80), [1]]))
    assert r["prefix_tokens"] == 30  # the trie was rebuilt from the records


def test_dedup_survives_delete_and_reput(tiny_llama):
    store = raw_store(tiny_llama)
    fresh = raw_store(tiny_llama)
    for s in (store, fresh):
        for i in range(4):
            s.put(f"s{i}", version(i))
    for i in range(4):
        store.delete(f"s{i}")
    for i in range(4):
        store.put(f"s{i}", version(i))
    assert store.stats().dedup_ratio == pytest.approx(fresh.stats().dedup_ratio) and fresh.stats().dedup_ratio > 1.5
    # a replaced session: the sessions after it dedup against what is stored now
    store.put("s0", np.concatenate([version(0)[:24], [9, 9, 9]]))
    assert store.put("t", np.concatenate([version(0)[:24], [8]]))["prefix_tokens"] == 24


def test_trie_shrinks_and_is_not_rewritten_per_put(tiny_llama, tmp_path):
    store = raw_store(tiny_llama, backend=str(tmp_path / "shrink.sqlite"))
    for i in range(60):
        store.put(f"s{i % 3}", np.random.default_rng(i).integers(0, 512, 40))
    assert store.backend.blob_version("trie") == 0  # snapshotted at checkpoint/close only
    live = store.stats().tokens
    assert len(store.trie) <= 2 * live + 40
    store.checkpoint()
    assert store.backend.blob_version("trie") == 1


def test_put_refuses_what_get_would_refuse(tiny_llama):
    from seqkv.integrations import transformers as hf

    toks = version(1)
    store = SessionStore(tiny_llama, codec="raw", capacity_bytes=None)
    cache, _ = hf.compute_cache(tiny_llama, toks)
    two = hf.cache_from_layers(tiny_llama, [(k.repeat(2, 1, 1, 1), v.repeat(2, 1, 1, 1)) for k, v in hf.cache_layers(cache)])
    with pytest.raises(InvalidInputError, match="batch of 2"):
        store.put("two", toks, kv=two)
    eng = SessionStore(tiny_llama, codec="raw", capacity_bytes=None, engine="auto")
    if eng.kv_source == "seqkv-engine" and not hf.caches_equal(cache, eng.kv_builder.compute(toks, None)):
        with pytest.raises(InvalidInputError, match="residual=True"):
            eng.put("mine", toks, kv=cache)
        assert eng.put("mine", toks, kv=cache, residual=True)["residual_bytes"] > 0
    assert len(store) == 0


def test_options_are_checked_and_engine_choices_shared(tiny_llama):
    with pytest.raises(InvalidInputError, match="capacity_bytes"):
        SessionStore(tiny_llama, codec="raw", capacity_byte=1 << 20)
    with pytest.raises(InvalidInputError, match="engine"):
        SessionStore(tiny_llama, codec="raw", engine="fast")
    assert SessionStore(tiny_llama, codec="raw", engine=True).kv_source == "seqkv-engine"
    assert SessionStore(tiny_llama, codec="raw", engine="transformers").kv_source == "transformers"


def test_put_refuses_a_generate_cache_without_its_schedule(tiny_llama):
    """Issue 18.16: a cache from ``model.generate`` was computed as the prompt then one token at a
    time; stored under transformers without that schedule, an exact get could not reproduce it,
    so put refuses it with the fix, and accepts it with the schedule, a residual, or no claim of
    exactness."""
    import torch

    from seqkv.integrations import transformers as hf

    prompt = version(3)
    out = tiny_llama.generate(torch.tensor([prompt.tolist()]), max_new_tokens=8, do_sample=False,
                              return_dict_in_generate=True, pad_token_id=0)
    cache = out.past_key_values
    toks = out.sequences[0].numpy()[: hf.cache_length(cache)]
    schedule = [prompt.size] + [1] * (toks.size - prompt.size)
    store = SessionStore(tiny_llama, codec="raw", engine=False, capacity_bytes=0)
    with pytest.raises(InvalidInputError, match=r"schedule=.*residual=True"):
        store.put("g", toks, kv=cache)
    assert "g" not in store and len(store.trie) == 0
    store.put("g", toks, kv=cache, schedule=schedule)
    store.put("r", toks, kv=cache, residual=True)
    for sid in ("g", "r"):  # served cold: recomputed and checked
        assert hf.caches_equal(store.get(sid, mode="exact")[1], cache)
    faithful_only = SessionStore(tiny_llama, codec="raw", engine=False, record_hashes=False)
    faithful_only.put("g", toks, kv=cache)
    assert np.array_equal(faithful_only.tokens("g"), toks)


def test_engine_default_is_the_lm_codecs(tiny_llama):
    """Issue 17: one engine choice with the same default in LMCodec and SessionStore ("auto": the
    batch-invariant engine for a supported model on the CPU)."""
    import inspect

    from seqkv.codecs.lm import LMCodec
    from seqkv.store.config import StoreConfig

    assert StoreConfig().engine == inspect.signature(LMCodec).parameters["engine"].default == "auto"
    assert SessionStore(tiny_llama, codec="raw").kv_source == "seqkv-engine"
    assert SessionStore(tiny_llama, codec="raw", engine=False).kv_source == "transformers"


def _count_decodes(store: SessionStore, monkeypatch, during=None) -> list[int]:
    """Wrap the store's codec's decode: returns the list the calls are counted in; ``during()``
    runs inside the first decode."""
    calls: list[int] = []
    decode = store.codec.decode

    def counted(*args, **kwargs):
        calls.append(1)
        if during is not None and len(calls) == 1:
            during()
        return decode(*args, **kwargs)

    monkeypatch.setattr(store.codec, "decode", counted)
    return calls


def test_trie_compaction_decodes_nothing_the_trie_holds(tiny_llama, monkeypatch):
    """Issue 18.8: the compaction a delete triggers reads the stored sessions' tokens back from the
    trie (and parents), not by decoding every live record under the bookkeeping lock."""
    rng = np.random.default_rng(5)
    store = SessionStore(tiny_llama, codec="plt", record_hashes=False, capacity_bytes=0, engine=False)
    system = rng.integers(0, 512, 40)
    seqs = {f"s{i}": np.concatenate([system, rng.integers(0, 512, 60 + i)]) for i in range(40)}
    for sid, toks in seqs.items():
        store.put(sid, toks)
    store.put("head", system[:30])  # a whole prefix of s0: owns no trie node
    store.drop_caches()  # nothing in the token LRU
    calls = _count_decodes(store, monkeypatch)
    before = len(store.trie)
    for i in range(25):
        store.delete(f"s{i}")
    assert len(store.trie) < before - 20 * 60  # compacted
    assert calls == []
    for i in range(25, 40):
        assert np.array_equal(store.tokens(f"s{i}"), seqs[f"s{i}"])
    assert np.array_equal(store.tokens("head"), system[:30])
    assert store.put("again", seqs["s30"][:70])["prefix_tokens"] == 70


def test_trie_compaction_decodes_outside_the_lock(tiny_llama, monkeypatch):
    """A session the trie cannot give back (it owns no node: its tokens' nodes belonged to a
    deleted session) is decoded during the compaction with the bookkeeping lock free: another
    thread's store calls go on meanwhile."""
    store = raw_store(tiny_llama)
    store.put("big", np.arange(200, 400))
    x = np.arange(10, 20)
    store.put("a", x)
    store.delete("a")
    store.put("c", x[:7])  # a's nodes, whose owner is gone: c owns none
    store.put("d", np.arange(30, 40))
    store.drop_caches()
    store.tokens("d")  # d in the token LRU: reading it needs the bookkeeping lock only
    waited: list[float] = []

    def other_thread_call() -> None:
        t = threading.Thread(target=lambda: store.tokens("d"))
        t0 = time.perf_counter()
        t.start()
        t.join(timeout=5)
        waited.append(time.perf_counter() - t0 if not t.is_alive() else float("inf"))

    calls = _count_decodes(store, monkeypatch, during=other_thread_call)
    store.delete("big")
    assert waited and max(waited) < 1.0, waited  # a get of another session during the rebuild
    assert len(calls) >= 1 and len(store.trie) == 17
    monkeypatch.undo()
    assert np.array_equal(store.tokens("c"), x[:7])
    assert store.put("e", np.concatenate([x[:7], [1]]))["prefix_tokens"] == 7
