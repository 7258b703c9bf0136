"""seqkv.integrations.model_cache: a GGUF is converted once, later loads read the verified cache,
a corrupted or stale entry is rebuilt (never used), and the engine's packed weights are cached
beside the model."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from seqkv.engine import cpu as engine_cpu  # noqa: E402
from seqkv.engine import Engine  # noqa: E402
from seqkv.integrations import model_cache, models  # noqa: E402


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQKV_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def gguf(tmp_path):
    """Stands for the GGUF file: the cache only hashes it; `convert` does the loading."""
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    return path


class Converter:
    """The slow load, counted: returns a fresh copy of the tiny Llama each time."""

    def __init__(self, model):
        self.model = model
        self.calls = 0

    def __call__(self):
        self.calls += 1
        clone = type(self.model)(self.model.config).eval()
        clone.load_state_dict(self.model.state_dict())
        return clone, None


def logits(model, ids=(1, 5, 9, 200, 7)):
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits.numpy()


def entry_of(cache_dir: Path) -> Path:
    (entry,) = [p for p in (cache_dir / "models").iterdir() if p.is_dir()]
    return entry


def test_second_load_reads_the_cache(tiny_llama, cache_dir, gguf):
    convert = Converter(tiny_llama)
    first, _ = model_cache.load_or_convert(gguf, convert)
    second, _ = model_cache.load_or_convert(gguf, convert)
    assert convert.calls == 1
    assert second is not first
    np.testing.assert_array_equal(logits(second), logits(tiny_llama))
    # the fingerprint comes from the manifest, and is the one the weights hash to
    assert models.fingerprint(second) == models.fingerprint(tiny_llama)
    del second._seqkv_fingerprint
    assert models.fingerprint(second) == models.fingerprint(tiny_llama)
    manifest = json.loads((entry_of(cache_dir) / "manifest.json").read_text())
    assert manifest["gguf"]["sha256"] == model_cache.gguf_sha256(gguf) == entry_of(cache_dir).name
    assert {"config.json", "model.safetensors"} <= set(manifest["files"])


def test_another_gguf_gets_its_own_entry(tiny_llama, cache_dir, gguf):
    convert = Converter(tiny_llama)
    model_cache.load_or_convert(gguf, convert)
    gguf.write_bytes(gguf.read_bytes() + b"x")
    model_cache.load_or_convert(gguf, convert)
    assert convert.calls == 2
    assert len([p for p in (cache_dir / "models").iterdir() if p.is_dir()]) == 2


@pytest.mark.parametrize("damage", ["flip_payload_byte", "truncate", "drop_file", "edit_config", "other_versions"])
def test_a_damaged_entry_is_rebuilt_not_used(tiny_llama, cache_dir, gguf, damage):
    convert = Converter(tiny_llama)
    model_cache.load_or_convert(gguf, convert)
    entry = entry_of(cache_dir)
    weights = entry / "model.safetensors"
    if damage == "flip_payload_byte":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0x40  # inside the last tensor, after the header
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-4])
    elif damage == "drop_file":
        weights.unlink()
    elif damage == "edit_config":
        cfg = json.loads((entry / "config.json").read_text())
        cfg["rms_norm_eps"] = 0.5
        (entry / "config.json").write_text(json.dumps(cfg))
    else:
        manifest = json.loads((entry / "manifest.json").read_text())
        manifest["versions"]["transformers"] = "0.0.1"
        (entry / "manifest.json").write_text(json.dumps(manifest))
    model, _ = model_cache.load_or_convert(gguf, convert)
    assert convert.calls == 2  # rebuilt from the GGUF
    np.testing.assert_array_equal(logits(model), logits(tiny_llama))
    again, _ = model_cache.load_or_convert(gguf, convert)
    assert convert.calls == 2  # and the rebuilt entry is good
    np.testing.assert_array_equal(logits(again), logits(tiny_llama))


def test_unwritable_cache_still_loads(tiny_llama, tmp_path, monkeypatch, gguf):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("SEQKV_CACHE_DIR", str(blocker))
    convert = Converter(tiny_llama)
    model, _ = model_cache.load_or_convert(gguf, convert)
    np.testing.assert_array_equal(logits(model), logits(tiny_llama))


def test_engine_weights_are_cached_beside_the_model(tiny_llama, cache_dir, gguf, monkeypatch):
    model, _ = model_cache.load_or_convert(gguf, Converter(tiny_llama))
    built = Engine.from_hf(model, "bf16", page_tokens=8)
    engine_dirs = [p for p in entry_of(cache_dir).iterdir() if p.name.startswith("engine-bf16")]
    assert len(engine_dirs) == 1

    calls = []
    real = engine_cpu.hf_tensors
    monkeypatch.setattr(engine_cpu, "hf_tensors", lambda m: calls.append(1) or real(m))
    cached = Engine.from_hf(model, "bf16", page_tokens=8)
    assert calls == []  # rebuilt from the packed weights, not from the model's tensors
    assert cached.fingerprint() == built.fingerprint()
    toks = [3, 1, 4, 1, 5, 9, 2, 6]
    a, b = built.new_sequence(), cached.new_sequence()
    assert built.prefill(a, toks).tobytes() == cached.prefill(b, toks).tobytes()
    assert a.layer_hashes() == b.layer_hashes()

    # a corrupted engine entry is rebuilt from the model, and gives the same bits
    weights = engine_dirs[0] / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x10
    weights.write_bytes(bytes(data))
    rebuilt = Engine.from_hf(model, "bf16", page_tokens=8)
    assert calls == [1]
    c = rebuilt.new_sequence()
    assert rebuilt.prefill(c, toks).tobytes() == built.prefill(built.new_sequence(), toks).tobytes()


def test_cached_engine_needs_no_torch_and_matches(tiny_llama, cache_dir, gguf):
    assert engine_cpu.Engine.from_cached_gguf(gguf) is None  # nothing cached yet
    model, _ = model_cache.load_or_convert(gguf, Converter(tiny_llama))
    assert engine_cpu.Engine.from_cached_gguf(gguf) is None  # the model, but no engine weights yet
    built = Engine.from_hf(model, "bf16")
    fast = engine_cpu.Engine.from_cached_gguf(gguf, "bf16")
    assert fast.fingerprint() == built.fingerprint()
    toks = [7, 3, 300, 2, 2, 9]
    assert fast.prefill(fast.new_sequence(), toks).tobytes() == built.prefill(built.new_sequence(), toks).tobytes()
    code = ("import hashlib, sys; from seqkv.engine.cpu import Engine; "
            f"e = Engine.from_cached_gguf({str(gguf)!r}); "
            "print(e is not None, hashlib.sha256(e.prefill(e.new_sequence(), [7, 3, 300]).tobytes()).hexdigest(), "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, SEQKV_CACHE_DIR=str(cache_dir))).stdout.split()
    assert out[0] == "True" and out[2] == "False"
    assert out[1] == hashlib.sha256(built.prefill(built.new_sequence(), [7, 3, 300]).tobytes()).hexdigest()


def test_models_not_from_the_cache_write_no_engine_entry(tiny_llama, cache_dir):
    Engine.from_hf(tiny_llama, "bf16")
    assert not cache_dir.exists()


@pytest.mark.model
def test_smollm2_loads_from_the_cache(smollm2):
    model, tok = smollm2
    entry = Path(getattr(model, "_seqkv_cache_entry"))
    assert (entry / "manifest.json").is_file()
    fresh, fresh_tok = model_cache._load_entry(entry)
    assert models.fingerprint(fresh) == models.fingerprint(model)
    assert fresh_tok.get_vocab() == tok.get_vocab()
