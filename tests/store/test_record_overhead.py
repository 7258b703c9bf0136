"""Issue 18.20: what a record costs beyond its payload, with what every record of a store shares
(header fields, KV source) kept once per store; records of the previous layout stay readable."""

from __future__ import annotations

import numpy as np
import pytest

from seqkv.backends import SessionRecord
from seqkv.store import SessionStore
from seqkv.store.layout import expand

#: Fixed bytes per record beyond its payload (without exact-mode hashes; see docs/durability.md).
FIXED_OVERHEAD = 43
#: What exact-mode hashes add per model layer (8 bytes, base85 in the metadata), plus 2 for their count and size.
PER_LAYER_HASH = 10


def _chat_turn() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 512, 270)


@pytest.mark.parametrize("codec", ["raw", "plt", "lm"])
@pytest.mark.parametrize("hashes", [False, True])
def test_a_chat_turn_costs_a_bounded_overhead(tiny_llama, codec, hashes):
    store = SessionStore(tiny_llama, codec=codec, capacity_bytes=None, record_hashes=hashes)
    store.put("chat-turn-0001", _chat_turn())
    stats = store.stats()
    layers = tiny_llama.config.num_hidden_layers
    assert stats.overhead_bytes == stats.record_bytes - stats.payload_bytes
    assert stats.overhead_bytes <= FIXED_OVERHEAD + (2 + PER_LAYER_HASH * layers if hashes else 0)
    assert np.array_equal(store.tokens("chat-turn-0001"), _chat_turn())


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
        backend.put(sid, SessionRecord(container, old.to_dict(store._table)))
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
