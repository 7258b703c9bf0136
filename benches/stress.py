"""Stress bench: the 16-thread Trie and SessionStore workloads of tests/test_stress.py at a
larger size, and the memory bound of tests/test_memory_bounds.py over 10^6 inserted tokens.

Prints a table and writes benches/results/stress.json (stress-quick.json with --quick)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import seqkv  # noqa: E402
import test_memory_bounds as mb  # noqa: E402
import test_stress as ts  # noqa: E402


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "usable_cpus": len(os.sched_getaffinity(0)), "python": platform.python_version()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-store", action="store_true", help="skip the SessionStore workload (needs transformers)")
    args = ap.parse_args()
    q = args.quick
    rows = []
    for cap in (None, 5_000):
        t0 = time.perf_counter()
        r = ts.trie_workload(seqkv.Trie(max_tokens=cap), ops=2_000 if q else 20_000, seed=7)
        rows.append({"workload": f"trie 16 threads max_tokens={cap}", "seconds": time.perf_counter() - t0, **r})
    cap = 50_000
    n = 100_000 if q else 1_000_000
    trie = seqkv.Trie(max_tokens=cap)
    mb.fill(trie, 50_000, key_len=32, seed=2, check_every=50)
    r0 = mb.rss_bytes()
    t0 = time.perf_counter()
    r = mb.fill(trie, n, key_len=32, seed=3, check_every=50)
    grown = mb.rss_bytes() - r0
    bound = cap * mb.BYTES_PER_TOKEN_BOUND + mb.RSS_SLACK
    assert r["peak_len"] <= cap and grown <= bound, (grown, bound, r)
    rows.append({"workload": f"memory: {n} tokens into max_tokens={cap}", "seconds": time.perf_counter() - t0,
                 "rss_growth_bytes": grown, "rss_bound_bytes": bound, **r})
    if not args.no_store:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             head_dim=16, tie_word_embeddings=True)).eval()
        store = seqkv.SessionStore(model, codec="plt", record_hashes=False)
        ts.DEADLINE_S = 600.0
        t0 = time.perf_counter()
        r = ts.store_workload(store, sessions=12 if q else 60, vocab=512, seed=7)
        rows.append({"workload": "SessionStore(plt) 16 threads", "seconds": time.perf_counter() - t0, **r})
    for row in rows:
        print(f"{row['workload']:<45} {row['seconds']:8.2f} s  " +
              " ".join(f"{k}={v}" for k, v in row.items() if k not in ("workload", "seconds")))
    out = ROOT / "benches" / "results" / ("stress-quick.json" if q else "stress.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": machine_info(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
