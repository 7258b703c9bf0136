"""seqkv.engine.cpu on GGUF block weights (Q4_0, Q4_1, Q8_0): the same logits and KV bits as the
f32 engine on the de-quantized weights, under every schedule, batch and ISA; bad block types
are refused by name; on SmolLM2 the Q4_1 engine is the f32 engine of the transformers model."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from seqkv.engine.cpu import Engine, random_tensors  # noqa: E402
from seqkv.errors import InvalidInputError  # noqa: E402

BLOCK_TYPES = ("q4_0", "q4_1", "q8_0")


def bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype=np.float32).tobytes()


def quantize(w: np.ndarray, kind: str) -> tuple[str, np.ndarray]:
    return kind, gguf.quants.quantize(w, gguf.GGMLQuantizationType[kind.upper()])


def dequantize(blocks: tuple[str, np.ndarray]) -> np.ndarray:
    kind, raw = blocks
    return np.asarray(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[kind.upper()]), dtype=np.float32)


def synthetic(pick) -> tuple[dict, dict, dict]:
    """A small Llama (hidden 64, intermediate 96: multiples of the block) with every matrix and
    the embedding quantized to ``pick(i)``; returns (config, block tensors, de-quantized tensors)."""
    config, t = random_tensors(101, 64, 96, 2, 4, 2, 16, seed=3)
    blocks, deq = {}, {}
    for i, (name, w) in enumerate(sorted(t.items())):
        if w.ndim == 2:
            blocks[name] = quantize(w, pick(i))
            deq[name] = dequantize(blocks[name])
        else:
            blocks[name] = deq[name] = w
    return config, blocks, deq


def run(eng: Engine, tokens: np.ndarray, chunks: list[int]) -> tuple[bytes, list[bytes]]:
    seq = eng.new_sequence()
    rows, at = [], 0
    for c in chunks:
        rows.append(eng.prefill(seq, tokens[at : at + c]))
        at += c
    while at < len(tokens):
        rows.append(eng.step([seq], [int(tokens[at])]))
        at += 1
    return bits(np.concatenate(rows)), seq.layer_hashes()


TOKENS = (np.arange(40) * 37 + 5) % 101


@pytest.mark.parametrize("kind", [*BLOCK_TYPES, "mixed"])
def test_block_engine_is_the_f32_engine_of_its_weights(kind):
    pick = (lambda i: BLOCK_TYPES[i % 3]) if kind == "mixed" else (lambda i: kind)
    config, blocks, deq = synthetic(pick)
    f = Engine.from_tensors(config, deq, "f32", page_tokens=8)
    want = run(f, TOKENS, [40])
    q = Engine.from_tensors(config, blocks, "q4_1", page_tokens=8)
    formats = set(q.weight_formats.values())
    # mixed: fused projections whose parts differ in type are stored as exact f32
    assert formats == {kind} if kind != "mixed" else len(formats - {"f32"}) >= 2
    assert q.step_weight_bytes < Engine.from_tensors(config, deq, "bf16").step_weight_bytes
    for eng in (q, q.with_isa("scalar")):
        for chunks in ([40], [7, 13, 1], [3]):
            assert run(eng, TOKENS, chunks) == want, (eng.isa, chunks)
    # decoding beside another sequence that prefills gives the same row
    a, b = q.new_sequence(), q.new_sequence()
    q.prefill(a, TOKENS[:20], logits="none")
    rows = q.forward([b, a], [TOKENS[:9], TOKENS[20:21]], logits="last")
    ref = f.prefill(f.new_sequence(), TOKENS[:21])
    assert bits(rows[1]) == bits(ref[20])
    # blocks given to a float engine are de-quantized exactly
    assert run(Engine.from_tensors(config, blocks, "f32"), TOKENS, [11]) == want


def test_packed_state_round_trips_blocks():
    from seqkv import _native

    config, blocks, _ = synthetic(lambda i: "q4_1")
    blocks["embed"] = quantize(dequantize(blocks["embed"]), "q8_0")
    q = Engine.from_tensors(config, blocks, "q4_1")
    assert q.weight_formats["embed"] == "q8_0"
    state = q._core.packed_state()
    assert state["layers.0.wqkv"].dtype == np.uint8
    back = Engine(_native.EngineCore.from_packed_state(config, state, dtype="q4_1"))
    assert back.weight_formats == q.weight_formats
    assert run(back, TOKENS, [40]) == run(q, TOKENS, [40])
    # a float engine does not take block arrays
    with pytest.raises(InvalidInputError):
        _native.EngineCore.from_packed_state(config, state, dtype="f32")


def test_bad_block_types_and_shapes_are_refused():
    config, blocks, _ = synthetic(lambda i: "q4_1")
    bad = dict(blocks, **{"layers.1.up": ("q6_k", blocks["layers.1.up"][1])})
    with pytest.raises(InvalidInputError, match="q6_k"):
        Engine.from_tensors(config, bad, "q4_1")
    short = dict(blocks, **{"layers.0.q": ("q4_1", blocks["layers.0.q"][1][:-1])})
    with pytest.raises(InvalidInputError, match="layers.0.q"):
        Engine.from_tensors(config, short, "q4_1")
    with pytest.raises(InvalidInputError, match="q5_0"):
        Engine.from_tensors(config, blocks, "q5_0")


def test_block_dtype_needs_a_gguf_model(tiny_llama):
    with pytest.raises(InvalidInputError, match="GGUF"):
        Engine.from_hf(tiny_llama, "q4_1")


@pytest.mark.model
def test_smollm2_q4_1_engine_is_the_f32_engine(smollm2):
    import os

    from seqkv.engine.cpu import smollm2_engine
    from seqkv.integrations.models import SMOLLM2_GGUF, smollm2_folder

    model, _ = smollm2
    q = Engine.from_gguf(os.path.join(smollm2_folder(), SMOLLM2_GGUF), "q4_1")
    f = Engine.from_hf(model, "f32")
    assert q.dtype == "q4_1" and q.fingerprint() == f.fingerprint()
    assert set(q.weight_formats.values()) == {"q4_1", "q8_0"}  # the GGUF's embedding is Q8_0
    assert q.numerics_profile()["computes_as"] == "f32"
    assert q.step_weight_bytes < f.step_weight_bytes / 5
    tokens = (np.arange(70) * 7919 + 11) % q.vocab_size
    want = run(f, tokens, [70])
    assert run(q, tokens, [70]) == want
    assert run(q, tokens, [33, 5]) == want
    fast = smollm2_engine("q4_1")  # from the model cache, no torch
    assert fast is not None and run(fast, tokens, [64]) == want
