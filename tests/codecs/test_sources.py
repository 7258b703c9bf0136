"""Logits sources: the transformers source computes under a fixed, recorded configuration."""

from __future__ import annotations

import numpy as np
import pytest

from seqkv.codecs.lm import LMCodec
from seqkv.codecs.sources import TransformersSource
from seqkv.errors import InvalidInputError


def test_transformers_stream_decodes_under_another_caller_thread_count(tiny_llama):
    """Issue 18 item 17: written with 2 torch threads, read with 1 (and the other way round)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    tokens = np.random.default_rng(3).integers(0, 512, 40).astype(np.uint32)
    try:
        torch.set_num_threads(2)
        data = LMCodec(tiny_llama, engine=False, block_tokens=16).encode(tokens)
        assert torch.get_num_threads() == 2  # the caller's setting is restored
        torch.set_num_threads(1)
        assert np.array_equal(LMCodec(tiny_llama, engine=False, block_tokens=16).decode(data), tokens)
        data = LMCodec(tiny_llama, engine=False, block_tokens=16).encode(tokens)
        torch.set_num_threads(2)
        assert np.array_equal(LMCodec(tiny_llama, engine=False, block_tokens=16).decode(data), tokens)
    finally:
        torch.set_num_threads(before)


def test_transformers_forwards_run_with_the_recorded_thread_count(tiny_llama):
    """The thread count in the profile is the one the forwards ran with, not the caller's."""
    torch = pytest.importorskip("torch")
    seen: list[int] = []
    hook = tiny_llama.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        codec = LMCodec(tiny_llama, engine=False, block_tokens=16)
        codec.encode(np.arange(20, dtype=np.uint32))
        assert seen and set(seen) == {codec.source.numerics_profile()["threads"]} == {1}
    finally:
        hook.remove()
        torch.set_num_threads(before)


def test_transformers_source_records_its_thread_count(tiny_llama):
    torch = pytest.importorskip("torch")
    source = TransformersSource(tiny_llama, threads=2)
    assert source.numerics_profile()["threads"] == 2
    before = torch.get_num_threads()
    source.start(np.array([1, 2, 3], np.uint32))
    assert torch.get_num_threads() == before
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(InvalidInputError):
            TransformersSource(tiny_llama, threads=bad)
