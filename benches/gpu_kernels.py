"""GPU kernel throughput (run on the device machine): quantize+gather, residual pack/unpack,
per-vector quantizers, and an lm-like end-to-end loop with SmolLM2's shape (random weights).

    PYTHONPATH=python python3 benches/gpu_kernels.py [--quick] [-o benches/results/gpu_kernels.json]

Bandwidth figures count the bytes a kernel must move at least (inputs read once, outputs written
once); fractions divide by the device-to-device copy bandwidth measured in the same run (a copy
of N bytes moves 2N: read and write).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from _summary import GPUKernels, Machine, machine, write_summary  # noqa: E402

from seqkv.coding import gpu  # noqa: E402
from seqkv.cuda import runtime as cuda_runtime
from seqkv.kv import gpu as kvgpu
from seqkv.kv import quantizers as Q  # noqa: E402

V = 49152
P = 24


def _timeit(cp: Any, fn: Callable[[], Any], reps: int, warmup: int = 2) -> float:
    """Median seconds per call over `reps` calls (CUDA events around each; includes host syncs)."""
    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(reps):
        s, e = cp.cuda.Event(), cp.cuda.Event()
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(cp.cuda.get_elapsed_time(s, e) / 1e3)
    return float(np.median(times))


def _timeit_batch(cp: Any, fn: Callable[[], Any], reps: int) -> float:
    """Seconds per call of `reps` calls queued back to back between two events (GPU time when
    the host queues faster than the GPU runs)."""
    fn()
    cp.cuda.Device().synchronize()
    s, e = cp.cuda.Event(), cp.cuda.Event()
    s.record()
    for _ in range(reps):
        fn()
    e.record()
    e.synchronize()
    return cp.cuda.get_elapsed_time(s, e) / 1e3 / reps


def gpu_machine(cp: Any) -> Machine:
    props = cp.cuda.runtime.getDeviceProperties(0)
    return machine(
        gpu=props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
        sm_count=props["multiProcessorCount"],
        l2_bytes=props["l2CacheSize"],
        memory_bytes=props["totalGlobalMem"],
        smem_per_block_optin=props.get("sharedMemPerBlockOptin"),
        cuda_runtime=cp.cuda.runtime.runtimeGetVersion(),
        cuda_driver=cp.cuda.runtime.driverGetVersion(),
        cupy=cp.__version__,
    )


def copy_bandwidth(cp: Any, nbytes: int = 1 << 30) -> float:
    a = cp.ones(nbytes // 4, dtype=cp.float32)
    b = cp.empty_like(a)

    def run() -> None:
        b[...] = a

    t = _timeit(cp, run, 10)
    return 2 * nbytes / t


def bench_quantize(cp: Any, copy_bw: float, quick: bool) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"V": V, "precision": P, "configs": {}, "best": {},
                           "bytes_counted": "n*V*itemsize logits read + 8*n bytes (cum_low, freq) written",
                           "default_cluster_config": {"f32": gpu.cluster_config(V, "f32"),
                                                      "bf16": gpu.cluster_config(V, "bf16")}}
    ns = [1, 64, 4096] if not quick else [1, 64, 512]
    for dtype in ("f32", "bf16"):
        for n in ns:
            x = cp.asarray((rng.standard_normal((n, V)) * 3).astype(np.float32))
            if dtype == "bf16":
                xb = ((x.view(cp.uint32) + cp.uint32(0x8000)) >> 16).astype(cp.uint16)  # round to bf16
                arr, kind = xb, "bf16"
            else:
                arr, kind = x, None
            sym = cp.asarray(rng.integers(0, V, n))
            item = 4 if dtype == "f32" else 2
            nbytes = n * V * item + 8 * n
            best = None
            a2, k2, _, _ = gpu._rows(arr, kind)
            outbuf = cp.empty((n, 2), dtype=cp.uint32)
            # the cluster kernel (default) in a few shapes, and the one-block-per-row kernel
            epl = 4 if dtype == "f32" else 8
            configs: list[tuple[str, dict[str, Any]]] = []
            for b_, cs_ in ((128, 8), (64, 8), (128, 4), (256, 8), (512, 4), (1024, 2)):
                nl_ = -(-V // (b_ * cs_ * epl))
                configs.append((f"cluster={b_}x{cs_}x{nl_}", {"cluster": (b_, cs_, nl_)}))
            # the row kernel: its best shapes of the earlier full sweep (1024/2 f32, 256/0 bf16)
            for block, cache in ((1024, 2), (256, 0), (512, 1)):
                if n < 4096 and (block, cache) != (1024, 2):
                    continue
                configs.append((f"block={block}/cache={cache}", {"block": block, "cache": cache}))
            ref_out = None
            for label, kw in configs:
                reps = 20 if n >= 4096 else 50

                def call() -> Any:
                    return gpu.gather_cdf(arr, sym, P, kind=kind, **kw)

                t_call = _timeit(cp, call, reps)
                got = call()
                if ref_out is None:
                    ref_out = got
                assert (got[0] == ref_out[0]).all() and (got[1] == ref_out[1]).all(), label

                # kernel only: preallocated outputs, no host copy
                def kern() -> Any:
                    return gpu._launch(a2, k2, n, V, P, 1, sym, outbuf, kw.get("block"), kw.get("cache"),
                                       kw.get("cluster"))

                t_k = _timeit(cp, kern, reps)
                key = f"{dtype}/n={n}/{label}"
                rec = {
                    "tokens_per_s": n / t_call,
                    "call_s": t_call,
                    "kernel_s": t_k,
                    "kernel_GBps": nbytes / t_k / 1e9,
                    "kernel_tokens_per_s": n / t_k,
                    "quantize_gather_bw_fraction": nbytes / t_k / copy_bw,
                }
                out["configs"][key] = rec
                if best is None or t_k < best[1]["kernel_s"]:
                    best = (key, rec)
            assert best is not None
            out["best"][f"{dtype}/n={n}"] = {"config": best[0], **best[1]}
            print(f"quantize+gather {dtype} n={n}: {best[0]} {best[1]['kernel_GBps']:.0f} GB/s "
                  f"fraction {best[1]['quantize_gather_bw_fraction']:.2f} tokens/s {best[1]['tokens_per_s']:.3g}", flush=True)
            del x, arr
    # search (decode side), default config
    for n in ns:
        x = cp.asarray((rng.standard_normal((n, V)) * 3).astype(np.float32))
        targets = rng.integers(0, 1 << P, n)
        t = _timeit(cp, lambda: gpu.search_cdf(x, targets, P), 20)
        out[f"search/f32/n={n}"] = {"call_s": t, "tokens_per_s": n / t, "GBps": n * V * 4 / t / 1e9}
    return out


def bench_residual(cp: Any, copy_bw: float, quick: bool) -> dict[str, Any]:
    from seqkv.kv import residual as R

    rng = np.random.default_rng(1)
    out: dict[str, Any] = {}
    n = (1 << 26) if not quick else (1 << 22)
    for kind, frac in (("bf16", 0.05), ("f32", 0.96)):
        if kind == "bf16":
            base = cp.asarray(rng.standard_normal(n, dtype=np.float32))
            orig = ((base.view(cp.uint32) + cp.uint32(0x8000)) >> 16).astype(cp.uint16)
            width, dt, item = 16, cp.uint16, 2
        else:
            orig = cp.asarray(rng.standard_normal(n, dtype=np.float32)).view(cp.uint32)
            width, dt, item = 32, cp.uint32, 4
        step = cp.asarray(np.where(rng.random(n) < frac, rng.choice([-2, -1, 1, 2], n), 0))
        key = cp.asarray(R.ordered_key(cp.asnumpy(orig), width))
        recomp = cp.asarray(R.ordered_key(cp.asnumpy((key.astype(cp.int64) + step).astype(dt)), width))
        packed = kvgpu.residual_pack(orig, recomp, kind=kind, host=False)
        pbytes = int(packed[2].nbytes + packed[3].nbytes)
        sweep = {}
        for bpw in (8, 16, 32):
            tp = _timeit(cp, lambda: kvgpu.residual_pack(orig, recomp, kind=kind, host=False, bpw=bpw), 30)
            tu = _timeit(cp, lambda: kvgpu.residual_unpack(packed, recomp, kind=kind, bpw=bpw), 30)
            back = kvgpu.residual_unpack(packed, recomp, kind=kind, bpw=bpw)
            assert bool((back == orig).all())
            sweep[bpw] = (tp, tu)
        best_bpw = min(sweep, key=lambda b: max(sweep[b]))
        t_pack, t_unpack = sweep[best_bpw]
        # GPU time alone: back-to-back launches (state memset + kernel), no host round trip
        o_v, _ = kvgpu._residual_view(orig, kind)
        r_v, _ = kvgpu._residual_view(recomp, kind)
        tk_pack = _timeit_batch(cp, lambda: kvgpu._residual_pack_launch(o_v, r_v, kind, best_bpw), 20)
        tk_unpack = _timeit_batch(cp, lambda: kvgpu.residual_unpack(packed, recomp, kind=kind, bpw=best_bpw), 20)
        pack_bytes = 2 * n * item + pbytes
        unpack_bytes = 2 * n * item + pbytes
        rec = {
            "n": n,
            "bpw": best_bpw,
            "sweep_pack_unpack_s": {str(b): v for b, v in sweep.items()},
            "changed_fraction": frac,
            "packed_bits_per_component": pbytes * 8 / n,
            "pack_GBps": pack_bytes / t_pack / 1e9,
            "unpack_GBps": unpack_bytes / t_unpack / 1e9,
            "call_pack_bw_fraction": pack_bytes / t_pack / copy_bw,
            "call_unpack_bw_fraction": unpack_bytes / t_unpack / copy_bw,
        }
        rec["call_bw_fraction"] = min(rec["call_pack_bw_fraction"], rec["call_unpack_bw_fraction"])
        gp, gu = pack_bytes / tk_pack / copy_bw, unpack_bytes / tk_unpack / copy_bw
        rec["gpu_only"] = {"pack_s": tk_pack, "unpack_s": tk_unpack, "pack_GBps": pack_bytes / tk_pack / 1e9,
                           "unpack_GBps": unpack_bytes / tk_unpack / 1e9, "pack_bw_fraction": gp, "unpack_bw_fraction": gu}
        # the headline is device time, as quantize_gather_bw_fraction (kernel time) and the copy it is
        # compared with; the call fractions add the host's launch, allocation and (pack) word-count sync
        rec["residual_bw_fraction"] = min(gp, gu)
        out[kind] = rec
        print(f"residual {kind}: GPU time pack {tk_pack * 1e6:.0f} us unpack {tk_unpack * 1e6:.0f} us, "
              f"fraction {rec['residual_bw_fraction']:.2f} ({gp:.2f} {gu:.2f}); per call with host work: "
              f"pack {rec['pack_GBps']:.0f} GB/s unpack {rec['unpack_GBps']:.0f} GB/s, fraction {rec['call_bw_fraction']:.2f}",
              flush=True)
        del orig, recomp, packed, key, step
    return out


def bench_quantizers(cp: Any, copy_bw: float, quick: bool) -> dict[str, Any]:
    rng = np.random.default_rng(2)
    # SmolLM2 KV of 4096 tokens: 30 layers x 3 heads x 4096 tokens x 64
    shape = (30, 3, 4096 if not quick else 512, 64)
    x = cp.asarray(rng.standard_normal(shape, dtype=np.float32))
    xb = ((x.view(cp.uint32) + cp.uint32(0x8000)) >> 16).astype(cp.uint16)
    try:
        import torch

        xt = torch.from_dlpack(xb.view(cp.int16)).view(torch.bfloat16)
    except ImportError:
        xt = None
    out: dict[str, Any] = {"shape": list(shape)}
    inb = x.size * 2  # bf16 input
    for bits in (2, 3, 4):
        tq = Q.TurboQuant(64, bits)
        src = xt if xt is not None else x
        q = tq.quantize(src)
        tq_t = _timeit(cp, lambda: tq.quantize(src), 10)
        dq_t = _timeit(cp, lambda: tq.dequantize(q), 10)
        xh = tq.dequantize(q)
        ref = xt.float() if xt is not None else x
        refc = cp.from_dlpack(ref) if xt is not None else ref
        rel = float(((refc - xh) ** 2).sum() / (refc**2).sum())
        out[f"turbo{bits}"] = {"quantize_GBps": inb / tq_t / 1e9, "dequantize_GBps": x.size * 4 / dq_t / 1e9,
                               "relative_mse": rel, "bits_per_component": q.nbytes * 8 / x.size}
    kv = Q.KIVI(2, 32)
    src = xt if xt is not None else x
    for name, fn in (("kivi2_keys", kv.quantize_keys), ("kivi2_values", kv.quantize_values)):
        c = fn(src)
        t = _timeit(cp, lambda: fn(src), 10)
        td = _timeit(cp, lambda: kv.dequantize(c), 10)
        out[name] = {"quantize_GBps": inb / t / 1e9, "dequantize_GBps": x.size * 4 / td / 1e9,
                     "bits_per_component": c.nbytes * 8 / x.size}
    print("quantizers", {k: round(v.get("quantize_GBps", 0), 1) for k, v in out.items() if isinstance(v, dict)}, flush=True)
    return out


def bench_lm(cp: Any, quick: bool) -> dict[str, Any]:
    """lm-like codec loop with SmolLM2-135M's shape and random weights on the GPU: encode = one
    forward over the sequence + gather (+ range coding where seqkv.coding.coder is built); decode =
    one forward step per token with the KV cache + search."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                      tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0)
    out: dict[str, Any] = {"model": "LlamaConfig(SmolLM2-135M dims), random weights", "dtype": "float32"}
    model = LlamaForCausalLM(cfg).to("cuda", torch.float32).eval()
    T = 1024 if not quick else 128
    ids = torch.randint(0, V, (1, T), device="cuda")
    try:
        from seqkv import _native

        have_coder = hasattr(_native, "Encoder")
    except ImportError:
        have_coder = False
    out["range_coder_included"] = have_coder
    total = 1 << P
    from transformers import DynamicCache

    with torch.inference_mode():
        def encode() -> Any:
            logits = model(ids).logits[0, :-1]
            lo, fr = gpu.gather_cdf(logits, ids[0, 1:], P)
            if have_coder:
                enc = _native.Encoder(P)
                for c, f in zip(lo.tolist(), fr.tolist()):
                    enc.push_slice(c, f, total)
                return enc.finish()
            return lo, fr

        encode()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        reps = 3
        for _ in range(reps):
            encode()
        torch.cuda.synchronize()
        out["encode_prefill_tokens_per_s"] = (T - 1) / ((time.perf_counter() - t0) / reps)

        # step-by-step: encode from per-step logits, then decode with the same schedule and check
        steps = 128 if not quick else 32
        seq = ids[0, : steps + 1]

        def step_logits() -> Any:
            cache = DynamicCache()
            for i in range(steps):
                yield model(seq[i : i + 1][None], past_key_values=cache, use_cache=True).logits[0, -1:]

        torch.cuda.synchronize()
        t0 = time.perf_counter()
        enc = _native.Encoder(P) if have_coder else None
        for i, lg in enumerate(step_logits()):
            lo, fr = gpu.gather_cdf(lg, seq[i + 1 : i + 2], P)
            if enc is not None:
                enc.push_slice(int(lo[0]), int(fr[0]), total)
        data = enc.finish() if enc is not None else b""
        torch.cuda.synchronize()
        out["encode_stepwise_tokens_per_s"] = steps / (time.perf_counter() - t0)
        out["stepwise_bits_per_token"] = len(data) * 8 / steps
        if have_coder:
            t0 = time.perf_counter()
            dec = _native.Decoder(data, P)
            cache = DynamicCache()
            tok = seq[:1][None]
            decoded = []
            for _ in range(steps):
                lg = model(tok, past_key_values=cache, use_cache=True).logits[0, -1:]
                s, lo, fr = gpu.search_cdf(lg, [dec.target_with_total(total)], P)
                dec.advance(int(lo[0]), int(fr[0]))
                decoded.append(int(s[0]))
                tok = torch.tensor([[decoded[-1]]], device="cuda")
            torch.cuda.synchronize()
            out["decode_tokens_per_s"] = steps / (time.perf_counter() - t0)
            out["decode_roundtrip_exact"] = decoded == seq[1:].tolist()
        # the forward alone, for scale
        cache = DynamicCache()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(steps):
            model(seq[i : i + 1][None], past_key_values=cache, use_cache=True)
        torch.cuda.synchronize()
        out["decode_forward_only_tokens_per_s"] = steps / (time.perf_counter() - t0)
    out["encode_T"] = T
    print("lm", out, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-o", "--output", default=str(ROOT / "benches/results/gpu_kernels.json"))
    ap.add_argument("--only", default="quantize,residual,quantizers,lm")
    args = ap.parse_args()
    if not cuda_runtime.available():
        print("no CUDA GPU / CuPy: nothing to measure")
        return
    import cupy as cp

    res: dict[str, Any] = {"machine": gpu_machine(cp), "quick": args.quick}
    bw = copy_bandwidth(cp)
    res["copy_bandwidth_GBps"] = bw / 1e9
    print(f"device-to-device copy: {bw / 1e9:.0f} GB/s (read + write)", flush=True)
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    sections = {"quantize": lambda: bench_quantize(cp, bw, args.quick),
                "residual": lambda: bench_residual(cp, bw, args.quick),
                "quantizers": lambda: bench_quantizers(cp, bw, args.quick),
                "lm": lambda: bench_lm(cp, args.quick)}
    for name in args.only.split(","):
        try:
            res[name] = sections[name]()
        except Exception as exc:  # keep the other sections' numbers
            traceback.print_exc()
            res[name] = {"error": f"{type(exc).__name__}: {exc}"}
        cp.get_default_memory_pool().free_all_blocks()
        path.write_text(json.dumps(res, indent=1))
    q = res.get("quantize", {}).get("best", {}).get("f32/n=4096", {})
    r = res.get("residual", {})
    res["summary"] = {
        "quantize_gather_bw_fraction": q.get("quantize_gather_bw_fraction"),
        "quantize_gather_tokens_per_s": q.get("kernel_tokens_per_s"),
        "residual_bw_fraction": min((v["residual_bw_fraction"] for v in r.values() if isinstance(v, dict) and "residual_bw_fraction" in v), default=None),
    }
    write_summary(path, GPUKernels, res, indent=1)
    print(json.dumps(res["summary"]), flush=True)


if __name__ == "__main__":
    main()
