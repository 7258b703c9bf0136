"""Compression benchmark: a session's KV cache stored as its tokens, coded under SmolLM2.

    python benches/compression.py [--quick] [--text FILE ...] [--tokens N]

Per text (default: license texts from /usr/share/common-licenses; quick: 2 texts × ~256 tokens,
full: 3 texts × ~1,000 tokens), the first N tokens are one session:

- ``cross_entropy_bits``: the model's cost of the coded tokens, mean -log2 p under the float32
  softmax (first token after the start token <|endoftext|> included);
  ``lm_table_bits_per_token``: the same under the integer tables the coder uses;
- ``lm_bits_per_token``: coded payload bits / token; ``lm_container_bits_per_token``: the whole
  stream (header, fingerprint, profile, framing, checksums); ``lm_overhead_bits_per_token`` =
  payload - cross-entropy (target ≤ 0.02);
- ``robust_bits_per_token``: ``lm-robust`` (ε = ``robust_epsilon``) encoded from 64-token prefill
  chunks; ``robust_decode_exact``: its stream decoded by single steps (a different schedule)
  gave the tokens back (checked on the first text, with ``robust_epsilon_sweep``: bits/token
  for several ε);
- ``plt_bits_per_token`` (no model, no primer) and ``raw_bits_per_token``;
- ``ratio_vs_bf16`` / ``ratio_vs_3bit``: KV bits per token (184,320 / 34,560 for SmolLM2) over
  ``lm_bits_per_token``; ``*_with_header`` variants use the container size;
- ``lm_encode_tokens_per_s`` / ``lm_decode_tokens_per_s``: ``lm`` under its default logits
  source (``lm_source``: the batch-invariant engine for SmolLM2, bf16 weights — encode in
  prefill passes, decode by single steps, batch 1); ``multi_stream``: the lm streams of all
  texts decoded together (``decode_batch``, one batched engine step per position);
- ``restore_ms``: decode + recompute (one prefill); ``recompute_ms`` the prefill alone;
  ``kv_load_ms``: reading the bf16 KV of the same session from a file and building the cache;
- ``max_abs_kv_error``: faithful restore vs the session's original KV (computed in 128-token
  prefill chunks, then the last 16 tokens by single steps, as a server would);
  ``greedy_agreement``: 16-token greedy continuations from both caches, fraction equal;
  ``exact_verified``: replaying the original schedule gives the recorded per-layer hashes;
- ``by_position``: table bits and cross-entropy per token by position bucket (does coding get
  cheaper with more context?).

Writes benches/results/compression.json (compression-quick.json with --quick). Timings are
wall-clock on a shared machine: ``machine.loadavg_start`` says how busy it was.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

from _summary import Compression, machine, write_summary  # noqa: E402

from seqkv import codecs  # noqa: E402
from seqkv.integrations import transformers as hf
from seqkv.integrations.models import load_smollm2, numerics_profile  # noqa: E402

LICENSES = "/usr/share/common-licenses"
QUICK_TEXTS = ["GPL-3", "Apache-2.0"]
FULL_TEXTS = ["GPL-3", "Apache-2.0", "MPL-2.0"]
BUCKETS = [0, 16, 64, 128, 256, 512, 1024, 1 << 30]
ROBUST_EPS = 1e-3


def _bucket_table(bits: np.ndarray, ce: np.ndarray) -> list[dict[str, Any]]:
    out = []
    for lo, hi in zip(BUCKETS[:-1], BUCKETS[1:]):
        if lo >= bits.size:
            break
        sel = slice(lo, min(hi, bits.size))
        out.append(
            {
                "positions": f"{lo}-{min(hi, bits.size) - 1}",
                "tokens": int(bits[sel].size),
                "table_bits_per_token": float(bits[sel].mean()),
                "cross_entropy_bits": float(ce[sel].mean()),
            }
        )
    return out


def bench_text(model: Any, tok: Any, path: str, n_tokens: int, check_robust_decode: bool) -> dict[str, Any]:
    with open(path, encoding="utf-8", errors="replace") as f:
        ids = np.array(tok(f.read())["input_ids"][:n_tokens], dtype=np.int64)
    n = int(ids.size)
    kv16 = hf.kv_bits_per_token(model, 16)
    kv3 = hf.kv_bits_per_token(model, 3)
    res: dict[str, Any] = {"text": os.path.basename(path), "tokens": n}

    # the session's original KV, as a server computes it
    steps = min(16, n - 1)
    schedule = [128] * ((n - steps) // 128) + ([(n - steps) % 128] if (n - steps) % 128 else []) + [1] * steps
    original, _ = hf.compute_cache(model, ids, schedule)
    hashes = hf.layer_hashes(original)

    # lm: encode (engine: prefill passes) and decode by single steps
    lm = codecs.get("lm", model=model, tokenizer=tok)
    res["lm_source"] = type(lm.source).__name__
    t0 = time.perf_counter()
    stream, st = lm.encode_with_stats(ids)
    enc_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = lm.decode(stream)
    dec_s = time.perf_counter() - t0
    assert np.array_equal(back, ids), "lm round trip failed"
    ce = -st.extra["token_log2p"]
    bits = st.extra["token_bits"]
    lm_bpt = st.payload_bits / n
    res.update(
        cross_entropy_bits=float(ce.mean()),
        lm_table_bits_per_token=float(bits.mean()),
        lm_bits_per_token=lm_bpt,
        lm_container_bits_per_token=st.container_bits / n,
        lm_overhead_bits_per_token=lm_bpt - float(ce.mean()),
        lm_encode_tokens_per_s=n / enc_s,
        lm_decode_tokens_per_s=n / dec_s,
    )
    res["_stream"], res["_ids"] = stream, ids

    # lm-robust: encode from prefill chunks (fast), decode by steps
    robust = codecs.get("lm-robust", model=model, tokenizer=tok, epsilon=ROBUST_EPS, encode_chunk=64)
    t0 = time.perf_counter()
    rstream, rst = robust.encode_with_stats(ids)
    renc_s = time.perf_counter() - t0
    res.update(
        robust_epsilon=ROBUST_EPS,
        robust_bin_unit=robust.bins.unit,
        robust_bits_per_token=rst.payload_bits / n,
        robust_overhead_vs_lm_bits_per_token=rst.payload_bits / n - lm_bpt,
        robust_encode_tokens_per_s=n / renc_s,
        robust_decode_exact=None,
    )
    if check_robust_decode:
        sweep = {}
        for eps in (1e-5, 1e-4, 3e-4, 1e-3, 3e-3):
            codec = codecs.get("lm-robust", model=model, tokenizer=tok, epsilon=eps, encode_chunk=64)
            _, sst = codec.encode_with_stats(ids)
            sweep[f"{eps:g}"] = {"bin_unit": codec.bins.unit, "bits_per_token": sst.payload_bits / n,
                                 "overhead_vs_lm": sst.payload_bits / n - lm_bpt}
        res["robust_epsilon_sweep"] = sweep
        t0 = time.perf_counter()
        res["robust_decode_exact"] = bool(np.array_equal(robust.decode(rstream), ids))
        res["robust_decode_tokens_per_s"] = n / (time.perf_counter() - t0)

    # no-model codecs
    if "plt" in codecs.available():
        plt = codecs.get("plt", vocab_size=lm.vocab_size)
        pstream, pst = plt.encode_with_stats(ids)
        assert np.array_equal(plt.decode(pstream), ids)
        res["plt_bits_per_token"] = pst.payload_bits / n
        res["plt_container_bits_per_token"] = pst.container_bits / n
    else:
        res["plt_bits_per_token"] = None
        res["plt_reason"] = "the plt codec is not available in this build"
    raw = codecs.get("raw", vocab_size=lm.vocab_size)
    _, rawst = raw.encode_with_stats(ids)
    res["raw_bits_per_token"] = rawst.payload_bits / n

    res.update(
        ratio_vs_bf16=kv16 / lm_bpt,
        ratio_vs_3bit=kv3 / lm_bpt,
        ratio_vs_bf16_with_header=kv16 / (st.container_bits / n),
        ratio_vs_3bit_with_header=kv3 / (st.container_bits / n),
    )

    # restore: decode + recompute, vs bf16 KV from a file
    t0 = time.perf_counter()
    restored, _ = hf.compute_cache(model, ids)
    recompute_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path_kv = os.path.join(tmp, "session.kv")
        with open(path_kv, "wb") as f:
            f.write(hf.kv_to_bf16_bytes(original))
        t0 = time.perf_counter()
        with open(path_kv, "rb") as f:
            hf.kv_from_bf16_bytes(model, f.read())
        load_s = time.perf_counter() - t0
        kv_file_bytes = os.path.getsize(path_kv)
    res.update(
        restore_ms=1e3 * (dec_s + recompute_s),
        recompute_ms=1e3 * recompute_s,
        kv_load_ms=1e3 * load_s,
        kv_file_bytes=kv_file_bytes,
        stream_bytes=len(stream),
    )

    # fidelity
    res["max_abs_kv_error"] = hf.max_abs_diff(restored, original)
    a = hf.greedy_continuation(model, ids, original, 16)
    b = hf.greedy_continuation(model, ids, restored, 16)
    res["greedy_agreement"] = sum(x == y for x, y in zip(a, b)) / max(1, len(a))
    replay, _ = hf.compute_cache(model, ids, schedule)
    res["exact_verified"] = hf.layer_hashes(replay) == hashes and hf.caches_equal(replay, original)
    res["schedule"] = f"{len(schedule) - steps} prefill chunk(s) of <=128, then {steps} single steps"
    res["by_position"] = _bucket_table(bits, ce)
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--text", nargs="+", help="text files (default: license texts)")
    parser.add_argument("--tokens", type=int, help="tokens per text (quick 256, full 1000)")
    parser.add_argument("--out", help="output JSON path")
    parser.add_argument(
        "--torch-threads", type=int, default=1,
        help="torch threads for the transformers parts (default 1: its two-thread kernels stall whenever "
        "another process holds a core of a 2-core machine)",
    )
    args = parser.parse_args(argv)
    n_tokens = args.tokens or (256 if args.quick else 1000)
    texts = args.text or [os.path.join(LICENSES, t) for t in (QUICK_TEXTS if args.quick else FULL_TEXTS)]
    out = Path(args.out) if args.out else ROOT / "benches" / "results" / (
        "compression-quick.json" if args.quick else "compression.json"
    )
    host = machine()
    t0 = time.perf_counter()
    model, tok = load_smollm2()
    import torch

    torch.set_num_threads(max(1, args.torch_threads))
    results = []
    for i, path in enumerate(texts):
        print(f"[compression] {os.path.basename(path)}: {n_tokens} tokens ...", file=sys.stderr, flush=True)
        r = bench_text(model, tok, path, n_tokens, check_robust_decode=(i == 0))
        print(
            f"  CE {r['cross_entropy_bits']:.3f}  lm {r['lm_bits_per_token']:.3f} (+{r['lm_overhead_bits_per_token']:.3f})"
            f"  robust {r['robust_bits_per_token']:.3f}  plt {r['plt_bits_per_token']}  raw {r['raw_bits_per_token']:.1f}"
            f"  ×bf16 {r['ratio_vs_bf16']:,.0f}  enc {r['lm_encode_tokens_per_s']:.1f} tok/s"
            f"  dec {r['lm_decode_tokens_per_s']:.1f} tok/s  restore {r['restore_ms']:.0f} ms"
            f"  kv load {r['kv_load_ms']:.1f} ms  agree {r['greedy_agreement']:.2f}  exact {r['exact_verified']}",
            file=sys.stderr,
            flush=True,
        )
        results.append(r)
    # the lm streams of all texts decoded together (one batched step per position)
    lm = codecs.get("lm", model=model, tokenizer=tok)
    streams = [r.pop("_stream") for r in results]
    texts_ids = [r.pop("_ids") for r in results]
    t1 = time.perf_counter()
    together = lm.decode_batch(streams)
    t_batch = time.perf_counter() - t1
    total = sum(int(r["tokens"]) for r in results)
    multi = {
        "streams": len(streams),
        "tokens": total,
        "decode_tokens_per_s": total / t_batch,
        "one_by_one_decode_tokens_per_s": total / sum(r["tokens"] / r["lm_decode_tokens_per_s"] for r in results),
        "same_tokens": bool(all(np.array_equal(t, i) for t, i in zip(together, texts_ids))),
    }
    prof = numerics_profile(model)
    doc = {
        "bench": "compression",
        "quick": bool(args.quick),
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF de-quantized to fp32), CPU",
        "lm_source": results[0]["lm_source"] if results else None,
        "texts": results,
        "multi_stream": multi,
        "summary": {
            "lm_bits_per_token": float(np.mean([r["lm_bits_per_token"] for r in results])),
            "cross_entropy_bits": float(np.mean([r["cross_entropy_bits"] for r in results])),
            "lm_overhead_bits_per_token_max": float(max(r["lm_overhead_bits_per_token"] for r in results)),
            "robust_overhead_vs_lm_bits_per_token": float(
                np.mean([r["robust_overhead_vs_lm_bits_per_token"] for r in results])
            ),
            "ratio_vs_bf16_min": float(min(r["ratio_vs_bf16"] for r in results)),
            "ratio_vs_3bit_min": float(min(r["ratio_vs_3bit"] for r in results)),
            "greedy_agreement_min": float(min(r["greedy_agreement"] for r in results)),
            "exact_verified_all": all(r["exact_verified"] for r in results),
        },
        "machine": {**host, **prof},
        "seconds": time.perf_counter() - t0,
    }
    write_summary(out, Compression, doc)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
