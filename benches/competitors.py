"""Competitor libraries from PyPI on SmolLM2-135M's real KV and logits, next to seqkv.

    python benches/competitors.py [--quick] [--tokens N] [--out PATH]

One license text (/usr/share/common-licenses/Apache-2.0, first N tokens; full 512, quick 256) is
fed to SmolLM2-135M-Instruct (fp32, CPU) in chunks of 32 tokens (a chunked prefill), once with an
exact ``DynamicCache`` and once per quantized cache. Measured per format:

* Hugging Face transformers' ``QuantizedCache`` with the ``quanto`` (optimum-quanto, 2 and 4 bits)
  and ``hqq`` (2, 3 and 4 bits) backends and its built-in ``fp8`` backend, at transformers'
  defaults (group 64, axis 0, residual length 128):
  - bits per token position of the stored KV: the bytes of the quantized tensors the backend keeps
    (packed codes + scales + zero points, as allocated: float32 here since the KV is float32),
    times 8, over the tokens, when the whole exact KV is quantized with the backend's own
    ``_quantize``;
  - relative MSE of K and V (MSE over the mean square, all layers) after ``_dequantize``;
  - what the model loses: cross-entropy of the text's next tokens (bits/token) with the quantized
    cache minus with the exact one, and top-1 agreement with the exact logits, over every position
    after the first chunk.
* seqkv's own KIVI-like 2-bit and TurboQuant-like 3-bit (``seqkv.kv.quantizers``) on the same KV:
  bits per token position and relative MSE.
* torchac 0.9.3 (CacheGen's arithmetic coder) coding the same token ids under the same exact logits
  that seqkv's ``lm`` coder uses. torchac takes int16 symbols and 16-bit CDFs with one count per
  symbol, so a 49,152-token vocabulary cannot be one torchac symbol; each token is coded as two
  (high part ``t >> 8`` over 192 values, then low part ``t & 255`` under the distribution
  conditioned on the high part), an exact factorisation of the same distribution. Bits/token and
  encode/decode tokens/s with the CDFs precomputed (softmax excluded, as for constriction in
  coder.py), round trip checked.
* seqkv ``lm`` payload: ``seqkv.coding.coder.encode_logits`` on the same logits (24-bit tables), bits/token
  and tokens/s, round trip checked.

What a library could not do is recorded with the reason (``status``), never silently skipped.
Writes benches/results/competitors.json (competitors-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from _summary import Competitors, Machine, machine, version, write_summary

ROOT = Path(__file__).resolve().parents[1]
TEXT = "/usr/share/common-licenses/Apache-2.0"
CHUNK = 32
PRECISION = 24
# torch's JIT C++ extensions (torchac, optimum-quanto) need ninja, which pip installs next to python.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


def competitors_machine() -> Machine:
    return machine(**{d: version(d) for d in ("transformers", "optimum-quanto", "hqq", "torchac")})


def run_chunks(model: Any, ids: Any, cache: Any) -> np.ndarray:
    """float32 logits [T, V] of ``ids`` [1, T] fed in chunks of CHUNK tokens into ``cache``."""
    import torch

    out = []
    with torch.inference_mode():
        for pos in range(0, ids.shape[1], CHUNK):
            out.append(model(input_ids=ids[:, pos : pos + CHUNK], past_key_values=cache, use_cache=True).logits[0])
    return torch.cat(out).float().numpy()


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def next_token_ce(logits: np.ndarray, ids: np.ndarray) -> float:
    """Mean -log2 p(ids[i+1] | logits[i]) over positions CHUNK-1 .. T-2 (after the first chunk)."""
    lp = log_softmax64(logits[CHUNK - 1 : -1])
    return float(-lp[np.arange(len(lp)), ids[CHUNK:]].mean() / np.log(2))


def tensor_bytes(q: Any) -> int:
    """Bytes a quantized-cache backend keeps for one quantized tensor (codes + side information)."""
    import torch

    if isinstance(q, tuple) and isinstance(q[1], dict):  # hqq: (packed codes, meta with scale and zero)
        codes, meta = q
        return codes.nbytes + sum(v.nbytes for v in meta.values() if torch.is_tensor(v))
    if hasattr(q, "_scale"):  # quanto WeightQBitsTensor: PackedTensor codes + scale + shift
        data = q._data._data if hasattr(q._data, "_data") else q._data
        return data.nbytes + q._scale.nbytes + q._shift.nbytes
    codes, scale = q  # fp8: (fp8 tensor, scalar scale)
    return codes.nbytes + scale.nbytes


def rel_mse(x: Any, y: Any) -> float:
    x64 = np.asarray(x, np.float64)
    return float(((x64 - np.asarray(y, np.float64)) ** 2).mean() / (x64**2).mean())


def quantized_cache_row(model: Any, ids: Any, exact_kv: list, exact_logits: np.ndarray, backend: str,
                        nbits: int | None) -> dict[str, Any]:
    import torch
    from transformers import QuantizedCache

    kwargs = {} if nbits is None else {"nbits": nbits}
    t0 = time.perf_counter()
    cache = QuantizedCache(backend, model.config, **kwargs)
    logits = run_chunks(model, ids, cache)
    run_s = time.perf_counter() - t0
    ids_np = ids[0].numpy()
    layer: Any = cache.layers[0]
    stored = 0
    err_k, err_v = [], []
    for k, v in exact_kv:
        fresh = type(layer)(**kwargs) if backend != "fp8" else type(layer)()
        fresh.lazy_initialization(k, v)
        parts = []
        for x, axis in ((k, getattr(fresh, "axis_key", None)), (v, getattr(fresh, "axis_value", None))):
            q = fresh._quantize(x.contiguous(), axis=axis) if axis is not None else fresh._quantize(x.contiguous())
            stored += tensor_bytes(q)
            parts.append(fresh._dequantize(q).float())
        err_k.append(rel_mse(k.numpy(), parts[0].numpy()))
        err_v.append(rel_mse(v.numpy(), parts[1].numpy()))
    T = ids.shape[1]
    agree = exact_logits[CHUNK - 1 : -1].argmax(1) == logits[CHUNK - 1 : -1].argmax(1)
    return {
        "library": {"quanto": "optimum-quanto", "hqq": "hqq", "fp8": "transformers"}[backend],
        "backend": backend, "nbits": nbits if nbits is not None else 8,
        "settings": "transformers defaults: q_group_size 64, axis_key 0, axis_value 0, residual_length 128"
        if backend != "fp8" else "per-tensor scale",
        "bits_per_token": 8 * stored / T,
        "relative_mse_keys": float(np.mean(err_k)), "relative_mse_values": float(np.mean(err_v)),
        "cross_entropy_bits": next_token_ce(logits, ids_np),
        "top1_agreement_with_exact": float(agree.mean()),
        "chunked_run_s": round(run_s, 2),
        "status": "measured",
    }


def seqkv_quantizer_rows(exact_kv: list, T: int) -> list[dict[str, Any]]:
    from seqkv.kv.quantizers import KIVI, TurboQuant

    rows = []
    tq, kv2 = TurboQuant(64, 3), KIVI(2, 32)
    for name, quant in (("seqkv TurboQuant-like 3-bit", "turbo3"), ("seqkv KIVI-like 2-bit", "kivi2")):
        stored, ek, ev = 0, [], []
        for k, v in exact_kv:
            k32, v32 = k.numpy().astype(np.float32), v.numpy().astype(np.float32)
            if quant == "turbo3":
                tk, tv = tq.quantize(k32), tq.quantize(v32)
                hk, hv = tq.dequantize(tk), tq.dequantize(tv)
                stored += tk.nbytes + tv.nbytes  # codes bit-packed (3 bits each) + one f32 norm per vector
            else:
                kk, kvv = kv2.quantize_keys(k32), kv2.quantize_values(v32)
                hk, hv = kv2.dequantize(kk), kv2.dequantize(kvv)
                stored += kk.nbytes + kvv.nbytes
            ek.append(rel_mse(k32, hk))
            ev.append(rel_mse(v32, hv))
        rows.append({"library": "seqkv", "backend": quant, "bits_per_token": 8 * stored / T,
                     "relative_mse_keys": float(np.mean(ek)), "relative_mse_values": float(np.mean(ev)),
                     "status": "measured (KV only; not run inside the model)"})
    return rows


def torchac_row(logits: np.ndarray, symbols: np.ndarray, repeats: int) -> dict[str, Any]:
    """torchac coding ``symbols`` under softmax(``logits``), each token as (high, low) symbols."""
    import torch
    import torchac

    n, V = logits.shape
    hi_n = (V + 255) // 256
    hi, lo = symbols >> 8, symbols & 255
    s_hi, s_lo = torch.from_numpy(hi.astype(np.int16)), torch.from_numpy(lo.astype(np.int16))
    x = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))

    def cdf(probs: Any) -> Any:
        c = torch.cat([torch.zeros(len(probs), 1, dtype=probs.dtype), torch.cumsum(probs, 1)], 1)
        return (c / c[:, -1:]).clamp(0, 1).float()

    def cdfs(lo_given: Any) -> tuple[Any, Any]:
        """(high CDFs [n, 193], low CDFs [n, 257] given the high part ``lo_given``) from the logits,
        in float64 like the softmax constriction gets in coder.py."""
        p = torch.softmax(x.double(), 1)
        p = torch.nn.functional.pad(p, (0, hi_n * 256 - V)).reshape(n, hi_n, 256)
        p_hi = p.sum(2)
        return cdf(p_hi), cdf(p[torch.arange(n), lo_given] / p_hi[torch.arange(n), lo_given][:, None])

    cdf_hi, cdf_lo = cdfs(torch.from_numpy(hi))
    enc_best = dec_best = enc_cdf_best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        b_hi = torchac.encode_float_cdf(cdf_hi, s_hi)
        b_lo = torchac.encode_float_cdf(cdf_lo, s_lo)
        enc_best = min(enc_best, time.perf_counter() - t)
        t = time.perf_counter()
        d_hi = torchac.decode_float_cdf(cdf_hi, b_hi)
        d_lo = torchac.decode_float_cdf(cdf_lo, b_lo)
        dec_best = min(dec_best, time.perf_counter() - t)
        t = time.perf_counter()
        ch, cl = cdfs(torch.from_numpy(hi))
        torchac.encode_float_cdf(ch, s_hi) + torchac.encode_float_cdf(cl, s_lo)
        enc_cdf_best = min(enc_cdf_best, time.perf_counter() - t)
    ok = bool(torch.equal(d_hi, s_hi) and torch.equal(d_lo, s_lo))
    return {
        "library": "torchac", "version": version("torchac"),
        "method": "two int16 symbols per token (high 192-way, low 256-way conditioned on high), 16-bit CDFs",
        "bytes": len(b_hi) + len(b_lo), "bits_per_token": 8 * (len(b_hi) + len(b_lo)) / n,
        "encode_tokens_per_s": n / enc_best, "decode_tokens_per_s": n / dec_best,
        "encode_from_logits_tokens_per_s": n / enc_cdf_best,
        "timing": "encode/decode: CDFs precomputed (softmax excluded); encode_from_logits: float64 softmax + "
                  "the two CDFs built with torch from the logits, then encode",
        "round_trip": ok, "status": "measured",
    }


def seqkv_lm_row(logits: np.ndarray, symbols: np.ndarray, repeats: int) -> dict[str, Any]:
    from seqkv.coding import coder

    x = np.ascontiguousarray(logits, dtype=np.float32)
    tables = coder.quantize_logits(x, PRECISION)
    best = {k: float("inf") for k in ("enc", "dec", "tenc", "tdec")}
    data = b""
    for _ in range(repeats):
        for k, enc in (("enc", lambda: coder.encode_logits(symbols, x, PRECISION)),
                       ("tenc", lambda: coder.encode(symbols, tables, PRECISION))):
            t = time.perf_counter()
            data = enc()
            best[k] = min(best[k], time.perf_counter() - t)
        for k, dec in (("dec", lambda: coder.decode_logits(data, x, PRECISION)),
                       ("tdec", lambda: coder.decode(data, tables, precision=PRECISION))):
            t = time.perf_counter()
            out = dec()
            best[k] = min(best[k], time.perf_counter() - t)
            if not np.array_equal(out, symbols):
                raise AssertionError(f"seqkv {k} round trip failed")
    n = len(symbols)
    return {"library": "seqkv", "version": version("seqkv"),
            "method": f"encode_logits, {PRECISION}-bit tables (payload only)",
            "bytes": len(data), "bits_per_token": 8 * len(data) / n,
            "encode_tokens_per_s": n / best["tenc"], "decode_tokens_per_s": n / best["tdec"],
            "encode_from_logits_tokens_per_s": n / best["enc"], "decode_from_logits_tokens_per_s": n / best["dec"],
            "timing": "encode/decode: tables precomputed (coder.encode/decode); *_from_logits: encode_logits/"
                      "decode_logits from the float32 logits (softmax and table built inside, all cores)",
            "round_trip": True, "status": "measured"}


def guarded(name: str, fn: Any) -> Any:
    """``fn()``, or a row saying why ``name`` could not be measured."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - recorded in the JSON as the reason
        traceback.print_exc()
        return {"library": name, "status": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256 tokens, 2 timing repeats")
    ap.add_argument("--tokens", type=int, default=None, help="tokens of the text (default 512, quick 256)")
    ap.add_argument("--out", default=None, help="default benches/results/competitors.json (-quick.json with --quick)")
    args = ap.parse_args()
    import torch

    from seqkv.integrations.models import load_smollm2

    T = args.tokens or (256 if args.quick else 512)
    T -= T % CHUNK
    repeats = 2 if args.quick else 5
    torch.manual_seed(0)
    t_start = time.perf_counter()
    res: dict[str, Any] = {"machine": competitors_machine(), "quick": args.quick, "text": TEXT, "tokens": T, "chunk": CHUNK}
    model, tok = load_smollm2()
    ids = tok(open(TEXT).read(), return_tensors="pt")["input_ids"][:, :T].to(torch.long)
    assert ids.shape[1] == T, f"{TEXT} has only {ids.shape[1]} tokens"
    from transformers import DynamicCache

    from _kv import cache_layers

    cache = DynamicCache()
    t0 = time.perf_counter()
    exact_logits = run_chunks(model, ids, cache)
    exact_kv = [(k.detach().clone(), v.detach().clone()) for k, v in cache_layers(cache)]
    ids_np = ids[0].numpy()
    res["model"] = "SmolLM2-135M-Instruct (Q4_1 GGUF de-quantized to fp32), transformers, CPU"
    res["bf16_bits_per_token"] = 16 * sum(k.numel() + v.numel() for k, v in exact_kv) / T
    res["exact"] = {"cross_entropy_bits": next_token_ce(exact_logits, ids_np),
                    "chunked_run_s": round(time.perf_counter() - t0, 2)}
    rows = []
    for backend, bits in (("quanto", 2), ("quanto", 4), ("hqq", 2), ("hqq", 3), ("hqq", 4), ("fp8", None)):
        print(f"QuantizedCache {backend} {bits}", file=sys.stderr, flush=True)
        row = guarded({"quanto": "optimum-quanto", "hqq": "hqq", "fp8": "transformers"}[backend],
                      lambda: quantized_cache_row(model, ids, exact_kv, exact_logits, backend, bits))
        row.setdefault("backend", backend)
        row.setdefault("nbits", bits if bits is not None else 8)
        rows.append(row)
    rows += seqkv_quantizer_rows(exact_kv, T)
    res["kv_quantizers"] = rows
    # Coders: the next-token ids 1..T-1 under the logits of positions 0..T-2.
    sym, lg = ids_np[1:].astype(np.int64), exact_logits[:-1]
    res["coders_cross_entropy_bits"] = float(-log_softmax64(lg)[np.arange(len(sym)), sym].mean() / np.log(2))
    res["coders"] = [guarded("torchac", lambda: torchac_row(lg, sym, repeats)), seqkv_lm_row(lg, sym, repeats)]
    res["seconds"] = round(time.perf_counter() - t_start, 1)
    out = Path(args.out) if args.out else ROOT / "benches" / "results" / (
        "competitors-quick.json" if args.quick else "competitors.json")
    write_summary(out, Competitors, res, indent=1)
    print(f"tokens {T}, bf16 {res['bf16_bits_per_token']:,.0f} bits/token, exact CE {res['exact']['cross_entropy_bits']:.3f}")
    print(f"{'format':<28} {'bits/token':>12} {'relMSE K':>9} {'relMSE V':>9} {'ΔCE':>8} {'top-1':>6}")
    for r in rows:
        if "bits_per_token" not in r:
            print(f"{r['library'] + ' ' + str(r.get('backend')):<28} {r['status']}")
            continue
        ce = r.get("cross_entropy_bits")
        print(f"{r['library'] + ' ' + r['backend'] + ' ' + str(r.get('nbits', '')):<28} {r['bits_per_token']:>12,.0f} "
              f"{r['relative_mse_keys']:>9.4f} {r['relative_mse_values']:>9.4f} "
              f"{'' if ce is None else format(ce - res['exact']['cross_entropy_bits'], '+.3f'):>8} "
              f"{'' if ce is None else format(r['top1_agreement_with_exact'], '.3f'):>6}")
    print(f"coders, CE {res['coders_cross_entropy_bits']:.4f} bits/token:")
    for r in res["coders"]:
        print(f"  {r['library']:<8} " + (f"{r['bits_per_token']:.4f} bits/token, encode {r['encode_tokens_per_s']:,.0f} "
              f"decode {r['decode_tokens_per_s']:,.0f} tokens/s (tables precomputed), encode from logits "
              f"{r['encode_from_logits_tokens_per_s']:,.0f} tokens/s, round trip {r['round_trip']}"
              if "bits_per_token" in r else r["status"]))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
