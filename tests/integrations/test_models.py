"""seqkv.integrations.models: fingerprints, numerics profiles, loading errors (SmolLM2 ones marked `model`)."""

from __future__ import annotations

import json

import pytest

from seqkv.integrations import models
from seqkv.errors import SeqkvError


def test_fingerprint_is_stable_cached_and_sensitive(tiny_llama):
    import torch

    fp = models.fingerprint(tiny_llama)
    assert isinstance(fp, bytes) and len(fp) == 32
    assert models.fingerprint(tiny_llama) == fp
    assert getattr(tiny_llama, "_seqkv_fingerprint") is not None
    clone = type(tiny_llama)(tiny_llama.config).eval()
    clone.load_state_dict(tiny_llama.state_dict())
    assert models.fingerprint(clone) == fp  # same weights and config, another object
    with torch.no_grad():
        next(iter(clone.parameters())).view(-1)[0] += 1e-6
    del clone._seqkv_fingerprint
    assert models.fingerprint(clone) != fp


def test_fingerprint_covers_the_tokenizer(tiny_llama):
    class Tok:
        def __init__(self, vocab):
            self.vocab = vocab
            self.all_special_tokens = ["<s>"]

        def get_vocab(self):
            return self.vocab

    a = models.fingerprint(tiny_llama, Tok({"a": 0, "b": 1}))
    b = models.fingerprint(tiny_llama, Tok({"a": 1, "b": 0}))
    assert a != b and models.fingerprint(tiny_llama) not in (a, b)


def test_numerics_profile(tiny_llama):
    p = models.numerics_profile(tiny_llama)
    assert p["device"] == "cpu" and p["dtype"] == "float32"
    for key in ("torch", "transformers", "threads", "cpu"):
        assert key in p
    assert json.loads(models.numerics_profile_json(tiny_llama)) == p
    assert models.vocab_size(tiny_llama) == 512


def test_load_errors(tmp_path):
    with pytest.raises(SeqkvError):
        models.load_model(tmp_path / "nothing-here")
    with pytest.raises(SeqkvError):
        models.load_model(tmp_path, gguf_file="missing.gguf")


@pytest.mark.model
def test_smollm2_loads_once(smollm2):
    model, tok = smollm2
    assert models.load_smollm2() is smollm2 or models.load_smollm2()[0] is model
    c = model.config
    assert (c.num_hidden_layers, c.num_key_value_heads, c.head_dim, c.vocab_size) == (30, 3, 64, 49152)
    assert next(iter(model.parameters())).dtype.is_floating_point
    fp = models.fingerprint(model)
    assert len(fp) == 32 and fp == models.fingerprint(model, tok)
    assert tok.convert_ids_to_tokens(0) == "<|endoftext|>"
