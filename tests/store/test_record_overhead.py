"""Issue 18.20: what a record costs beyond its payload, with what every record of a store shares
(header fields, KV source) kept once per store; records of the previous layout stay readable."""

from __future__ import annotations

import numpy as np
import pytest

from seqkv.backends import SessionRecord
from seqkv.store import SessionStore
from seqkv.store.layout import expand

#: Fixed bytes per record beyond its payload, with the default one combined KV hash (the
#: issue's target; see docs/durability.md).
FIXED_OVERHEAD = 32
#: What ``record_hashes="layers"`` adds per model layer (an 8-byte digest), plus 2 for their count and size.
PER_LAYER_HASH = 8


def _chat_turn() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 512, 270)


@pytest.mark.parametrize("codec", ["raw", "plt", "lm"])
@pytest.mark.parametrize("hashes", [False, True, "layers"])
def test_a_chat_turn_costs_a_bounded_overhead(tiny_llama, codec, hashes):
    store = SessionStore(tiny_llama, codec=codec, capacity_bytes=None, record_hashes=hashes)
    store.put("chat-turn-0001", _chat_turn())
    stats = store.stats()
    layers = tiny_llama.config.num_hidden_layers
    assert stats.overhead_bytes == stats.record_bytes - stats.payload_bytes
    per_layer = 2 + PER_LAYER_HASH * layers - 8 if hashes == "layers" else 0  # in place of the combined hash
    assert stats.overhead_bytes <= FIXED_OVERHEAD + per_layer
    assert np.array_equal(store.tokens("chat-turn-0001"), _chat_turn())
    if hashes:
        store.get("chat-turn-0001", mode="exact")


def test_a_backend_that_does_not_bind_ids_gets_records_that_carry_a_checksum_of_their_id(tiny_llama):
    from seqkv.backends import MemoryBackend

    class Unbound(MemoryBackend):
        binds_ids = False

    bound = SessionStore(tiny_llama, codec="raw", capacity_bytes=None)
    unbound = SessionStore(tiny_llama, codec="raw", backend=Unbound(), capacity_bytes=None)
    for store in (bound, unbound):
        store.put("x", _chat_turn())
    assert unbound.stats().overhead_bytes == bound.stats().overhead_bytes + 4
    # that checksum is what refuses x's record copied under another id
    unbound.backend.put("y", unbound.backend.get("x"))
    reopened = SessionStore(tiny_llama, codec="raw", backend=unbound.backend, capacity_bytes=None)
    assert "x" in reopened and "y" not in reopened
    assert any(q.startswith("y:") for q in reopened.quarantined)


def test_a_combined_hash_refuses_a_restore_that_differs_in_any_layer(tiny_llama):
    from dataclasses import replace

    from seqkv.errors import NumericsMismatchError
    from seqkv.store.catalog import RecordMeta

    store = SessionStore(tiny_llama, codec="raw", capacity_bytes=None)
    store.put("a", _chat_turn())
    record = store.backend.get("a")
    meta = RecordMeta.from_stored(record.meta, "a", store._table)
    assert meta.hashes_combined and len(meta.hashes) == 1
    flipped = replace(meta, hashes=(bytes([meta.hashes[0][0] ^ 1]) + meta.hashes[0][1:],))
    store.backend.put("a", SessionRecord(record.container, flipped.to_stored(store._table, binds_ids=True)))
    reopened = SessionStore(tiny_llama, codec="raw", backend=store.backend, capacity_bytes=None)
    with pytest.raises(NumericsMismatchError, match="combined hash"):
        reopened.get("a", mode="exact")


def test_stripped_containers_expand_to_the_codecs_stream(tiny_llama):
    store = SessionStore(tiny_llama, codec="lm", capacity_bytes=None, record_hashes=False)
    toks = _chat_turn()
    full, _ = store.codec.encode_with_stats(toks[150:], context=toks[:150])
    store.put("a", toks[:150])
    store.put("b", toks)  # codes toks[150:] after a's 150 tokens
    entry = store._catalog.by_id["b"]
    stored = store.backend.get("b").container
    assert entry.meta.prefix == 150
    assert expand(stored, store._table, 120, entry.meta.tokens_crc32c, "b") == full
    assert store.container("b") == full


def test_records_of_the_previous_layout_stay_readable(tiny_llama):
    store = SessionStore(tiny_llama, codec="raw", capacity_bytes=None, engine=False)
    store.put("a", _chat_turn()[:100])
    store.put("b", _chat_turn())
    backend = store.backend
    for sid in ("a", "b"):  # rewrite both as layout 1 wrote them: full container, a JSON key per field
        entry = store._catalog.by_id[sid]
        container = store._resolver.container(entry, backend.get(sid))
        from dataclasses import replace

        old = replace(entry.meta, layout=1, container_bytes=len(container))
        backend.put(sid, SessionRecord(container, old.to_stored(store._table, binds_ids=True)))
    assert backend.get_meta("b")["v"] == 1
    reopened = SessionStore(tiny_llama, codec="raw", backend=backend, capacity_bytes=None, engine=False)
    assert np.array_equal(reopened.tokens("b"), _chat_turn())
    reopened.get("b", mode="exact")
    reopened.delete("a")  # referenced by b: kept hidden, in its own layout
    assert np.array_equal(reopened.tokens("b"), _chat_turn())


def test_an_unreadable_shared_table_stops_the_open_instead_of_quarantining_every_record(tiny_llama):
    from seqkv.errors import StoreError
    from seqkv.store.layout import SHARED_BLOB

    store = SessionStore(tiny_llama, codec="raw", capacity_bytes=None, record_hashes=False)
    store.put("a", _chat_turn())
    store.backend.put_blob(SHARED_BLOB, b"{not json")
    with pytest.raises(StoreError, match=SHARED_BLOB):
        SessionStore(tiny_llama, codec="raw", backend=store.backend, capacity_bytes=None, record_hashes=False)
    assert store.backend.ids() == ["a"]  # nothing quarantined


#: Two raw sessions as a store of layout 2 wrote them (base85 metadata under one JSON key),
#: b referencing a's 30 tokens; written by commit a1bbc55 with the tiny_llama fixture.
_LAYOUT_2 = {
    "shared": '{"headers":["53514b560100010109000000000000000000020000000000000000000000000000000000000000000090c287aa00000000"],"sources":["transformers:3ece1b9e"]}',
    "a": ("0000017941b05e6089274be53fa7f78d845e9d06d1a4c64560edde075913d12a1cf931fa6c",
          "0ssL49smLex%yo2?ZIokx`?31i=EBPkOCzD03T8+;6uK*=l"),
    "b": ("000002bed786071fba3e8446233b9c6880a180", "0s;X7C>{YHQYzpA2m}Jmg9e<ntad7Sk~BPjUSJad0324>1o`j2aR"),
}
_LAYOUT_2_TOKENS = [242, 262, 386, 486, 17, 73, 421, 485, 127, 159, 444, 216, 139, 423, 131, 209, 329, 281, 43, 14,
                    443, 385, 428, 275, 418, 168, 231, 403, 63, 155, 63, 232, 500, 68, 196, 206, 462, 104, 257, 134]


def test_records_of_layout_2_stay_readable_and_are_hidden_in_layout_3(tiny_llama):
    from seqkv.backends import MemoryBackend
    from seqkv.store.layout import SHARED_BLOB

    backend = MemoryBackend()
    backend.put_blob(SHARED_BLOB, _LAYOUT_2["shared"].encode())
    for sid in ("a", "b"):
        container, packed = _LAYOUT_2[sid]
        backend.put(sid, SessionRecord(bytes.fromhex(container), {"m": packed}))
    store = SessionStore(tiny_llama, codec="raw", backend=backend, capacity_bytes=None, engine=False)
    assert store._catalog.by_id["b"].meta.layout == 2 and store._catalog.by_id["b"].meta.prefix == 30
    assert np.array_equal(store.tokens("b"), _LAYOUT_2_TOKENS)
    assert np.array_equal(store.tokens("a"), _LAYOUT_2_TOKENS[:30])
    store.delete("a")  # referenced by b: its record moves to its hidden id, as binary metadata
    reopened = SessionStore(tiny_llama, codec="raw", backend=backend, capacity_bytes=None, engine=False)
    assert "a" not in reopened and [e.meta.layout for e in reopened._catalog.by_number.values()] == [3, 2]
    assert np.array_equal(reopened.tokens("b"), _LAYOUT_2_TOKENS)
