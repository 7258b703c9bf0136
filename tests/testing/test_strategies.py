"""seqkv.testing's strategies against the real codecs, quantizer, trie, residual and KV hash."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seqkv
from seqkv import codecs
from seqkv.coding import coder
from seqkv.coding._quantize_ref import quantize_logits_ref
from seqkv.kv import hashing, residual
from seqkv.testing import (
    assert_roundtrip,
    corruptions,
    encoded_streams,
    kv_caches,
    logits_batches,
    logits_rows,
    sessions_with_shared_prefixes,
    token_sequences,
)

VOCAB = 300
CODECS = {name: codecs.get(name, vocab_size=VOCAB) for name in ("raw", "plt")}
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FEW
@given(st.sampled_from(sorted(CODECS)), token_sequences(VOCAB))
def test_model_free_codecs_round_trip_drawn_tokens(name, tokens):
    assert tokens.dtype == np.uint32 and (tokens < VOCAB).all()
    assert_roundtrip(CODECS[name], tokens)


@FEW
@given(st.sampled_from(sorted(CODECS)), st.data())
def test_corrupted_streams_are_refused(name, data):
    damaged = data.draw(corruptions(encoded_streams(CODECS[name]).map(lambda s: s.data)))
    assert damaged.data != damaged.original
    with pytest.raises(seqkv.SeqkvError):
        CODECS[name].decode(damaged.data)


@FEW
@given(sessions_with_shared_prefixes(VOCAB))
def test_the_trie_stores_each_namespaced_prefix_once(sessions):
    trie = seqkv.Trie()
    for s in sessions:
        trie.insert(s.tokens, namespace=s.namespace)
    distinct = {(s.namespace, tuple(s.tokens[: i + 1].tolist())) for s in sessions for i in range(s.tokens.size)}
    assert len(trie) == len(distinct)
    for s in sessions:
        assert trie.match_prefix(s.tokens, namespace=s.namespace).length == s.tokens.size


@FEW
@given(logits_batches(), st.integers(9, 24))
def test_quantizer_gives_valid_tables_equal_to_the_reference(logits, precision):
    assert logits.dtype == np.float32 and not np.isnan(logits).any() and not np.isposinf(logits).any()
    if logits.shape[1] > 1 << precision:
        precision = 24
    tables = coder.quantize_logits(logits, precision)
    np.testing.assert_array_equal(tables, quantize_logits_ref(logits, precision))
    assert (tables >= 1).all()
    assert (tables.astype(np.uint64).sum(axis=1) == 1 << precision).all()


@FEW
@given(st.integers(1, 200).flatmap(lambda v: st.tuples(logits_batches(v, max_rows=6), st.data())))
def test_coder_round_trips_symbols_under_adversarial_logits(drawn):
    logits, data = drawn
    symbols = np.array(data.draw(st.lists(st.integers(0, logits.shape[1] - 1), min_size=len(logits), max_size=len(logits))))
    np.testing.assert_array_equal(coder.decode_logits(coder.encode_logits(symbols, logits), logits), symbols)


@FEW
@given(logits_rows(st.integers(1, 64), allow_posinf=True, allow_nan=True))
def test_quantizer_refuses_exactly_the_rows_with_nan_or_posinf(row):
    if np.isnan(row).any() or np.isposinf(row).any():
        with pytest.raises(seqkv.InvalidInputError):
            coder.quantize_logits(row)
    else:
        coder.quantize_logits(row)


@FEW
@given(kv_caches(special_values=True), st.data())
def test_residual_restores_drawn_kv_bit_for_bit(cache, data):
    for keys, values in cache.layers:
        for orig in (keys, values):
            recomp = data.draw(kv_caches(layers=1, batch=1, kv_heads=orig.shape[1], seq=orig.shape[2],
                                         head_dim=orig.shape[3], kinds=(cache.kind,))).layers[0][0]
            packed = residual.pack(orig, recomp, cache.kind)
            np.testing.assert_array_equal(residual.unpack(packed, recomp), orig)


@FEW
@given(kv_caches(kinds=("f32", "f16")))
def test_kv_hash_is_the_same_for_numpy_arrays_and_torch_tensors(cache):
    torch = pytest.importorskip("torch")
    floats = np.float32 if cache.kind == "f32" else np.float16
    arrays = [(k.view(floats), v.view(floats)) for k, v in cache.layers]
    tensors = [(torch.from_numpy(k.copy()), torch.from_numpy(v.copy())) for k, v in arrays]
    assert hashing.layer_hashes(arrays) == hashing.layer_hashes(tensors)


@FEW
@given(kv_caches(as_torch=True))
def test_torch_kv_has_the_transformers_layout(cache):
    torch = pytest.importorskip("torch")
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[cache.kind]
    for keys, values in cache.layers:
        assert keys.dtype == values.dtype == dtype
        assert keys.shape == values.shape == cache.shape and len(cache.shape) == 4
        assert torch.isfinite(keys.float()).all()


def test_strategies_without_hypothesis_raise_missing_extra():
    code = (
        "import sys; sys.modules['hypothesis'] = None\n"
        "import seqkv.testing as t\n"
        "assert callable(t.assert_roundtrip)\n"
        "try:\n"
        "    t.token_sequences\n"
        "except __import__('seqkv').MissingExtraError as exc:\n"
        "    assert 'seqkv[testing]' in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('no MissingExtraError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
