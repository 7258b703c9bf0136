"""Stress bench: the 16-thread Trie and SessionStore workloads of tests/test_stress.py at a
larger size (10x the CI test's operations per thread, 5x its sessions), the memory bound of
tests/test_memory_bounds.py over 10^6 inserted tokens, a SQLite SessionStore's puts and cold
exact gets per second (every restore verified: tokens and the KV hashes recorded at put), and
sessions lost when a writer process is SIGKILLed mid re-put (the child of
tests/store/test_store_integrity.py's SIGKILL test; zero expected).

Every workload checks itself against its reference model (nothing lost, nothing wrong) and runs
under a deadline (DEADLINE_S) that fails it on a deadlock. Prints a table and writes
benches/results/stress.json (stress-quick.json with --quick, or --out PATH)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the workloads and their checks are the tests' own (tests/store/test_stress.py, tests/trie/test_memory_bounds.py)
sys.path[:0] = [str(ROOT / "tests" / "store"), str(ROOT / "tests" / "trie")]

import seqkv  # noqa: E402
from _summary import Stress, machine, write_summary  # noqa: E402
import test_memory_bounds as mb  # noqa: E402
import test_store_integrity as integrity  # noqa: E402
import test_stress as ts  # noqa: E402


DEADLINE_S = 900.0  # per workload: a bound that fails the run on a hang, not a performance figure
KILL_DELAYS_S = (0.0, 0.05, 0.11, 0.17, 0.23, 0.29)  # how long the writer goes on before each SIGKILL


def store_rates(model, sessions: int, path: str) -> dict:
    """Puts, then cold exact gets, of ``sessions`` chat-like sessions sharing a system prompt, on
    a SQLite SessionStore; each get checked against the tokens put (the exact restore checks the
    KV against the hashes recorded at put itself)."""
    import numpy as np

    store = seqkv.SessionStore(model, codec="plt", backend=path, capacity_bytes=None)
    system = np.random.default_rng(7).integers(0, 512, 64)
    tokens = {f"chat-{i}": np.concatenate([system, np.random.default_rng(i).integers(0, 512, 200)])
              for i in range(sessions)}
    t0 = time.perf_counter()
    for sid, toks in tokens.items():
        store.put(sid, toks)
    put_s = time.perf_counter() - t0
    store.drop_caches()
    verified = 0
    t0 = time.perf_counter()
    for sid, toks in tokens.items():
        got, _ = store.get(sid, mode="exact", promote=False)
        verified += bool(np.array_equal(got, toks))
    get_s = time.perf_counter() - t0
    store.close()
    if verified != sessions:
        raise SystemExit(f"{sessions - verified} of {sessions} restores differ from the tokens put")
    return {"puts": sessions, "puts_per_s": sessions / put_s, "gets": sessions, "gets_per_s": sessions / get_s,
            "restores_verified": verified}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-store", action="store_true", help="skip the SessionStore workload (needs transformers)")
    ap.add_argument("--out", default=None, help="default benches/results/stress.json (stress-quick.json with --quick)")
    args = ap.parse_args()
    info = machine()
    q = args.quick
    rows = []
    for cap in (None, 5_000):
        t0 = time.perf_counter()
        r = ts.trie_workload(seqkv.Trie(max_tokens=cap), ops=2_000 if q else 20_000, seed=7, deadline_s=DEADLINE_S)
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
    if r["peak_len"] > cap or grown > bound:
        raise SystemExit(f"memory bound broken: RSS grew {grown} B (bound {bound} B), peak len {r['peak_len']} (cap {cap})")
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
        t0 = time.perf_counter()
        r = ts.store_workload(store, sessions=12 if q else 60, vocab=512, seed=7, deadline_s=DEADLINE_S)
        rows.append({"workload": "SessionStore(plt) 16 threads", "seconds": time.perf_counter() - t0, **r})
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            r = store_rates(model, 40 if q else 400, f"{tmp}/rates.sqlite")
            rows.append({"workload": "SessionStore(plt, SQLite) puts, cold exact gets", "seconds": time.perf_counter() - t0, **r})
            t0 = time.perf_counter()
            r = integrity.kill_reputters(model, f"{tmp}/kills.sqlite", KILL_DELAYS_S[:2] if q else KILL_DELAYS_S * 4)
            rows.append({"workload": "SIGKILLed re-putting writer (SQLite)", "seconds": time.perf_counter() - t0, **r})
            if r["sessions_lost"]:
                raise SystemExit(f"sessions lost under SIGKILL: {r}")
    for row in rows:
        print(f"{row['workload']:<45} {row['seconds']:8.2f} s  " +
              " ".join(f"{k}={v}" for k, v in row.items() if k not in ("workload", "seconds")))
    out = Path(args.out) if args.out else ROOT / "benches" / "results" / ("stress-quick.json" if q else "stress.json")
    write_summary(out, Stress, {"machine": info, "quick": q, "threads": ts.THREADS, "deadline_s": DEADLINE_S,
                                "all_checks_passed": True, "rows": rows}, indent=1)


if __name__ == "__main__":
    main()
