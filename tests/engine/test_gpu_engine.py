"""seqkv.engine.cpu.GpuEngine (seqkv/cuda/kernels/engine.cu) against the CPU engine, bit for bit: prefill,
batched steps and graph-replayed greedy decode, every compiled GEMM tile shape, GQA group sizes
1-3, attention in opted-in (> 48 KiB) shared memory, and the GEMM kernel alone on shapes with
tails against an exact NumPy fmaf chain. Marker `gpu`; skipped without CuPy + GPU."""

from __future__ import annotations

import numpy as np
import pytest

from seqkv.coding import gpu
from seqkv.cuda import runtime as cuda_runtime
from seqkv.kv import gpu as kvgpu
from seqkv.errors import InvalidInputError

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_runtime.available(), reason="needs CuPy and a CUDA GPU"),
]


def _config(V=300, H=64, I=96, L=2, nh=4, nkv=2, hd=16, seed=0):
    """A random Llama-shaped config + float32 tensors (names as seqkv.engine.cpu.hf_tensors)."""
    from seqkv.engine import random_tensors

    return random_tensors(V, H, I, L, nh, nkv, hd, seed=seed)


def _engines(config, tensors, **kw):
    from seqkv.engine import Engine, GpuEngine

    return Engine.from_tensors(config, tensors, "bf16"), GpuEngine(config, tensors, **kw)


def _check_schedule(cpu, g, prompts, steps):
    """Prompts of all slots in one pass, then batched single steps; compare logits and KV."""
    cp = g.cp
    slots = list(range(len(prompts)))
    got = [cp.asnumpy(g.forward_slots(slots, prompts))]
    for st in steps:
        got.append(cp.asnumpy(g.forward_slots(slots, [[int(t)] for t in st])))
    at = 0
    for s in slots:
        seq = cpu.new_sequence()
        ref = [cpu.prefill(seq, prompts[s])] + [cpu.step([seq], [int(st[s])]) for st in steps]
        mine = [got[0][at : at + len(prompts[s])]] + [x[s : s + 1] for x in got[1:]]
        at += len(prompts[s])
        assert np.concatenate(ref).tobytes() == np.concatenate(mine).tobytes(), f"logits of slot {s}"
        for layer, (k, v) in enumerate(seq.kv_arrays()):
            gk, gv = g.kv_layer(s, layer)
            assert k.tobytes() == gk.tobytes() and v.tobytes() == gv.tobytes(), f"KV of slot {s}, layer {layer}"


@pytest.mark.parametrize("nh,nkv,hd", [(4, 2, 16), (6, 2, 8), (3, 3, 16)])
def test_gpu_engine_matches_cpu_engine(nh, nkv, hd):
    config, tensors = _config(nh=nh, nkv=nkv, hd=hd)
    cpu, g = _engines(config, tensors, max_slots=4, max_len=64, max_rows=96)
    rng = np.random.default_rng(nh * 10 + nkv)
    prompts = [rng.integers(0, config["vocab_size"], n) for n in (1, 9, 33, 40)]
    steps = [rng.integers(0, config["vocab_size"], 4) for _ in range(3)]
    _check_schedule(cpu, g, prompts, steps)


def test_every_gemm_shape_gives_the_same_bits():
    config, tensors = _config(V=333, H=72, I=104, seed=3)  # N and K not multiples of the tiles
    cpu, g = _engines(config, tensors, max_slots=3, max_len=48, max_rows=64)
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, 333, n) for n in (5, 21, 38)]
    for shape in g.GEMM_SHAPES:
        # the fused gate/up GEMM (SiLU epilogue) needs column chunks of 4
        g.gemm_shapes = {k: shape if k != "gu" or 2 in g._modes(shape) else g.DEFAULT_GEMM_SHAPES["gu"]
                         for k in g.gemm_shapes}
        g.lens = [0] * g.max_slots
        _check_schedule(cpu, g, prompts, [])


def test_tune_gemms_keeps_the_bits():
    config, tensors = _config(seed=4)
    cpu, g = _engines(config, tensors, max_slots=2, max_len=32, max_rows=32)
    table = g.tune_gemms(rows=16, reps=2)
    assert set(table) == {"qkv", "o", "gu", "down", "lm_head"}
    assert all(len(v) == len(g.GEMM_SHAPES) and min(v.values()) > 0 for k, v in table.items() if k != "gu")
    assert len(table["gu"]) == sum(2 in g._modes(s) for s in g.GEMM_SHAPES)
    assert all(2 in g._modes(s) for s in [g.gemm_shapes["gu"]])
    with pytest.raises(InvalidInputError):
        g._gemm("gu", *g._gemm_args("gu", 4), shape=next(s for s in g.GEMM_SHAPES if 2 not in g._modes(s)))
    rng = np.random.default_rng(6)
    _check_schedule(cpu, g, [rng.integers(0, 300, 7), rng.integers(0, 300, 12)], [rng.integers(0, 300, 2)])


def test_odd_intermediate_size_is_refused():
    from seqkv.engine import GpuEngine

    config, tensors = _config(I=95, seed=12)
    with pytest.raises(InvalidInputError):
        GpuEngine(config, tensors, max_slots=1, max_len=8)


def test_attention_with_large_shared_memory():
    """hd = 64, G = 3 and 2,100 positions need ~77 KiB of shared memory (opt-in)."""
    config, tensors = _config(H=64, I=64, L=1, nh=3, nkv=1, hd=64, seed=7)
    cpu, g = _engines(config, tensors, max_slots=2, max_len=2100, max_rows=2100)
    assert g.att_smem > 48 * 1024
    rng = np.random.default_rng(8)
    _check_schedule(cpu, g, [rng.integers(0, 300, 2050), rng.integers(0, 300, 3)], [rng.integers(0, 300, 2)])


def test_graph_greedy_decode_matches_cpu():
    config, tensors = _config(seed=9)
    cpu, g = _engines(config, tensors, max_slots=5, max_len=40, max_rows=64)
    cp = g.cp
    rng = np.random.default_rng(10)
    prompts = [rng.integers(0, 300, n) for n in (4, 11, 2, 7, 20)]
    slots = list(range(5))
    g.forward_slots(slots, [p[:-1] for p in prompts])
    cp.cuda.Device().synchronize()
    with pytest.raises(InvalidInputError):
        g.greedy_decode_graph([0, 0], [1, 2])
    replay = g.greedy_decode_graph(slots, [int(p[-1]) for p in prompts])
    rows, fed = [], [[int(p[-1])] for p in prompts]
    for _ in range(4):
        replay(1)
        replay.stream.synchronize()
        rows.append(cp.asnumpy(g.buf["logits"][:5]))
        nxt = cp.asnumpy(g.buf["tokens"][:5])
        for s in slots:
            fed[s].append(int(nxt[s]))
    for s in slots:
        hist = np.concatenate([prompts[s][:-1], np.array(fed[s][:-1])])
        ref = cpu.prefill(cpu.new_sequence(), hist)[-4:]
        assert ref.tobytes() == np.stack([r[s] for r in rows]).tobytes()
        assert fed[s][1:] == [int(x) for x in ref.argmax(1)]


# ---- the GEMM kernel alone ----------------------------------------------------------------------


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Correctly rounded float32 fma(a, b, c): the product is exact in f64; the f64 sum's error
    (TwoSum) decides the ties that rounding the f64 sum to f32 would get wrong."""
    p = a.astype(np.float64) * b.astype(np.float64)
    c64 = c.astype(np.float64)
    s = p + c64
    bp = s - c64
    e = (c64 - (s - bp)) + (p - bp)  # p + c == s + e exactly
    r = s.astype(np.float32)
    r64 = r.astype(np.float64)
    up = np.nextafter(r, np.float32(np.inf)).astype(np.float64)
    dn = np.nextafter(r, np.float32(-np.inf)).astype(np.float64)
    tie_up = (s == (r64 + up) / 2) & (e > 0)  # s was a midpoint and the exact sum is above it
    tie_dn = (s == (r64 + dn) / 2) & (e < 0)
    r = np.where(tie_up & (s > r64), np.nextafter(r, np.float32(np.inf)), r)
    r = np.where(tie_dn & (s < r64), np.nextafter(r, np.float32(-np.inf)), r)
    return r.astype(np.float32)


def _gemm_ref(x: np.ndarray, w_bits: np.ndarray) -> np.ndarray:
    w = (w_bits.astype(np.uint32) << 16).view(np.float32)
    acc = np.zeros((x.shape[0], w.shape[1]), np.float32)
    for k in range(x.shape[1]):
        acc = _fma32(np.broadcast_to(x[:, k : k + 1], acc.shape), np.broadcast_to(w[k], acc.shape), acc)
    return acc


@pytest.mark.parametrize("M,K,N", [(37, 50, 100), (64, 52, 104), (5, 17, 9), (130, 64, 136)])
def test_gemm_tails_match_exact_fma_chain(M, K, N):
    from seqkv.engine.gpu import bf16_round_bits

    config, tensors = _config(seed=11)
    _, g = _engines(config, tensors, max_slots=1, max_len=8, max_rows=8)
    cp = g.cp
    rng = np.random.default_rng(M * K + N)
    x = rng.standard_normal((M, K), dtype=np.float32)
    wb = bf16_round_bits(rng.standard_normal((K, N), dtype=np.float32))
    y0 = rng.standard_normal((M, N), dtype=np.float32)
    ref = _gemm_ref(x, wb)
    ref_acc = (y0 + ref).astype(np.float32)
    dx, dw = cp.asarray(x), cp.asarray(wb)
    for shape in g.GEMM_SHAPES:
        y = cp.zeros((M, N), cp.float32)
        g._gemm("qkv", dx, dw, y, M, K, N, 0, shape=shape)
        assert cp.asnumpy(y).tobytes() == ref.tobytes(), shape
        y = cp.asarray(y0)
        g._gemm("o", dx, dw, y, M, K, N, 1, shape=shape)
        assert cp.asnumpy(y).tobytes() == ref_acc.tobytes(), shape
