"""Restore latency of a SessionStore whose model lives on the GPU, at 1k, 4k and 16k tokens, in one
run on one GPU (SmolLM2-135M in bf16; random weights of its shapes only when the model file is
missing, labelled in the JSON):

* ``cold_lm``: the session's ``lm`` stream decoded by the GPU engine and its KV rebuilt by the GPU
  engine straight into a cache on the GPU, checked against the recorded layer hashes
  (``get(mode="exact")`` after ``drop_caches``);
* ``cold_plt``: the ``plt`` stream decoded (no model) and the KV built by one GPU-engine prefill
  (``get()`` after ``drop_caches``);
* ``warm``: the quantized KV dequantized (``demote(id, "warm")``, then ``get``);
* ``hot``: the kept KV copied (``put(..., keep_kv=True)``, then ``get``);
* ``reprefill_transformers``: re-prefilling the text with transformers (bf16, eager, DynamicCache);
* ``pinned_host_copy``: the session's bf16 KV copied from pinned host memory to the GPU (what an
  offloading cache such as LMCache does).

Each cell is the best of a few GPU-synchronised wall times in seconds, or the error it raised (a
cell the engine cannot serve, such as more positions than its attention kernel holds, says why).
Writes ``benches/results/gpu_store.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
try:
    import seqkv  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "python"))

import torch  # noqa: E402
from _summary import GpuStore, machine, write_summary  # noqa: E402
from engine import load_model, text_tokens  # noqa: E402

LENGTHS = (1024, 4096, 16384)


def timed(fn: Callable[[], Any], reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def cell(fn: Callable[[], Any], reps: int) -> dict[str, Any]:
    """``{"seconds": best}`` or ``{"error": ...}``: one failing path is a figure, not the run's end."""
    try:
        return {"seconds": round(timed(fn, reps), 5)}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def transformers_prefill(model: Any, toks: np.ndarray) -> Any:
    from transformers import DynamicCache

    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor(toks[None], device="cuda"), past_key_values=cache, use_cache=True, logits_to_keep=1)
    return cache


def pinned_kv(model: Any, n: int) -> tuple[Any, Any]:
    """The bf16 KV of ``n`` positions in pinned host memory and a GPU buffer of its size."""
    cfg = model.config
    nkv = int(cfg.num_key_value_heads)
    hd = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    shape = (int(cfg.num_hidden_layers), 2, nkv, n, hd)
    host = torch.randn(shape, dtype=torch.bfloat16).pin_memory()
    return host, torch.empty(shape, dtype=torch.bfloat16, device="cuda")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benches" / "results" / "gpu_store.json"))
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--random-weights", action="store_true")
    args = ap.parse_args()
    from seqkv.store import SessionStore

    t0 = time.perf_counter()
    model_cpu, tok, model_name, random_weights = load_model(args.random_weights)
    model = copy.deepcopy(model_cpu).to(device="cuda", dtype=torch.bfloat16).eval()
    model.__dict__.pop("_seqkv_fingerprint", None)  # cached for the f32 weights the copy no longer has
    lengths = [int(x) for x in args.lengths.split(",")]
    rows: dict[str, dict[str, Any]] = {}
    lm_store = SessionStore(model, "lm", tokenizer=tok, engine="auto")
    plt_store = SessionStore(model, "plt", tokenizer=tok, engine="auto")
    res: dict[str, Any] = {
        "what": "SessionStore restore latency, model on the GPU (seconds, best of a few)",
        "model": model_name, "real_weights": not random_weights, "random_weights": random_weights,
        "model_dtype": "bfloat16", "device": torch.cuda.get_device_name(0), "machine": machine(),
        "kv_source": lm_store.kv_source,
        "kv_engine": type(lm_store.engine).__name__ if lm_store.engine is not None else "transformers",
    }
    print(res["device"], res["kv_engine"], "real weights" if not random_weights else "RANDOM weights", flush=True)
    for n in lengths:
        toks = text_tokens(tok, n)
        if toks.size < n:  # the license texts ran out: repeat them
            toks = np.resize(toks, n)
        sid = f"s{n}"
        row: dict[str, Any] = {}
        reps = 3 if n <= 4096 else 1
        try:
            t = time.perf_counter()
            lm_store.put(sid, toks)
            row["lm_put_seconds"] = round(time.perf_counter() - t, 3)
        except Exception as exc:
            row["lm_put_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"

        def cold_lm() -> None:
            lm_store.drop_caches()
            lm_store.get(sid, mode="exact", promote=False)

        row["cold_lm"] = cell(cold_lm, 1) if "lm_put_seconds" in row else {"error": row["lm_put_error"]}
        try:
            plt_store.put(sid, toks, keep_kv=True)
            row["hot"] = cell(lambda: plt_store.get(sid, promote=False), reps)
            plt_store.demote(sid, "warm")
            row["warm"] = cell(lambda: plt_store.get(sid, promote=False), reps)

            def cold_plt() -> None:
                plt_store.drop_caches()
                plt_store.get(sid, promote=False)

            row["cold_plt"] = cell(cold_plt, reps)
        except Exception as exc:
            for key in ("hot", "warm", "cold_plt"):
                row.setdefault(key, {"error": f"{type(exc).__name__}: {str(exc)[:300]}"})
        row["reprefill_transformers"] = cell(lambda: transformers_prefill(model, toks), reps)
        host, dev = pinned_kv(model, n)
        row["pinned_host_copy"] = cell(lambda: dev.copy_(host, non_blocking=True), 5)
        row["bf16_kv_bytes"] = host.numel() * 2
        del host, dev
        rows[str(n)] = row
        print(n, json.dumps(row), flush=True)
    res["restore"] = rows
    if random_weights:
        res["note"] = "RANDOM weights of SmolLM2's shapes (the model file was missing): lm decode speed holds, stream sizes do not"
    res["seconds"] = round(time.perf_counter() - t0, 1)
    write_summary(args.out, GpuStore, res)
    print(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
