"""Multi-stream lm coding: LMCodec.encode_batch / decode_batch through the engine's batched
passes give every stream the bytes and tokens it gets alone (tiny random Llama)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from seqkv import codecs  # noqa: E402
from seqkv.codecs.lm import LMCodec
from seqkv.codecs.sources import TransformersSource  # noqa: E402
from seqkv.codecs.sources import EngineLogitsSource  # noqa: E402
from seqkv.errors import CorruptStreamError, InvalidInputError, ModelMismatchError, NumericsMismatchError  # noqa: E402

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

stream_st = st.tuples(
    st.lists(st.integers(0, 511), max_size=60),  # tokens (empty streams included)
    st.lists(st.integers(0, 511), max_size=6),  # context
)


@pytest.fixture(scope="module")
def codec(tiny_llama):
    c = LMCodec(tiny_llama, block_tokens=13)  # blocks end inside the streams
    assert isinstance(c.source, EngineLogitsSource) and c.source.batched
    return c


@SETTINGS
@given(streams=st.lists(stream_st, min_size=1, max_size=6), chunk=st.integers(1, 40))
def test_batch_equals_alone(codec, streams, chunk):
    codec.source.chunk = chunk  # how the encoder's passes mix streams must not matter
    toks = [np.array(t, dtype=np.int64) for t, _ in streams]
    ctxs = [np.array(c, dtype=np.int64) for _, c in streams]
    alone = [codec.encode(t, context=c) for t, c in zip(toks, ctxs)]
    together = codec.encode_batch(toks, contexts=ctxs)
    assert together == alone
    back = codec.decode_batch(together, contexts=ctxs)
    assert all(np.array_equal(b, t) for b, t in zip(back, toks))
    assert all(np.array_equal(codec.decode(d, context=c), t) for d, c, t in zip(alone, ctxs, toks))


def test_batch_progress_stats_and_verify(tiny_llama):
    rng = np.random.default_rng(3)
    toks = [rng.integers(0, 512, n) for n in (5, 0, 33, 12)]
    c = LMCodec(tiny_llama, verify=True)
    ticks = []
    out = c.encode_batch_with_stats(toks, progress=ticks.append)
    assert sum(ticks) == sum(t.size for t in toks)
    for (data, stats), t in zip(out, toks):
        assert stats.tokens == t.size and stats.container_bits == 8 * len(data)
        assert "verify_seconds" in stats.extra
    ticks.clear()
    back = c.decode_batch([d for d, _ in out], progress=ticks.append)
    assert sum(ticks) == sum(t.size for t in toks)
    assert all(np.array_equal(b, t) for b, t in zip(back, toks))
    assert c.decode_batch([]) == [] and c.encode_batch([]) == []


def test_robust_batch(tiny_llama):
    rng = np.random.default_rng(4)
    toks = [rng.integers(0, 512, n) for n in (20, 7, 41)]
    c = codecs.get("lm-robust", model=tiny_llama, engine="auto", block_tokens=16)
    assert isinstance(c.source, EngineLogitsSource)
    streams = c.encode_batch(toks)
    assert streams == [c.encode(t) for t in toks]
    assert all(np.array_equal(b, t) for b, t in zip(c.decode_batch(streams), toks))


def test_unbatched_source_falls_back(tiny_llama):
    rng = np.random.default_rng(5)
    toks = [rng.integers(0, 512, n) for n in (9, 4)]
    c = LMCodec(tiny_llama, engine=False)
    assert isinstance(c.source, TransformersSource) and not c.source.batched
    streams = c.encode_batch(toks)
    assert all(np.array_equal(b, t) for b, t in zip(c.decode_batch(streams), toks))


def test_batch_errors_name_the_stream(codec, tiny_llama):
    rng = np.random.default_rng(6)
    toks = [rng.integers(0, 512, n) for n in (10, 10, 10)]
    streams = codec.encode_batch(toks)
    bad = bytearray(streams[1])
    bad[len(bad) // 2] ^= 0x10
    with pytest.raises(CorruptStreamError, match="stream 1"):
        codec.decode_batch([streams[0], bytes(bad), streams[2]])
    with pytest.raises(InvalidInputError, match="contexts"):
        codec.decode_batch(streams, contexts=[[1]])
    with pytest.raises(InvalidInputError, match="stream 2"):  # coded without this context
        codec.decode_batch(streams, contexts=[[], [], [7]])
    with pytest.raises(ModelMismatchError, match="stream 0"):  # transformers fingerprint
        codec.decode_batch([LMCodec(tiny_llama, engine=False).encode(toks[0])])
    with pytest.raises(InvalidInputError):
        codec.encode_batch([[1, 2], [600]])  # token >= vocab


def test_batch_numerics_mismatch_names_the_stream(tiny_llama, codec):
    """Stream 1 coded under other logits (the f32-weight engine, fingerprint forged): the
    batch decoder's block checksum catches it and names the stream."""
    from seqkv.engine import Engine

    eng32 = Engine.for_model(tiny_llama, "f32")
    other = LMCodec(tiny_llama, source=EngineLogitsSource(eng32), block_tokens=13)
    other._fingerprint = codec.fingerprint  # pretend it is the same model
    rng = np.random.default_rng(7)
    toks = rng.integers(0, 512, 40)
    streams = [codec.encode(toks), other.encode(toks)]
    assert streams[0] != streams[1]
    with pytest.raises(NumericsMismatchError, match="stream 1"):
        codec.decode_batch(streams)


def test_engine_option(tiny_llama):
    assert isinstance(LMCodec(tiny_llama).source, EngineLogitsSource)
    assert isinstance(LMCodec(tiny_llama, engine=True).source, EngineLogitsSource)
    assert LMCodec(tiny_llama).source.eng is LMCodec(tiny_llama).source.eng  # shared per model
    assert isinstance(LMCodec(tiny_llama, engine=False).source, TransformersSource)
    with pytest.raises(InvalidInputError):
        LMCodec(tiny_llama, engine="cuda-magic")


def test_engine_true_refuses_unsupported_model():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=64, bos_token_id=1, eos_token_id=1)).eval()
    assert isinstance(LMCodec(gpt2).source, TransformersSource)  # auto: falls back
    with pytest.raises(InvalidInputError, match="model type"):
        LMCodec(gpt2, engine=True)
