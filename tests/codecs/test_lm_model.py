"""The lm codecs and the store on the real SmolLM2-135M (marked `model`; ≤ 128 tokens each)."""

from __future__ import annotations

import numpy as np
import pytest

from seqkv import codecs
from seqkv.integrations import transformers as hf
from seqkv.codecs.lm import LMCodec
from seqkv.codecs.sources import TransformersSource
from seqkv.errors import ModelMismatchError, NumericsMismatchError
from seqkv.store import SessionStore

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def text_ids(smollm2):
    _, tok = smollm2
    with open("/usr/share/common-licenses/BSD", encoding="utf-8") as f:
        return np.array(tok(f.read())["input_ids"][:96])


def test_lm_real_text_round_trip(smollm2, text_ids):
    model, tok = smollm2
    c = codecs.get("lm", model=model, tokenizer=tok)
    assert c.start_token == 0  # <|endoftext|>
    stream, stats = c.encode_with_stats(text_ids)
    assert np.array_equal(c.decode(stream), text_ids)
    ce = stats.cross_entropy_per_token
    assert 1.0 < ce < 8.0
    # quantization costs ~0.004 bits/token; the coder's flush ~32-64 bits per block
    assert stats.table_bits / stats.tokens <= ce + 0.02
    assert stats.payload_bits <= stats.table_bits + 64
    assert hf.kv_bits_per_token(model) == 184_320


def test_wrong_model_for_real_stream(smollm2, tiny_llama, text_ids):
    model, _ = smollm2
    stream = LMCodec(model).encode(text_ids[:20])
    with pytest.raises(ModelMismatchError):
        LMCodec(tiny_llama).decode(stream)


def test_schedule_mismatch_detected_and_robust_tolerates_it(smollm2, text_ids):
    """Encoding from 32-token prefill chunks gives logits ~1e-4 off the decoder's single steps."""
    model, _ = smollm2
    toks = text_ids[:64]
    plain = LMCodec(model, source=TransformersSource(model, encode_chunk=32), block_tokens=16)
    stream = plain.encode(toks)
    try:
        out = LMCodec(model, block_tokens=16, engine=False).decode(stream)
    except NumericsMismatchError:
        pass
    else:  # the quantized tables happened to agree everywhere: then decoding is exact
        assert np.array_equal(out, toks)
    robust = codecs.get("lm-robust", model=model, epsilon=1e-3, encode_chunk=32)
    stream, stats = robust.encode_with_stats(toks)
    assert np.array_equal(codecs.get("lm-robust", model=model).decode(stream), toks)
    assert stats.cross_entropy_per_token is not None


def test_store_exact_and_generation(smollm2, text_ids):
    model, tok = smollm2
    store = SessionStore(model, tokenizer=tok, engine=False)  # the transformers path: exact = compute_cache
    a = text_ids[:48]
    store.put("a", a, schedule=[32] + [1] * 16)
    got, cache = store.get("a", mode="exact")
    assert np.array_equal(got, a)
    ref, _ = hf.compute_cache(model, a, [32] + [1] * 16)
    assert hf.caches_equal(cache, ref)
    _, faithful = store.get("a")
    assert hf.max_abs_diff(faithful, ref) < 1e-3
    assert hf.greedy_continuation(model, a, faithful, 8) == hf.greedy_continuation(model, a, None, 8)


def test_default_engine_batch_on_real_text(smollm2, text_ids):
    """SmolLM2 codes under the engine by default; three streams of different lengths decode
    together exactly as alone."""
    from seqkv.codecs.sources import EngineLogitsSource

    model, tok = smollm2
    c = codecs.get("lm", model=model, tokenizer=tok)
    assert isinstance(c.source, EngineLogitsSource)
    parts = [text_ids[:40], text_ids[40:52], text_ids[52:96]]
    streams = c.encode_batch(parts, contexts=[[], text_ids[:40], text_ids[:52]])
    assert streams[0] == c.encode(parts[0])
    back = c.decode_batch(streams, contexts=[[], text_ids[:40], text_ids[:52]])
    assert all(np.array_equal(b, p) for b, p in zip(back, parts))
