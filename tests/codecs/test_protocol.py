"""The Codec protocol is exactly what the store calls: a codec written only against it (here a
trivial one, registered under its own name) works in a SessionStore; the built-in codecs take
the protocol's keywords and refuse unknown options."""

from __future__ import annotations

import inspect
import struct
from typing import Any

import numpy as np
import pytest

from seqkv import codecs
from seqkv.codecs.base import Codec, CodingStats, ProgressFn, as_tokens
from seqkv.errors import CorruptStreamError, InvalidInputError
from seqkv.store import SessionStore


class LittleEndianCodec:
    """Token ids as uint32 little-endian after a count: a codec from outside seqkv."""

    name = "test-u32le"

    def __init__(self, vocab_size: int = 512):
        self.vocab_size = vocab_size
        self.encoded = 0
        self.decoded = 0

    def encode_with_stats(
        self, tokens: Any, *, context: Any = None, progress: ProgressFn | None = None
    ) -> tuple[bytes, CodingStats]:
        toks = as_tokens(tokens, self.vocab_size)
        data = struct.pack("<I", toks.size) + toks.astype("<u4").tobytes()
        self.encoded += 1
        return data, CodingStats(codec=self.name, tokens=int(toks.size), payload_bits=32 * toks.size, container_bits=8 * len(data))

    def decode(self, data: bytes, *, context: Any = None, progress: ProgressFn | None = None) -> np.ndarray:
        (n,) = struct.unpack_from("<I", data)
        if len(data) != 4 + 4 * n:
            raise CorruptStreamError("test-u32le stream has the wrong length")
        self.decoded += 1
        return np.frombuffer(data, dtype="<u4", offset=4).astype(np.uint32)


@pytest.fixture
def registered():
    codecs.register(LittleEndianCodec.name, LittleEndianCodec)
    yield
    codecs._REGISTRY.pop(LittleEndianCodec.name, None)


def test_a_third_party_codec_works_in_the_store(tiny_llama, tmp_path, registered, rng):
    codec = LittleEndianCodec()
    assert isinstance(codec, Codec)
    system = rng.integers(0, 512, 16)
    sessions = {"a": np.concatenate([system, rng.integers(0, 512, 7)]), "b": np.concatenate([system, [3, 4, 5]])}
    path = str(tmp_path / "s.sqlite")
    store = SessionStore(tiny_llama, codec=codec, record_hashes=False, backend=path)
    for sid, toks in sessions.items():
        store.put(sid, toks)
    assert codec.encoded == 2
    store.close()
    # reopened over the same file with a fresh instance: every read decodes through the protocol
    again = SessionStore(tiny_llama, codec=LittleEndianCodec(), record_hashes=False, backend=path)
    for sid, toks in sessions.items():
        assert np.array_equal(again.tokens(sid), toks)
    assert isinstance(again.codec, LittleEndianCodec) and again.codec.decoded >= 1
    again.close()


@pytest.mark.parametrize("name", ["raw", "plt", "lm", "lm-robust"])
def test_builtin_codecs_take_exactly_the_protocol_keywords(name):
    cls = type(codecs.get(name, vocab_size=300)) if name in ("raw", "plt") else codecs._factory(name)
    for method, extra in (("encode_with_stats", {"progress"}), ("decode", {"progress"})):
        params = inspect.signature(getattr(cls, method)).parameters
        assert {"context"} | extra <= set(params), (name, method)
        assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), (name, method)


@pytest.mark.parametrize("name", ["raw", "plt"])
def test_unknown_options_are_errors(name):
    c = codecs.get(name, vocab_size=300)
    with pytest.raises(InvalidInputError, match="bogus"):
        codecs.get(name, vocab_size=300, bogus=1)
    with pytest.raises(TypeError):
        c.encode_with_stats([1, 2], contxt=[3])  # type: ignore[call-arg]
    data, stats = c.encode_with_stats([1, 2, 3], context=[4], progress=lambda n: None)
    assert stats.tokens == 3 and c.decode(data, context=[4]).tolist() == [1, 2, 3]


def test_unknown_lm_options_are_errors():
    with pytest.raises(InvalidInputError, match="bogus"):
        codecs.get("lm-robust", epsilon=1e-3, bogus=1)
