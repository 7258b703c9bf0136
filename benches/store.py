"""Store benchmark: backend put/get throughput, bytes per session per tier, restore latency.

    python benches/store.py [--quick] [--out benches/results/store.json] [--dir DIR] [--no-ops] [--no-tiers] [--no-shared]

Writes ``benches/results/store.json``:

* ``ops``: put/get operations per second for the memory, SQLite (``synchronous`` full and
  normal) and Redis backends (a local ``redis-server`` is started when the binary exists), for a
  small record (1 KiB container, about a 2,000-token session at 4 bits/token, plus typical
  metadata) and a large one (64 KiB, e.g. with a residual), from 1 and 4 threads;
* ``tiers``: bytes per session in each tier at context lengths 256, 1024 and 4096, measured
  through ``SessionStore`` on SmolLM2 (fp32; 30 layers, 3 KV heads, head_dim 64): hot = the
  kept KV (fp32; bf16 = half; one session alone: nothing shared), warm = the 3-bit TurboQuant codes and norms, cold = the
  session's record (plt codec; lm estimated from ``benches/results/compression.json``);
* ``restore``: ``SessionStore.get`` latency per tier and context length (same model): hot (a
  copy of the kept cache), warm (dequantize), cold faithful (fetch + decode tokens + one
  prefill), cold exact (replay + hash check), and cold exact through the batch-invariant
  engine (zero residual; contexts up to ``--engine-max``), plus ``put`` and the warm error;
* ``shared_prefix``: the hot tier's resident bytes when sessions share a system prompt (SmolLM2,
  ``--shared-sessions`` sessions of a ``--system-tokens`` prompt plus a distinct 64-token tail,
  real text): ``hot_unique_bytes`` (what the hot tier's KV pages and private tails hold: shared
  pages once), ``hot_logical_bytes`` (a KV copy per session, as before the paged hot tier),
  pages and pages shared, ``put_ms``/``get_hot_ms``/``get_prefix_ms`` (median per session), for
  the KV computed by transformers (one prefill per session: a prefix's last bits may differ with
  the session's length, and such pages are not shared) and by the batch-invariant engine;
* ``machine``: CPU, cores, OS, Python, SQLite and Redis versions, the file system under test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from _summary import Machine, Store, machine, write_summary  # noqa: E402

from seqkv.backends import MemoryBackend, SessionRecord, SQLiteBackend, open_backend  # noqa: E402
from seqkv.backends.testing import local_redis_server, redis_server_binary  # noqa: E402

LAYERS, KV_HEADS, HEAD_DIM, VOCAB = 30, 3, 64, 49152  # SmolLM2-135M
CONTEXTS = (256, 1024, 4096)


def machine_info(workdir: Path) -> Machine:
    fs = None
    try:
        out = subprocess.run(["df", "-T", str(workdir)], capture_output=True, text=True, check=True).stdout
        fs = out.splitlines()[1].split()[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        pass
    redis_version = None
    binary = redis_server_binary()
    if binary:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
        redis_version = out.strip()
    return machine(sqlite=sqlite3.sqlite_version, redis_server=redis_version, workdir_filesystem=fs)

def make_record(i: int, container_bytes: int) -> SessionRecord:
    seed = hashlib.sha256(b"%d" % i).digest()
    body = (seed * (container_bytes // 32 + 1))[:container_bytes]
    meta = {
        "tokens": 2048,
        "codec": "lm",
        "prefix": {"parent": "system-prompt", "length": 120},
        "schedule": [121, 1, 1],
        "layer_hashes": seed.hex()[:16],
        "tier": "cold",
        "sizes": {"container": container_bytes, "hot": 2048 * LAYERS * 2 * KV_HEADS * HEAD_DIM * 4},
    }
    return SessionRecord(body, meta)


def timed_threads(n_threads: int, n_ops: int, op: Callable[[int], None]) -> float:
    """Run op(0..n_ops-1) spread over n_threads; returns ops per second."""
    barrier = threading.Barrier(n_threads + 1)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        barrier.wait()
        try:
            for i in range(t, n_ops, n_threads):
                op(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    barrier.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return n_ops / elapsed


def bench_backend(factory: Callable[[], Any], n_ops: int, sizes: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, nbytes in sizes.items():
        records = [make_record(i, nbytes) for i in range(n_ops)]
        for threads in (1, 4):
            with factory() as b:
                put = timed_threads(threads, n_ops, lambda i: b.put(f"s{i}", records[i]))
                get = timed_threads(threads, n_ops, lambda i: b.get(f"s{(i * 7919) % n_ops}"))
                assert b.get("s0") == records[0]
                if hasattr(b, "clear"):
                    b.clear()
            out[f"{label}_{threads}t"] = {
                "record_bytes": records[0].nbytes,
                "threads": threads,
                "ops": n_ops,
                "put_ops_per_s": round(put, 1),
                "get_ops_per_s": round(get, 1),
            }
    return out


def bench_ops(workdir: Path, quick: bool) -> dict[str, Any]:
    sizes = {"small": 1024, "large": 64 * 1024}
    n_fast = 500 if quick else 5000
    n_sync = 200 if quick else 1000
    results: dict[str, Any] = {}
    results["memory"] = bench_backend(MemoryBackend, n_fast, sizes)
    counter = iter(range(10**6))

    def sqlite_factory(sync: str) -> Callable[[], Any]:
        return lambda: SQLiteBackend(workdir / f"bench-{sync}-{next(counter)}.sqlite", synchronous=sync)

    results["sqlite_full"] = bench_backend(sqlite_factory("full"), n_sync, sizes)
    results["sqlite_normal"] = bench_backend(sqlite_factory("normal"), n_fast, sizes)
    if redis_server_binary() is None:
        results["redis"] = {"skipped": "no redis-server binary (apt-get install redis-server)"}
    else:
        try:
            import redis  # noqa: F401
        except ImportError:
            results["redis"] = {"skipped": "redis-py not installed (seqkv[redis])"}
        else:
            with local_redis_server() as url:
                results["redis"] = bench_backend(
                    lambda: open_backend(f"{url}?namespace=bench{next(counter)}"), n_fast, sizes
                )
                results["redis"]["server"] = "local redis-server, --save '' --appendonly no, 127.0.0.1"
    return results


def real_tokens(n: int) -> tuple[np.ndarray | None, str | None]:
    """``n`` SmolLM2 token ids of license text, or ``(None, reason)``."""
    try:
        from seqkv.cli.models import smollm2_tokenizer

        tok = smollm2_tokenizer()
    except Exception as exc:  # noqa: BLE001 - reported in the results
        return None, f"SmolLM2 tokenizer unavailable: {exc}"
    text = "".join(p.read_text(errors="replace") for p in sorted(Path("/usr/share/common-licenses").glob("*"))[:8]
                   if p.is_file())
    ids = np.asarray(tok.encode(text, add_special_tokens=False).ids, dtype=np.uint32)
    if ids.size < n:
        ids = np.resize(ids, n)
    return ids[:n], None


def lm_bits_per_token() -> tuple[float | None, str]:
    path = ROOT / "benches" / "results" / "compression.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, "benches/results/compression.json not present"
    values = []

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if isinstance(x.get("lm_bits_per_token"), (int, float)):
                values.append(float(x["lm_bits_per_token"]))
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(data)
    if not values:
        return None, "no lm_bits_per_token in compression.json"
    return float(np.mean(values)), "mean lm_bits_per_token of benches/results/compression.json"


def _median_ms(fn: Callable[[], Any], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(1000 * float(np.median(times)), 2)


def bench_tiers(workdir: Path, quick: bool, contexts: tuple[int, ...], engine_max: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore latency per tier and bytes per session per tier, through ``SessionStore`` on
    SmolLM2 (fp32, CPU, torch at one thread), at each context length in ``contexts``."""
    import torch

    from seqkv.integrations import transformers as hf
    from seqkv.integrations.models import load_smollm2
    from seqkv.store import SessionStore

    torch.set_num_threads(1)
    model, _ = load_smollm2()
    tokens, tok_reason = real_tokens(max(contexts))
    if tokens is None:
        raise SystemExit(tok_reason)
    lm_bpt, lm_source = lm_bits_per_token()
    tiers: dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct (fp32): 30 layers, 3 KV heads, head_dim 64",
        "model_shape": {"layers": LAYERS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM},
        "cold_codec": "plt (SQLite backend); lm estimated from compression.json",
    }
    restore: dict[str, Any] = {
        "how": (
            "SessionStore.get on SmolLM2 (fp32, CPU, torch 1 thread; the engine at its own threads), median of "
            "reps: hot = copy of the kept DynamicCache; warm = unpack + dequantize the 3-bit TurboQuant codes "
            "(torch matmul with the ±1 Hadamard matrix); cold = fetch the record from SQLite, decode the tokens (plt), one prefill (faithful) or "
            "the recorded schedule + hash check (exact); cold_exact_engine_ms = exact restore computed by the "
            "batch-invariant engine (f32 weights), zero residual"
        ),
        "torch_threads": torch.get_num_threads(),
    }
    for n in contexts:
        toks = tokens[:n]
        reps_fast = 3 if quick else 5
        reps_slow = 1 if (quick or n >= 2048) else 2
        store = SessionStore(model, codec="plt", backend=str(workdir / f"tiers-{n}.sqlite"), capacity_bytes=1 << 34)
        t0 = time.perf_counter()
        store.put("s", toks)
        put_ms = round(1000 * (time.perf_counter() - t0), 1)
        hot_bytes = store.tier_stats()["tiers"]["hot"]["bytes"]
        rest: dict[str, Any] = {"put_ms": put_ms}
        rest["hot_ms"] = _median_ms(lambda: store.get("s", promote=False), reps_fast)
        store.demote("s", "warm")
        warm_bytes = store.tier_stats()["tiers"]["warm"]["bytes"]
        _, warm_cache = store.get("s", promote=False)
        ref = store.get("s", mode="exact", promote=False)[1]
        rest["warm_ms"] = _median_ms(lambda: store.get("s", promote=False), reps_fast)
        store.demote("s", "cold")

        def cold(mode: str) -> None:
            store.drop_caches()  # decoded tokens too: the restore reads the record
            store.get("s", mode=mode, promote=False)

        rest["cold_faithful_ms"] = _median_ms(lambda: cold("faithful"), reps_slow)
        rest["cold_exact_ms"] = _median_ms(lambda: cold("exact"), reps_slow)
        def tokens_only() -> None:
            store.drop_caches()
            store.tokens("s")

        rest["cold_tokens_only_ms"] = _median_ms(tokens_only, reps_fast)
        err = hf.max_abs_diff(warm_cache, ref)
        rest["warm_max_abs_err"] = round(err, 5)
        if n <= engine_max:
            eng_store = SessionStore(model, codec="plt", engine="auto", capacity_bytes=0)
            eng_store.put("s", toks, schedule=[1] * 16 + [n - 16])
            rest["cold_exact_engine_ms"] = _median_ms(lambda: eng_store.get("s", mode="exact", promote=False), reps_slow)
            eng_store.close()
        else:
            rest["cold_exact_engine_ms"] = None
            rest["cold_exact_engine_reason"] = f"skipped above {engine_max} tokens to keep the run short"
        record_bytes = store.stats()["record_bytes"]
        tiers[str(n)] = {
            "hot_bytes_fp32": hot_bytes,
            "hot_bytes_bf16": hot_bytes // 2,
            "warm_bytes_turboquant3": warm_bytes,
            "cold_bytes_plt_record": record_bytes,
            "cold_bytes_lm_estimate": None if lm_bpt is None else int(np.ceil(n * lm_bpt / 8)),
            "cold_lm_source": lm_source,
            "hot_over_warm": round(hot_bytes / warm_bytes, 2),
            "hot_over_cold_plt": round(hot_bytes / record_bytes, 1),
        }
        restore[str(n)] = rest
        store.close()
        print(f"context {n}: hot {rest['hot_ms']} ms, warm {rest['warm_ms']} ms, cold {rest['cold_faithful_ms']} ms "
              f"(exact {rest['cold_exact_ms']} ms, engine {rest['cold_exact_engine_ms']} ms); bytes hot {hot_bytes}, "
              f"warm {warm_bytes}, cold {record_bytes}", flush=True)
    return tiers, restore


def bench_shared_prefix(quick: bool, n_sessions: int, system_tokens: int) -> dict[str, Any]:
    """Hot bytes of ``n_sessions`` sessions sharing a ``system_tokens`` prompt (SmolLM2, fp32, CPU):
    unique (pages shared once) against logical (a copy per session), for transformers' KV and the
    engine's."""
    import torch

    from seqkv.integrations.models import load_smollm2
    from seqkv.store import SessionStore

    torch.set_num_threads(1)
    model, _ = load_smollm2()
    tail_tokens = 64
    tokens, reason = real_tokens(system_tokens + n_sessions * tail_tokens + tail_tokens)
    if tokens is None:
        raise SystemExit(reason)
    system = tokens[:system_tokens]
    tails = [tokens[system_tokens + i * tail_tokens : system_tokens + (i + 1) * tail_tokens] for i in range(n_sessions + 1)]
    out: dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct (fp32, CPU, torch 1 thread)",
        "sessions": n_sessions,
        "system_tokens": system_tokens,
        "tail_tokens": tail_tokens,
        "how": "SessionStore(codec='raw', capacity_bytes=16 GiB): put each session (its KV computed by the store), "
               "then get (hot) and get_prefix(system prompt + a new tail) per session; bytes from tier_stats()",
    }
    for name, engine in (("transformers", "transformers"), ("engine", "auto")):
        store = SessionStore(model, codec="raw", capacity_bytes=1 << 34, engine=engine)
        put_ms, get_ms, prefix_ms = [], [], []
        for i in range(n_sessions):
            toks = np.concatenate([system, tails[i]])
            t0 = time.perf_counter()
            store.put(f"s{i}", toks)
            put_ms.append(time.perf_counter() - t0)
        for i in range(n_sessions):
            t0 = time.perf_counter()
            store.get(f"s{i}")
            get_ms.append(time.perf_counter() - t0)
        request = np.concatenate([system, tails[n_sessions]])
        for _ in range(3 if quick else 5):
            t0 = time.perf_counter()
            n, _cache = store.get_prefix(request)
            prefix_ms.append(time.perf_counter() - t0)
        hot = store.tier_stats()["tiers"]["hot"]
        out[name] = {
            "hot_unique_bytes": hot["kv_bytes"],
            "hot_logical_bytes": hot["logical_bytes"],
            "logical_over_unique": round(hot["logical_bytes"] / hot["kv_bytes"], 2),
            "pages": hot["pages"],
            "pages_shared": hot["pages_shared"],
            "page_tokens": hot["page_tokens"],
            "get_prefix_tokens": int(n),
            "put_ms": round(1000 * float(np.median(put_ms)), 1),
            "get_hot_ms": round(1000 * float(np.median(get_ms)), 2),
            "get_prefix_ms": round(1000 * float(np.median(prefix_ms)), 2),
        }
        store.close()
        r = out[name]
        print(f"shared prefix, {name}: hot {r['hot_unique_bytes'] / 2**20:.1f} MiB unique vs "
              f"{r['hot_logical_bytes'] / 2**20:.1f} MiB logical ({r['logical_over_unique']}x), "
              f"{r['pages_shared']}/{r['pages']} pages shared; get {r['get_hot_ms']} ms, "
              f"get_prefix {r['get_prefix_tokens']} tokens in {r['get_prefix_ms']} ms", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer operations (a smoke run)")
    ap.add_argument("--out", default=str(ROOT / "benches" / "results" / "store.json"))
    ap.add_argument("--dir", default=None, help="directory for the SQLite files (default: a temp dir)")
    ap.add_argument("--no-ops", action="store_true", help="skip the backend put/get throughput part")
    ap.add_argument("--no-tiers", action="store_true", help="skip the SessionStore tier part (needs SmolLM2)")
    ap.add_argument("--engine-max", type=int, default=1024, help="longest context restored through the engine")
    ap.add_argument("--no-shared", action="store_true", help="skip the shared-system-prompt hot bytes part (needs SmolLM2)")
    ap.add_argument("--shared-sessions", type=int, default=None, help="sessions sharing the system prompt (default 8; quick 3)")
    ap.add_argument("--system-tokens", type=int, default=None, help="system prompt tokens (default 512; quick 128)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="seqkv-bench-", dir=args.dir) as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        result: dict[str, Any] = {"machine": machine_info(workdir), "quick": args.quick}
        if not args.no_ops:
            result["ops"] = bench_ops(workdir, args.quick)
        if not args.no_tiers:
            contexts = (256, 1024) if args.quick else CONTEXTS
            result["tiers"], result["restore"] = bench_tiers(workdir, args.quick, contexts, args.engine_max)
        if not args.no_shared:
            result["shared_prefix"] = bench_shared_prefix(
                args.quick,
                args.shared_sessions or (3 if args.quick else 8),
                args.system_tokens or (128 if args.quick else 512),
            )
        result["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    write_summary(out, Store, result)
    for name, rows in result.get("ops", {}).items():
        for label, r in rows.items():
            if isinstance(r, dict):
                print(f"{name:14s} {label:9s} put {r['put_ops_per_s']:>10.0f}/s  get {r['get_ops_per_s']:>10.0f}/s")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
