"""Bounded decode work: a crafted stream cannot make any codec allocate or compute more than
its size (and the decoder's ``max_tokens``) allows. The model codecs count their forwards."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from seqkv import codecs
from seqkv.codecs.base import DEFAULT_MAX_TOKENS
from seqkv.codecs.lm import LMCodec, max_block_tokens
from seqkv.codecs.robust import RobustLMCodec
from seqkv.codecs.sources import CallableSource
from seqkv.coding import container
from seqkv.errors import CorruptStreamError, InvalidInputError

VOCAB = 300
U32_MAX = (1 << 32) - 1


class CountingLogits:
    """A logits function that counts its calls (one per model forward of a CallableSource)."""

    def __init__(self, vocab: int = VOCAB, favourite: int | None = None):
        self.vocab = vocab
        self.favourite = favourite
        self.calls = 0

    def __call__(self, seq: list[int]) -> np.ndarray:
        self.calls += 1
        row = np.zeros(self.vocab, dtype=np.float32)
        if self.favourite is None:
            row[(sum(seq) * 7 + len(seq)) % self.vocab] = 3.0
        else:
            row[self.favourite] = 40.0  # near-certain: costs almost nothing to code
        return row


def _model_codec(name: str, fn: CountingLogits, **options: object) -> LMCodec:
    cls = RobustLMCodec if name == "lm-robust" else LMCodec
    return cls(source=CallableSource(fn, fn.vocab, b"\x07" * 32), start_token=0, **options)


def _recrafted(data: bytes, blocks: list[container.Block]) -> bytes:
    """``data``'s header (params, fingerprint, profile kept) over other blocks."""
    h = container.unpack(data).header
    return container.pack(h.replace(token_count=sum(b.n_tokens for b in blocks)), blocks)


def _legit(name: str) -> tuple[codecs.Codec, bytes]:
    if name in ("lm", "lm-robust"):
        codec = _model_codec(name, CountingLogits())
    else:
        codec = codecs.get(name, vocab_size=VOCAB)
    data = codec.encode_with_stats(np.arange(12) % VOCAB)[0]
    if name in ("lm", "lm-robust"):
        codec.source.fn.calls = 0  # count the decoder's forwards only
    return codec, data


ALL = ["raw", "plt", "lm", "lm-robust"]


@pytest.mark.parametrize("name", ALL)
def test_a_claim_of_2_to_the_40_tokens_is_refused_before_allocating(name):
    codec, data = _legit(name)
    blocks = [container.Block(U32_MAX, b"", 0)] * 256 + [container.Block(256, b"", 0)]
    crafted = _recrafted(data, blocks)
    assert container.unpack(crafted).header.token_count == 1 << 40
    with pytest.raises(InvalidInputError, match="max_tokens"):
        codec.decode(crafted)
    if name in ("lm", "lm-robust"):
        assert codec.source.fn.calls == 0


@pytest.mark.parametrize("name", ALL)
def test_an_empty_payload_claiming_many_tokens_is_corrupt(name):
    codec, data = _legit(name)
    crafted = _recrafted(data, [container.Block(1_000_000, b"", 0)])
    with pytest.raises(CorruptStreamError):
        codec.decode(crafted)
    if name in ("lm", "lm-robust"):
        assert codec.source.fn.calls == 0


@pytest.mark.parametrize("name", ["lm", "lm-robust"])
def test_model_forwards_are_bounded_by_the_payload(name):
    fn = CountingLogits()
    codec = _model_codec(name, fn)
    data = codec.encode(np.arange(12))
    fn.calls = 0
    # the case: an empty payload claiming 961 tokens ran one forward per token
    with pytest.raises(CorruptStreamError, match="payload"):
        codec.decode(_recrafted(data, [container.Block(961, b"", 0)]))
    assert fn.calls == 0
    # a garbage payload claiming as many tokens as the rule allows: at most that many forwards
    payload = bytes(range(1, 9))
    allowed = max_block_tokens(len(payload))
    with pytest.raises(CorruptStreamError):
        codec.decode(_recrafted(data, [container.Block(allowed + 1, payload, 0)]))
    assert fn.calls == 0
    with pytest.raises(Exception):
        codec.decode(_recrafted(data, [container.Block(allowed, payload, 0)]))
    assert fn.calls <= allowed


@pytest.mark.parametrize("name", ["lm", "lm-robust"])
def test_the_encoder_cuts_blocks_that_cost_almost_nothing(name):
    """A near-certain token costs far less than the rule's 1/16 bit: the encoder must cut the
    block so that every block keeps to max_block_tokens, and the stream still decodes."""
    fn = CountingLogits(favourite=5)
    codec = _model_codec(name, fn, block_tokens=4096)
    toks = np.full(3000, 5)
    data = codec.encode(toks)
    blocks = container.unpack(data).blocks
    assert len(blocks) > 1
    assert all(b.n_tokens <= max_block_tokens(len(b.payload)) for b in blocks)
    assert codec.decode(data).tolist() == toks.tolist()


@pytest.mark.parametrize("name", ["lm", "lm-robust"])
def test_cut_blocks_decode_like_uncut_ones(name):
    """Recoding a block's tokens from their plans gives the bytes coding them afresh would."""
    fn = CountingLogits()
    toks = (np.arange(200) * 37) % VOCAB
    whole = _model_codec(name, fn, block_tokens=100).encode(toks)
    assert [b.n_tokens for b in container.unpack(whole).blocks] == [100, 100]
    assert _model_codec(name, fn).decode(whole).tolist() == toks.tolist()


@pytest.mark.parametrize("name", ALL)
def test_max_tokens_is_a_codec_option(name):
    codec, data = _legit(name)
    small = (
        _model_codec(name, CountingLogits(), max_tokens=11)
        if name in ("lm", "lm-robust")
        else codecs.get(name, vocab_size=VOCAB, max_tokens=11)
    )
    with pytest.raises(InvalidInputError, match="max_tokens"):
        small.decode(data)
    assert codec.max_tokens == DEFAULT_MAX_TOKENS
    with pytest.raises(InvalidInputError):
        codecs.get("raw", vocab_size=VOCAB, max_tokens=-1)
