"""seqkv.testing's assertions: they pass on the real codecs and store, and catch what they promise
to catch (a codec that loses a token or misreports its stats, a restore that is not exact)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings

from seqkv import codecs
from seqkv.testing import assert_restore_exact, assert_roundtrip, token_sequences

VOCAB = 512  # the tiny_llama fixture's


class DropsLastToken:
    """A broken codec: decodes one token short."""

    name = "raw"

    def __init__(self) -> None:
        self.inner = codecs.get("raw", vocab_size=VOCAB)
        self.vocab_size = VOCAB

    def encode_with_stats(self, tokens, *, context=None, progress=None):
        return self.inner.encode_with_stats(tokens, context=context, progress=progress)

    def decode(self, data, *, context=None, progress=None):
        return self.inner.decode(data, context=context, progress=progress)[:-1]


class MiscountsTokens(DropsLastToken):
    """A broken codec: round-trips, but its stats claim one token more."""

    def encode_with_stats(self, tokens, *, context=None, progress=None):
        data, stats = self.inner.encode_with_stats(tokens, context=context, progress=progress)
        return data, dataclasses.replace(stats, tokens=stats.tokens + 1)

    def decode(self, data, *, context=None, progress=None):
        return self.inner.decode(data, context=context, progress=progress)


def test_roundtrip_passes_and_returns_the_stream():
    data, stats = assert_roundtrip(codecs.get("plt", vocab_size=VOCAB), [3, 1, 4, 1, 5, 9, 2, 6] * 4)
    assert stats.tokens == 32 and stats.container_bits == 8 * len(data)


@pytest.mark.parametrize("codec, message", [(DropsLastToken(), "tokens, expected"), (MiscountsTokens(), "stats.tokens")])
def test_roundtrip_catches_a_broken_codec(codec, message):
    with pytest.raises(AssertionError, match=message):
        assert_roundtrip(codec, [1, 2, 3, 4])


def test_lm_codec_round_trips_drawn_tokens_with_context(tiny_llama):
    codec = codecs.get("lm", model=tiny_llama)

    @settings(max_examples=4, deadline=None)
    @given(token_sequences(VOCAB, max_size=24), token_sequences(VOCAB, max_size=8))
    def check(tokens, context):
        assert_roundtrip(codec, tokens, context=context if context.size else None)

    check()


def test_restore_exact_on_a_real_store(tiny_llama, tmp_path):
    from seqkv import SessionStore
    from seqkv.integrations.transformers import cache_layers

    store = SessionStore(tiny_llama, codec="raw", backend=str(tmp_path / "s.sqlite"))
    tokens = np.arange(1, 40, dtype=np.uint32)
    store.put("chat", tokens)
    restored_tokens, cache = assert_restore_exact(store, "chat")
    np.testing.assert_array_equal(restored_tokens, tokens)
    assert store.tier_of("chat") == "cold"

    other = [(k.clone(), v.clone()) for k, v in cache_layers(store.get("chat", mode="exact")[1])]
    assert_restore_exact(store, "chat", expected_kv=other)
    other[1][0][0, 0, 5, 0] += 1.0
    with pytest.raises(AssertionError, match=r"differs from expected_kv in layers \[1\]"):
        assert_restore_exact(store, "chat", expected_kv=other)
    store.close()


class UnstableStore:
    """A store whose cold recompute gives other KV than its first restore."""

    def __init__(self, model, tokens):
        from seqkv.integrations.transformers import cache_layers, compute_cache

        self.tokens_, self.tier = np.asarray(tokens, np.uint32), "hot"
        self.cache = compute_cache(model, self.tokens_)[0]
        self.recomputed = [(k.clone(), v.clone()) for k, v in cache_layers(self.cache)]
        self.recomputed[0][1][0, 1, 2, 3] += 1.0

    def tokens(self, session_id):
        return self.tokens_.copy()

    def tier_of(self, session_id):
        return self.tier

    def demote(self, session_id, tier="cold"):
        self.tier = tier
        return tier

    def get(self, session_id, mode="faithful", *, promote=True, progress=None):
        return self.tokens_.copy(), self.cache if self.tier == "hot" else self.recomputed


def test_restore_exact_catches_a_restore_that_changes(tiny_llama):
    with pytest.raises(AssertionError, match=r"differ from a cold recompute in layers \[0\]"):
        assert_restore_exact(UnstableStore(tiny_llama, [5, 6, 7, 8]), "s")
