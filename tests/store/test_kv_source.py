"""The store remembers what computed the KV it recorded: exact restores of records written under
one KV source keep working when the store is reopened with another default."""

from __future__ import annotations

import numpy as np
import pytest

from seqkv.errors import NumericsMismatchError
from seqkv.integrations import transformers as hf
from seqkv.store import SessionStore


def _tokens() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 512, 40)


def test_records_written_under_transformers_restore_exactly_after_reopening_with_auto(tiny_llama, tmp_path):
    path = str(tmp_path / "hf.sqlite")
    toks = _tokens()
    with SessionStore(tiny_llama, codec="raw", backend=path, engine=False, capacity_bytes=None) as store:
        store.put("a", toks, schedule=[16, 8, 16])
        want = hf.layer_hashes(store.get("a", mode="exact")[1])
    with SessionStore(tiny_llama, codec="raw", backend=path, capacity_bytes=None) as reopened:
        assert reopened.kv_source == "seqkv-engine"  # the new default computes new records' KV
        got, cache = reopened.get("a", mode="exact", promote=False)
        assert np.array_equal(got, toks)
        assert hf.layer_hashes(cache) == want
        reopened.put("b", toks[:20])  # a record under the engine, in the same store
        reopened.get("b", mode="exact")
    with SessionStore(tiny_llama, codec="raw", backend=path, engine=False, capacity_bytes=None) as back:
        assert hf.layer_hashes(back.get("a", mode="exact")[1]) == want
        back.get("b", mode="exact")  # the engine's record, restored by the engine it names


def test_a_source_that_cannot_run_here_is_named(tiny_llama, tmp_path, monkeypatch):
    """A record the engine wrote, read where the engine cannot run the model: the error names the
    source the exact restore needs (never a silent recompute by another source)."""
    from seqkv.errors import InvalidInputError
    from seqkv.store import builder

    path = str(tmp_path / "engine.sqlite")
    with SessionStore(tiny_llama, codec="raw", backend=path, capacity_bytes=None) as store:
        store.put("a", _tokens())

    def cannot_run(model, engine):
        raise InvalidInputError("the engine does not run this model here")

    monkeypatch.setattr(builder, "resolve_engine", cannot_run)
    with SessionStore(tiny_llama, codec="raw", backend=path, engine=False, capacity_bytes=None) as reopened:
        with pytest.raises(NumericsMismatchError, match="seqkv-engine:[0-9a-f]{8}"):
            reopened.get("a", mode="exact")
        assert np.array_equal(reopened.get("a")[0], _tokens())  # faithful restores need no source
