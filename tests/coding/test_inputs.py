"""Odd inputs to the token, coder and container APIs: each either works or raises a seqkv
error (never OverflowError, a plain ValueError, TypeError or UnicodeEncodeError), and token
inputs follow one convention: any integers in, uint32 out."""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqkv import codecs
from seqkv.codecs.base import as_tokens
from seqkv.coding import coder, container
from seqkv.errors import InvalidInputError, SeqkvError

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 80), max_value=1 << 80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.binary(max_size=4),
)
odd = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=3), inner, max_size=2),
        st.builds(lambda xs: {"input_ids": xs}, st.lists(inner, max_size=3)),
    ),
    max_leaves=8,
)
arrays = st.sampled_from(["int8", "uint16", "int64", "uint64", "float32", "bool", "U2"]).flatmap(
    lambda dt: st.lists(st.integers(0, 1 << 40), max_size=4).map(lambda xs: np.array(xs).astype(dt))
)
inputs = st.one_of(odd, arrays)
FUZZ = settings(max_examples=300, deadline=None)


def works_or_seqkv_error(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except SeqkvError:
        return None


@FUZZ
@given(inputs)
def test_as_tokens(x):
    out = works_or_seqkv_error(as_tokens, x, 1000)
    if out is not None:
        assert out.dtype == np.uint32 and out.ndim == 1


@FUZZ
@given(inputs)
def test_codec_encode(x):
    for name in ("raw", "plt"):
        codec = codecs.get(name, vocab_size=1000)
        data = works_or_seqkv_error(codec.encode, x)
        if data is not None:
            assert codec.decode(data).tolist() == as_tokens(x, 1000).tolist()


@FUZZ
@given(inputs, inputs)
def test_coder_functions(x, y):
    table = np.full(4, 1 << 22, dtype=np.uint32)
    works_or_seqkv_error(coder.encode, x, table)
    works_or_seqkv_error(coder.encode, [1, 2], x)
    works_or_seqkv_error(coder.decode, b"\x12", table, x)
    works_or_seqkv_error(coder.encode_adaptive, x, 10)
    works_or_seqkv_error(coder.encode_adaptive, [1], x, y)
    works_or_seqkv_error(coder.quantize_logits, x)
    works_or_seqkv_error(coder.tokens_checksum, x)
    works_or_seqkv_error(coder.crc32c, x)
    works_or_seqkv_error(coder.AdaptiveModel, x)
    works_or_seqkv_error(coder.Encoder, x)
    works_or_seqkv_error(coder.Decoder, x)
    enc = coder.Encoder(16)
    works_or_seqkv_error(enc.push, x, np.full(4, 1 << 14))
    works_or_seqkv_error(enc.push_slice, x, 1, 16)
    model = coder.AdaptiveModel(10)
    for method in (model.update, model.freq, model.cdf, model.find):
        works_or_seqkv_error(method, x)
    works_or_seqkv_error(model.encode, enc, x)


@FUZZ
@given(inputs)
def test_container_functions(x):
    header = container.Header(codec="raw", precision=4, token_count=1, vocab_size=10)
    block = container.Block(1, b"\x10", coder.tokens_checksum([1]))
    works_or_seqkv_error(container.unpack, x)
    for field in ("codec", "precision", "token_count", "vocab_size", "model_fingerprint", "numerics_profile",
                  "schedule", "params", "quantizer_version"):
        works_or_seqkv_error(lambda f=field: container.pack(header.replace(**{f: x}), [block]))
    for field in ("n_tokens", "payload", "tokens_crc32c"):
        fields = {"n_tokens": 1, "payload": b"\x10", "tokens_crc32c": coder.tokens_checksum([1]), field: x}
        works_or_seqkv_error(lambda f=fields: container.pack(header, [container.Block(**f)]))
    works_or_seqkv_error(container.pack, header, x)


def test_dicts_are_not_tokens():
    with pytest.raises(InvalidInputError, match="keys"):
        as_tokens({"a": 1, "b": 2})
    with pytest.raises(InvalidInputError):
        codecs.get("raw", vocab_size=10).encode({1: 2})


def test_a_tokenizer_result_is_understood():
    class BatchEncoding(dict):  # what transformers' tokenizer(text) returns, a dict subclass
        pass

    assert as_tokens(BatchEncoding(input_ids=[5, 6], attention_mask=[1, 1])).tolist() == [5, 6]
    assert as_tokens({"input_ids": np.array([[5, 6, 7]])}).tolist() == [5, 6, 7]  # return_tensors, batch of one
    with pytest.raises(InvalidInputError, match="2 sequences"):
        as_tokens({"input_ids": [[1, 2], [3, 4]]})


def test_one_token_convention():
    for x in ([1, 2], np.array([1, 2], dtype=np.int8), np.array([1, 2], dtype=np.uint64), [np.int64(1), 2]):
        out = as_tokens(x)
        assert out.dtype == np.uint32 and out.tolist() == [1, 2]
    for x in ([1 << 70], [-(1 << 70)], [[1, 2], [3]], [1.0], [True]):
        with pytest.raises(InvalidInputError):
            as_tokens(x)


def test_adaptive_model_refuses_symbols_outside_it():
    model = coder.AdaptiveModel(10)
    enc = coder.Encoder(16)
    for bad in (10, 11, 1 << 70, -1):
        for method in (model.update, model.freq):
            with pytest.raises(InvalidInputError):
                method(bad)
        with pytest.raises(InvalidInputError):
            model.encode(enc, bad)
    assert model.cdf(10) == model.total  # the end of the table is a valid cdf point
    with pytest.raises(InvalidInputError):
        model.cdf(11)
