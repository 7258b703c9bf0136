"""Store benchmark: backend put/get throughput, bytes per session per tier, restore latency.

    python benches/store.py [--quick] [--out benches/results/store.json] [--dir DIR]

Writes ``benches/results/store.json``:

* ``ops``: put/get operations per second for the memory, SQLite (``synchronous`` full and
  normal) and Redis backends (a local ``redis-server`` is started when the binary exists), for a
  small record (1 KiB container, about a 2,000-token session at 4 bits/token, plus typical
  metadata) and a large one (64 KiB, e.g. with a residual), from 1 and 4 threads;
* ``tiers``: bytes per session in each tier at context lengths 256 … 4096 for SmolLM2's shape
  (30 layers, 3 KV heads, head_dim 64): hot = KV in fp32 and bf16, warm = TurboQuant 3-bit
  codes (measured), cold = container bytes (raw and plt codecs measured on license text; lm
  estimated from ``benches/results/compression.json`` when present, else null with a reason);
* ``restore``: restore latency per tier and context length. What the SessionStore does end to
  end is measured only when ``seqkv.store.SessionStore`` exists; otherwise the parts that exist
  are measured (fetching the record from SQLite and decoding its tokens with raw/plt;
  dequantizing the warm codes) and the rest is null with the reason;
* ``machine``: CPU, cores, OS, Python, SQLite and Redis versions, the file system under test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
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

from seqkv.backends import MemoryBackend, SessionRecord, SQLiteBackend, open_backend  # noqa: E402
from seqkv.backends.testing import local_redis_server, redis_server_binary  # noqa: E402

LAYERS, KV_HEADS, HEAD_DIM, VOCAB = 30, 3, 64, 49152  # SmolLM2-135M
CONTEXTS = (256, 512, 1024, 2048, 4096)


def machine_info(workdir: Path) -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
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
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "redis_server": redis_version,
        "workdir_filesystem": fs,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


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
        from seqkv.cli import smollm2_tokenizer

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


def bench_tiers(workdir: Path, quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    tiers: dict[str, Any] = {"model_shape": {"layers": LAYERS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM}}
    restore: dict[str, Any] = {}
    tokens, tok_reason = real_tokens(max(CONTEXTS))
    try:
        from seqkv import codecs

        codecs.get("raw", vocab_size=VOCAB).encode(np.zeros(4, dtype=np.uint32))
        codec_reason = None
    except Exception as exc:  # noqa: BLE001
        codecs, codec_reason = None, f"seqkv.codecs raw codec unavailable: {exc}"  # type: ignore[assignment]
    try:
        from seqkv.quantizers import TurboQuant

        tq = TurboQuant(HEAD_DIM, bits=3)
        quant_reason = None
    except Exception as exc:  # noqa: BLE001
        tq, quant_reason = None, f"seqkv.quantizers.TurboQuant unavailable: {exc}"
    lm_bpt, lm_source = lm_bits_per_token()
    try:
        from seqkv.store import SessionStore  # noqa: F401

        store_reason = "SessionStore exists but this benchmark does not drive it yet"
    except Exception:  # noqa: BLE001
        store_reason = "seqkv.store.SessionStore is not written yet (codecs issue); end-to-end tier restore needs it"
    rng = np.random.default_rng(0)
    reps = 3 if quick else 10
    db = SQLiteBackend(workdir / "tiers.sqlite")
    for n in CONTEXTS:
        row: dict[str, Any] = {
            "hot_bytes_fp32": n * LAYERS * 2 * KV_HEADS * HEAD_DIM * 4,
            "hot_bytes_bf16": n * LAYERS * 2 * KV_HEADS * HEAD_DIM * 2,
        }
        rest: dict[str, Any] = {"hot_ms": None, "hot_reason": store_reason}
        # warm: TurboQuant 3-bit codes of the whole cache (random KV: the code size does not depend on values)
        if tq is not None:
            kv = rng.standard_normal((LAYERS * 2 * KV_HEADS, n, HEAD_DIM)).astype(np.float32)
            codes = tq.quantize(kv)
            row["warm_bytes_turboquant3"] = int(codes.nbytes)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                tq.dequantize(codes)
                times.append(time.perf_counter() - t0)
            rest["warm_dequantize_ms"] = round(1000 * float(np.median(times)), 3)
            rest["warm_ms"] = None
            rest["warm_reason"] = "dequantize only (NumPy, CPU); " + store_reason
        else:
            row["warm_bytes_turboquant3"] = None
            row["warm_reason"] = quant_reason
            rest["warm_ms"] = None
            rest["warm_reason"] = quant_reason
        # cold: container bytes, and fetching + decoding the tokens from SQLite
        if codecs is not None and tokens is not None:
            for name in ("raw", "plt"):
                try:
                    codec = codecs.get(name, vocab_size=VOCAB)
                    data = codec.encode(tokens[:n])
                except Exception as exc:  # noqa: BLE001 - reported in the results
                    row[f"cold_bytes_{name}"] = None
                    row[f"cold_{name}_reason"] = f"{name} codec unavailable: {exc}"
                    continue
                row[f"cold_bytes_{name}"] = len(data)
                db.put(f"{name}{n}", SessionRecord(data, {"tokens": n, "codec": name}))
                times = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    codec.decode(db.get(f"{name}{n}").container)
                    times.append(time.perf_counter() - t0)
                rest[f"cold_fetch_decode_{name}_ms"] = round(1000 * float(np.median(times)), 3)
        else:
            row["cold_bytes_raw"] = None
            row["cold_reason"] = codec_reason or tok_reason
        row["cold_bytes_lm_estimate"] = None if lm_bpt is None else int(np.ceil(n * lm_bpt / 8))
        row["cold_lm_source"] = lm_source
        rest["cold_ms"] = None
        rest["cold_reason"] = "decode under the model + prefill recompute: " + store_reason
        tiers[str(n)] = row
        restore[str(n)] = rest
    db.close()
    return tiers, restore


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer operations (a smoke run)")
    ap.add_argument("--out", default=str(ROOT / "benches" / "results" / "store.json"))
    ap.add_argument("--dir", default=None, help="directory for the SQLite files (default: a temp dir)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="seqkv-bench-", dir=args.dir) as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        result: dict[str, Any] = {"machine": machine_info(workdir), "quick": args.quick}
        result["ops"] = bench_ops(workdir, args.quick)
        result["tiers"], result["restore"] = bench_tiers(workdir, args.quick)
        result["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, rows in result["ops"].items():
        for label, r in rows.items():
            if isinstance(r, dict):
                print(f"{name:14s} {label:9s} put {r['put_ops_per_s']:>10.0f}/s  get {r['get_ops_per_s']:>10.0f}/s")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
