"""seqkv's calls into transformers use the API of the installed version: no deprecation warning
from our own calls (transformers 5 renamed ``past_key_values`` to ``cache``), and the same
results on the oldest supported transformers (``make test-transformers-oldest``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from seqkv.codecs.lm import LMCodec
from seqkv.integrations import transformers as hf


@pytest.fixture
def no_future_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        yield


def test_compute_cache_and_generate_use_the_current_api(tiny_llama, no_future_warnings):
    tokens = np.arange(1, 25, dtype=np.uint32)
    cache, last = hf.compute_cache(tiny_llama, tokens, schedule=(16, 4, 1, 1, 1, 1))
    assert hf.cache_length(cache) == 24 and last is not None
    again = hf.greedy_continuation(tiny_llama, tokens, cache, max_new_tokens=4)
    plain = hf.greedy_continuation(tiny_llama, tokens, None, max_new_tokens=4)
    assert len(again) == 4 and len(plain) == 4


def test_transformers_source_uses_the_current_api(tiny_llama, no_future_warnings):
    tokens = np.random.default_rng(0).integers(0, 512, 30).astype(np.uint32)
    codec = LMCodec(tiny_llama, engine=False, block_tokens=8)
    assert np.array_equal(codec.decode(codec.encode(tokens)), tokens)


def test_cache_argument_matches_the_forward_signature(tiny_llama):
    import inspect

    params = inspect.signature(type(tiny_llama).forward).parameters
    assert hf.cache_argument(tiny_llama) == ("cache" if "cache" in params else "past_key_values")
