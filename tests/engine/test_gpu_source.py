"""The GPU engine as a product path, against the CPU engine bit for bit: its CPU-engine API
(sequences, passes longer than max_rows, logits all/last/none, fork, truncate, slots), KV straight
into a transformers cache on the GPU, ``lm`` streams encoded on one device and decoded on the other
(single and batched, toy model and SmolLM2 on real English text), and exact store restores verified
against layer hashes recorded on the other device. Marker `gpu`; skipped without CuPy + GPU."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from seqkv.cuda import runtime as cuda_runtime
from seqkv.errors import CapacityError, InvalidInputError

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_runtime.available(), reason="needs CuPy and a CUDA GPU"),
]

torch = pytest.importorskip("torch")


def bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype=np.float32).tobytes()


@pytest.fixture(scope="module")
def engines():
    from seqkv.engine import Engine, GpuEngine, random_tensors

    config, tensors = random_tensors(300, 64, 96, 2, 4, 2, 16, seed=21)
    cpu = Engine.from_tensors(config, tensors, "bf16")
    gpu = GpuEngine(config, tensors, max_slots=10, max_len=96, max_rows=16)
    return cpu, gpu


def test_host_api_matches_the_cpu_engine(engines):
    """Prompts of 41 rows (three passes of max_rows=16), then steps; logits all/last/none; fork and
    truncate; every row and KV layer the CPU engine's bits."""
    cpu, gpu = engines
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, 300, n) for n in (9, 30, 0, 2)]
    cs, gs = [cpu.new_sequence() for _ in prompts], [gpu.new_sequence() for _ in prompts]
    for logits in ("all", "last", "none"):
        if logits != "all":
            cs, gs = [cpu.new_sequence() for _ in prompts], [gpu.new_sequence() for _ in prompts]
        ref, got = cpu.forward(cs, prompts, logits=logits), gpu.forward(gs, prompts, logits=logits)
        assert ref.shape == got.shape and bits(ref) == bits(got), logits
    toks = [int(t) for t in rng.integers(0, 300, 4)]
    assert bits(cpu.step(cs, toks)) == bits(gpu.step(gs, toks))
    for c, g in zip(cs, gs):
        assert c.layer_hashes() == g.layer_hashes() and c.schedule == g.schedule
    cf, gf = cs[1].fork(12), gs[1].fork(12)
    assert bits(cpu.prefill(cf, [5, 6])) == bits(gpu.prefill(gf, [5, 6]))
    cs[1].truncate(20)
    gs[1].truncate(20)
    assert bits(cpu.step([cs[1]], [7])) == bits(gpu.step([gs[1]], [7]))
    assert cs[1].layer_hashes() == gs[1].layer_hashes()


def test_slots_are_a_bounded_resource(engines):
    _, gpu = engines
    held = []
    while gpu._free_slots:
        held.append(gpu.new_sequence())
    with pytest.raises(CapacityError):
        gpu.new_sequence()
    held.pop().release()
    seq = gpu.new_sequence()
    with pytest.raises(CapacityError):
        gpu.prefill(seq, np.zeros(gpu.max_len + 1, np.int64))
    with pytest.raises(InvalidInputError):
        gpu.forward([seq, seq], [[1], [2]])
    seq.release()
    with pytest.raises(InvalidInputError):
        gpu.step([seq], [1])


@pytest.fixture(scope="module")
def tiny_pair(tiny_llama):
    """The toy Llama on the CPU and a copy of it on the GPU (the same fingerprint)."""
    return tiny_llama, copy.deepcopy(tiny_llama).to("cuda")


def test_kv_cache_is_built_on_the_gpu_with_the_cpu_hashes(tiny_pair):
    from seqkv.engine import Engine, GpuEngine
    from seqkv.integrations.transformers import layer_hashes

    model_cpu, model_gpu = tiny_pair
    gpu = GpuEngine.for_model(model_gpu)
    cpu = Engine.for_model(model_cpu, "bf16")
    toks = np.random.default_rng(4).integers(0, 512, 77)
    gs, cs = gpu.new_sequence(), cpu.new_sequence()
    gpu.prefill(gs, toks, logits="none")
    cpu.prefill(cs, toks, logits="none")
    cache = gs.kv_cache(dtype=torch.bfloat16)
    k0 = cache.layers[0].keys if hasattr(cache, "layers") else cache.key_cache[0]
    assert k0.is_cuda and k0.dtype == torch.bfloat16
    want = layer_hashes(cs.kv_cache(dtype=torch.bfloat16))
    assert layer_hashes(cache) == want
    gs.release()  # the slot is reused: the cache owns its memory
    other = gpu.new_sequence()
    gpu.prefill(other, toks[::-1].copy(), logits="none")
    assert layer_hashes(cache) == want


def test_lm_streams_cross_devices(tiny_pair):
    from seqkv.codecs.lm import LMCodec
    from seqkv.codecs.sources import EngineLogitsSource, GpuEngineLogitsSource

    model_cpu, model_gpu = tiny_pair
    on_gpu, on_cpu = LMCodec(model_gpu), LMCodec(model_cpu)
    assert type(on_gpu.source) is GpuEngineLogitsSource and type(on_cpu.source) is EngineLogitsSource
    assert on_gpu.fingerprint == on_cpu.fingerprint
    rng = np.random.default_rng(5)
    streams = [rng.integers(0, 512, n) for n in (300, 1, 45)]
    for toks in streams:
        assert np.array_equal(on_cpu.decode(on_gpu.encode(toks)), toks)
        assert np.array_equal(on_gpu.decode(on_cpu.encode(toks)), toks)
    ctxs = [rng.integers(0, 512, n) for n in (0, 20, 300)]
    for a, b in ((on_gpu, on_cpu), (on_cpu, on_gpu)):
        out = b.decode_batch(a.encode_batch(streams, contexts=ctxs), contexts=ctxs)
        assert all(np.array_equal(x, y) for x, y in zip(out, streams))


def _english(tok, n: int) -> np.ndarray:
    text = Path("/usr/share/common-licenses/GPL-3").read_text()
    return np.asarray(tok(text)["input_ids"][:n], dtype=np.int64)


@pytest.fixture(scope="module")
def smollm2_pair():
    pytest.importorskip("gguf")
    from seqkv.integrations.models import load_smollm2

    try:
        model_cpu, tok = load_smollm2("cpu")
        model_gpu, _ = load_smollm2("cuda")
    except (ImportError, OSError) as exc:
        pytest.skip(f"SmolLM2 not available: {exc}")
    return model_cpu, model_gpu, tok


@pytest.mark.model
def test_smollm2_english_streams_cross_devices(smollm2_pair):
    from seqkv.codecs.lm import LMCodec
    from seqkv.coding import container

    model_cpu, model_gpu, tok = smollm2_pair
    toks = _english(tok, 400)
    on_gpu, on_cpu = LMCodec(model_gpu, tokenizer=tok), LMCodec(model_cpu, tokenizer=tok)
    from_gpu, from_cpu = on_gpu.encode(toks), on_cpu.encode(toks)
    # the same rows: the same coded payload (the headers differ only in the recorded device)
    assert [b.payload for b in container.unpack(from_gpu).blocks] == [b.payload for b in container.unpack(from_cpu).blocks]
    assert np.array_equal(on_cpu.decode(from_gpu), toks)
    assert np.array_equal(on_gpu.decode(from_cpu), toks)


@pytest.mark.model
def test_exact_restore_verifies_against_the_other_devices_hashes(smollm2_pair):
    from seqkv.backends import MemoryBackend
    from seqkv.engine import Engine
    from seqkv.store import SessionStore

    model_cpu, model_gpu, tok = smollm2_pair
    toks = _english(tok, 300)
    cpu_engine = Engine.for_model(model_cpu, "bf16")  # the GPU engine's numerics
    for writer, reader in (((model_cpu, cpu_engine), (model_gpu, "auto")), ((model_gpu, "auto"), (model_cpu, cpu_engine))):
        backend = MemoryBackend()
        SessionStore(writer[0], "lm", tokenizer=tok, backend=backend, engine=writer[1]).put("s", toks)
        store = SessionStore(reader[0], "lm", tokenizer=tok, backend=backend, engine=reader[1])
        assert store.kv_source == "seqkv-engine"
        got, cache = store.get("s", mode="exact")
        assert np.array_equal(got, toks)
        k0 = cache.layers[0].keys if hasattr(cache, "layers") else cache.key_cache[0]
        assert k0.device.type == next(reader[0].parameters()).device.type
