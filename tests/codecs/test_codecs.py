"""Token codecs: round trips, errors, the lm stream's checks, and lm-robust's ε guarantee.

The lm codecs run on the small random-weight Llama of conftest (vocab 512) or on
synthetic logits sources, so these tests stay fast; SmolLM2 is in test_lm_model.py.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqkv import codecs
from seqkv.codecs.base import as_tokens, describe_schedule
from seqkv.codecs.lm import LMCodec, decode_params
from seqkv.codecs.sources import CallableSource
from seqkv.codecs.raw import RawCodec, bits_per_token
from seqkv.coding.coder import pack_bits, unpack_bits
from seqkv.codecs.robust import RobustBins, RobustLMCodec, default_unit
from seqkv.errors import (
    CorruptStreamError,
    InvalidInputError,
    ModelMismatchError,
    NumericsMismatchError,
)

SLOW = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _other_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def synthetic_logits(vocab: int, scale: float = 4.0):
    """Deterministic logits that depend on the whole sequence so far (a hash-seeded Gaussian row)."""

    def fn(seq: list[int]) -> np.ndarray:
        h = hashlib.blake2b(np.asarray(seq, dtype=np.uint32).tobytes(), digest_size=8).digest()
        g = np.random.default_rng(int.from_bytes(h, "little"))
        row = g.standard_normal(vocab) * scale
        row[g.integers(0, vocab, 3)] += 8.0  # a few confident favourites
        return row.astype(np.float32)

    return fn


def perturbed(fn, eps: float, seed: int):
    """``fn`` plus independent uniform noise in [-eps, eps] on every logit."""

    rng = np.random.default_rng(seed)

    def g(seq: list[int]) -> np.ndarray:
        row = fn(seq).astype(np.float64)
        noisy = row + rng.uniform(-eps, eps, row.size)
        out = noisy.astype(np.float32)
        # float32 rounding may push a value just past eps: clamp into the bound
        return np.clip(out, (row - eps).astype(np.float32), (row + eps).astype(np.float32)).astype(np.float32)

    return g


# ---- shared ---------------------------------------------------------------------------


def test_registry_names_and_unknown():
    assert {"raw", "lm", "lm-robust"} <= set(codecs.available())
    with pytest.raises(InvalidInputError):
        codecs.get("nope")
    assert isinstance(codecs.get("raw", vocab_size=10), codecs.Codec)


def test_plt_is_resolved_lazily_by_name():
    if "plt" not in codecs.available():
        pytest.skip("plt codec not built")
    c = codecs.get("plt", vocab_size=300)
    assert type(c).__module__ == "seqkv.codecs.plt" and type(c).__name__ == "PLTCodec"
    toks = np.arange(50) % 300
    assert np.array_equal(c.decode(c.encode(toks)), toks)


@pytest.mark.parametrize(
    "bad",
    [[-1], [1.5], "abc", [[1, 2], [3, 4]], [True, False]],
)
def test_as_tokens_rejects(bad):
    with pytest.raises(InvalidInputError):
        as_tokens(bad, 10)


def test_as_tokens_accepts_lists_arrays_tensors():
    torch = pytest.importorskip("torch")
    for t in ([1, 2, 3], np.array([1, 2, 3], dtype=np.int16), torch.tensor([[1, 2, 3]])):
        out = as_tokens(t, 10)
        assert out.dtype == np.uint32 and out.tolist() == [1, 2, 3]
    with pytest.raises(InvalidInputError):
        as_tokens([10], 10)


def test_describe_schedule():
    assert describe_schedule((12, 1, 1, 1)) == "12, 1×3"
    assert describe_schedule(()) == "(none)"


# ---- raw ------------------------------------------------------------------------------


@given(
    vocab=st.integers(1, 1 << 20),
    data=st.data(),
)
@settings(max_examples=60, deadline=None)
def test_raw_round_trip(vocab, data):
    toks = data.draw(st.lists(st.integers(0, vocab - 1), max_size=300))
    block = data.draw(st.integers(1, 64))
    c = RawCodec(vocab, block_tokens=block)
    stream, stats = c.encode_with_stats(toks)
    out = c.decode(stream)
    assert out.dtype == np.uint32 and out.tolist() == toks
    assert stats.payload_bits <= len(toks) * bits_per_token(vocab) + 8 * ((len(toks) + block - 1) // block)
    assert codecs.stream_info(stream).tokens == len(toks)


def test_raw_bits_per_token():
    assert bits_per_token(49152) == 16
    assert bits_per_token(512) == 9
    assert bits_per_token(513) == 10
    assert bits_per_token(1) == 1
    t = np.array([0, 511, 300, 7], dtype=np.uint32)
    assert np.array_equal(unpack_bits(pack_bits(t, 9), 4, 9), t)


def test_raw_errors():
    c = RawCodec(100)
    with pytest.raises(InvalidInputError):
        c.encode([100])
    data = c.encode(list(range(100)))
    with pytest.raises(CorruptStreamError):
        c.decode(data[:-3])
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x10
    with pytest.raises(CorruptStreamError):
        c.decode(bytes(flipped))
    with pytest.raises(InvalidInputError):
        RawCodec(200).decode(data)


# ---- lm on the tiny Llama ---------------------------------------------------------------


@given(data=st.data())
@SLOW
def test_lm_round_trip_tiny(tiny_llama, data):
    toks = data.draw(st.lists(st.integers(0, 511), max_size=24))
    ctx = data.draw(st.lists(st.integers(0, 511), max_size=6))
    start = data.draw(st.sampled_from([None, 0, 1]))
    block = data.draw(st.integers(1, 16))
    c = codecs.get("lm", model=tiny_llama, start_token=start, block_tokens=block)
    stream = c.encode(toks, context=ctx)
    assert c.decode(stream, context=ctx).tolist() == toks


def test_lm_stats_and_header(tiny_llama):
    rng = np.random.default_rng(0)
    toks = rng.integers(0, 512, 40)
    c = LMCodec(tiny_llama, start_token=5, verify=True)
    stream, stats = c.encode_with_stats(toks, context=[1, 2, 3])
    assert stats.tokens == 40 and stats.payload_bits < stats.container_bits == 8 * len(stream)
    # random tokens under a random model: the table cost is the model's cost plus a sliver
    assert abs(stats.table_bits - stats.cross_entropy_bits) < 0.01 * stats.tokens
    assert "verify_seconds" in stats.extra
    info = codecs.stream_info(stream)
    assert info.codec == "lm" and info.vocab_size == 512 and info.precision == 24
    # the engine (default for a Llama): [start] + context in one pass, the 39 fed tokens in another
    assert info.schedule == (4, 39)
    info = codecs.stream_info(LMCodec(tiny_llama, start_token=5, engine=False).encode(toks, context=[1, 2, 3]))
    assert info.schedule == (4,) + (1,) * 39  # transformers: prefill [start] + context, then single steps
    assert len(info.model_fingerprint) == 32
    from seqkv.coding import container

    fields, rest = decode_params(container.unpack(stream).header.params)
    assert fields["start_token"] == 5 and fields["context_len"] == 3 and rest == b""


def test_lm_wrong_model(tiny_llama):
    toks = list(range(0, 500, 17))
    stream = LMCodec(tiny_llama).encode(toks)
    other = LMCodec(_other_llama())
    with pytest.raises(ModelMismatchError) as info:
        other.decode(stream)
    assert other.fingerprint.hex() in str(info.value)
    assert LMCodec(tiny_llama).fingerprint.hex() in str(info.value)


def test_lm_wrong_context_and_codec(tiny_llama):
    c = LMCodec(tiny_llama)
    stream = c.encode([1, 2, 3], context=[4, 5])
    with pytest.raises(InvalidInputError, match="context of 2 tokens"):
        c.decode(stream, context=[4, 6])
    with pytest.raises(InvalidInputError):
        RawCodec(512).decode(stream)


def test_lm_corrupt_streams(tiny_llama):
    c = LMCodec(tiny_llama)
    toks = list(range(3, 400, 13))
    stream = c.encode(toks)
    for cut in (1, 5, len(stream) // 2, len(stream) - 1):
        with pytest.raises(CorruptStreamError):
            c.decode(stream[:cut])
    for pos in range(0, len(stream), max(1, len(stream) // 25)):
        flipped = bytearray(stream)
        flipped[pos] ^= 0x04
        with pytest.raises((CorruptStreamError, ModelMismatchError)):
            c.decode(bytes(flipped))


def test_lm_invalid_tokens(tiny_llama):
    c = LMCodec(tiny_llama)
    with pytest.raises(InvalidInputError):
        c.encode([1, 512])
    with pytest.raises(InvalidInputError):
        c.encode([1, 2], context=[600])
    with pytest.raises(InvalidInputError):
        LMCodec(tiny_llama, start_token=9999)
    with pytest.raises(InvalidInputError):
        LMCodec(tiny_llama, bogus=1)
    with pytest.raises(InvalidInputError):
        LMCodec()


def test_lm_numerics_mismatch_is_detected():
    fn = synthetic_logits(300)
    fp = b"\x01" * 32
    enc = LMCodec(source=CallableSource(fn, 300, fp), block_tokens=8)
    rng = np.random.default_rng(3)
    toks = rng.integers(0, 300, 40)
    stream = enc.encode(toks)
    # same "model", logits off by up to 1e-2: the tables differ, the blocks fail their checksums
    dec = LMCodec(source=CallableSource(perturbed(fn, 1e-2, 7), 300, fp), block_tokens=8)
    with pytest.raises(NumericsMismatchError, match="token checksum"):
        dec.decode(stream)
    assert np.array_equal(enc.decode(stream), toks)


def test_lm_empty_and_single(tiny_llama):
    c = LMCodec(tiny_llama, start_token=None)
    for toks in ([], [7]):
        assert c.decode(c.encode(toks)).tolist() == toks


def test_lm_draft(tiny_llama):
    draft = _other_llama()
    c = LMCodec(tiny_llama, draft=draft)
    toks = list(range(10, 200, 9))
    stream = c.encode(toks)
    assert codecs.stream_info(stream).model_fingerprint == LMCodec(draft).fingerprint
    assert c.decode(stream).tolist() == toks
    with pytest.raises(ModelMismatchError):
        LMCodec(tiny_llama).decode(stream)  # coded under the draft, not the target
    with pytest.raises(ModelMismatchError):
        LMCodec(draft, draft=tiny_llama).decode(stream)


# ---- lm-robust --------------------------------------------------------------------------


def test_robust_bins_are_deterministic_and_checked():
    a = RobustBins(1e-4, default_unit(1e-4))
    b = RobustBins(1e-4, default_unit(1e-4))
    assert np.array_equal(a.edges, b.edges) and a.f1 == b.f1
    assert np.array_equal(a.edges, -a.edges[::-1])
    assert np.diff(a.edges).min() > 4 * a.eta
    assert all(1 <= f < (1 << 24) for f in a.f1)
    assert a.f1 == sorted(a.f1)  # monotone in the log-odds
    with pytest.raises(InvalidInputError):
        RobustBins(0.1, 1 / 64)
    assert RobustBins.unpack(a.pack(), 24).edges.tolist() == a.edges.tolist()


@given(seed=st.integers(0, 2**32 - 1), eps=st.sampled_from([1e-4, 1e-3, 1e-2]), vocab=st.sampled_from([2, 37, 300, 1024]))
@settings(max_examples=25, deadline=None)
def test_robust_decodes_from_eps_perturbed_logits(seed, eps, vocab):
    """The encoder sees logits perturbed by up to ε; the decoder sees the clean ones."""
    fn = synthetic_logits(vocab)
    fp = b"\x02" * 32
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, vocab, 30)
    enc = RobustLMCodec(source=CallableSource(perturbed(fn, eps, seed), vocab, fp), epsilon=eps, block_tokens=7)
    dec = RobustLMCodec(source=CallableSource(fn, vocab, fp), epsilon=eps, block_tokens=7)
    stream = enc.encode(toks, context=[1 % vocab])
    assert np.array_equal(dec.decode(stream, context=[1 % vocab]), toks)
    # and the other way round (the decoder is the perturbed one)
    stream2 = dec.encode(toks)
    assert np.array_equal(
        RobustLMCodec(source=CallableSource(perturbed(fn, eps, seed + 1), vocab, fp), epsilon=eps).decode(stream2),
        toks,
    )


def test_robust_adversarial_ties_and_edges():
    """Logits placed exactly on and next to bin edges, ties, -inf: perturbed ends still agree."""
    vocab = 64
    eps = 1e-3
    bins = RobustBins(eps, default_unit(eps))

    def fn(seq):
        g = np.random.default_rng(len(seq))
        row = np.zeros(vocab, dtype=np.float64)
        # log-odds of top-level decisions land on edges: put all mass in two tokens
        e = bins.edges[g.integers(0, bins.edges.size)]
        row[:] = -30.0
        row[g.integers(0, 32)] = 0.0
        row[32 + g.integers(0, 32)] = e + g.uniform(-2 * eps, 2 * eps)
        row[g.integers(0, vocab, 4)] = -np.inf
        row[g.integers(0, vocab)] = row.max()  # a tie
        return row.astype(np.float32)

    fp = b"\x03" * 32
    toks = np.random.default_rng(1).integers(0, vocab, 60)
    for seed in range(5):
        enc = RobustLMCodec(source=CallableSource(perturbed(fn, eps, seed), vocab, fp), epsilon=eps)
        stream = enc.encode(toks)
        dec = RobustLMCodec(source=CallableSource(fn, vocab, fp), epsilon=eps)
        assert np.array_equal(dec.decode(stream), toks)


def test_plain_lm_fails_where_robust_succeeds():
    vocab, eps = 300, 1e-3
    fn = synthetic_logits(vocab)
    fp = b"\x04" * 32
    toks = np.random.default_rng(9).integers(0, vocab, 50)
    stream = LMCodec(source=CallableSource(perturbed(fn, eps, 0), vocab, fp)).encode(toks)
    with pytest.raises(NumericsMismatchError):
        LMCodec(source=CallableSource(fn, vocab, fp)).decode(stream)
    stream = RobustLMCodec(source=CallableSource(perturbed(fn, eps, 0), vocab, fp), epsilon=eps).encode(toks)
    assert np.array_equal(RobustLMCodec(source=CallableSource(fn, vocab, fp), epsilon=eps).decode(stream), toks)


def test_robust_beyond_eps_is_detected_not_garbage():
    vocab = 300
    fn = synthetic_logits(vocab, scale=0.3)  # flat rows: many decisions near 0
    fp = b"\x05" * 32
    toks = np.random.default_rng(2).integers(0, vocab, 80)
    stream = RobustLMCodec(source=CallableSource(fn, vocab, fp), epsilon=1e-6, block_tokens=10).encode(toks)
    with pytest.raises(NumericsMismatchError):
        RobustLMCodec(source=CallableSource(perturbed(fn, 0.3, 1), vocab, fp), epsilon=1e-6).decode(stream)


def test_robust_tiny_round_trip_and_params(tiny_llama):
    c = codecs.get("lm-robust", model=tiny_llama, epsilon=5e-4, encode_chunk=4)
    toks = list(range(5, 505, 25))
    stream, stats = c.encode_with_stats(toks)
    assert stats.codec == "lm-robust"
    assert c.decode(stream).tolist() == toks
    # the decoder takes ε and the grid from the stream, not from its own options
    assert codecs.get("lm-robust", model=tiny_llama, epsilon=1e-5).decode(stream).tolist() == toks
    assert codecs.stream_info(stream).schedule == (1,) + (4,) * 4 + (3,)
    with pytest.raises(InvalidInputError):
        codecs.get("lm", model=tiny_llama).decode(stream)
