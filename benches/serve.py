"""Serving benchmark: time to first token, tokens/s and resident KV bytes of a multithreaded chat
loop on SmolLM2, with a seqkv SessionStore against the same loop without it.

    python benches/serve.py [--quick] [--out benches/results/serve.json]

The loop is ``examples/serve.py``: conversations sharing three system prompts, each turn's prompt
extending the previous turn's prompt and answer; greedy answers of ``max_new_tokens``. With
seqkv, each request takes the longest prefix the store can serve (hot KV, warm 3-bit KV,
or a cold session restored from its tokens), prefills the rest, and stores the conversation
(plt codec, ``capacity_bytes`` of hot + warm memory); without it, every prompt is prefilled in
full and its KV dropped after the answer. Two more seqkv variants show what the lossy warm tier changes: ``seqkv_warm4`` quantizes warm
KV to 4 bits instead of 3, ``seqkv_hot_cold`` has no warm tier (demoted sessions go straight to
cold). All run at 1, 2 and 4 threads (torch at one
intra-op thread each, so the pool is the only parallelism), on the same conversations.

Writes ``benches/results/serve.json``: per thread count, ``seqkv`` and ``baseline`` with
``ttft_ms`` (p50/p95/mean), ``tokens_per_s`` (answer tokens / wall time, the store's put
included), ``kv_bytes`` (peak and final resident: requests in flight plus the store's hot and
warm tiers, the hot tier's KV pages shared between sessions counted once;
``kv_bytes_if_all_hot``: the stored sessions' KV in fp32, for comparison; ``hot_unique_bytes``
and ``hot_logical_bytes``: the hot tier at the end, its pages once against a copy per hot
session, with ``hot_pages`` and ``hot_pages_shared``), prompt
tokens reused vs prefilled, and ``answers_equal_baseline``: among the requests whose prompt
was the same in both runs (``requests_with_baseline_prompt``; once an answer differs, the later
prompts of its conversation differ too), the share of answers identical to the baseline's — KV
served warm is 3-bit, and reused hot KV was computed by single decode steps rather than one
prefill, so a greedy answer can change; plus the store's tier stats and the machine
(CPU, load average at start and end: a shared machine).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from _summary import Machine, Serve, machine, version, write_summary  # noqa: E402


#: (name, tiers, warm bits) of the seqkv variants measured
VARIANTS = (
    ("seqkv", ("hot", "warm", "cold"), 3),
    ("seqkv_warm4", ("hot", "warm", "cold"), 4),
    ("seqkv_hot_cold", ("hot", "cold"), 3),
)


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("seqkv_example_serve", ROOT / "examples" / "serve.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def serve_machine() -> Machine:
    import torch

    return machine(transformers=version("transformers"), torch_threads=torch.get_num_threads())


def hot_bytes(store: Any) -> dict[str, Any]:
    """The hot tier at the end of a run: ``hot_unique_bytes`` (its KV pages and private tails;
    pages of a shared system prompt or earlier turn once), ``hot_logical_bytes`` (a KV copy per
    hot session), pages and pages shared. ``None`` for a store without a hot tier."""
    hot = store.tier_stats()["tiers"].get("hot")
    if hot is None:
        return {"hot_unique_bytes": None, "hot_logical_bytes": None, "hot_pages": None, "hot_pages_shared": None}
    return {"hot_unique_bytes": hot["kv_bytes"], "hot_logical_bytes": hot["logical_bytes"],
            "hot_pages": hot["pages"], "hot_pages_shared": hot["pages_shared"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer conversations (a smoke run)")
    ap.add_argument("--out", default=str(ROOT / "benches" / "results" / "serve.json"))
    ap.add_argument("--threads", default="1,2,4")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--capacity-mib", type=float, default=24.0)
    args = ap.parse_args(argv)

    import torch

    from seqkv.integrations import transformers as hf
    from seqkv.integrations.models import load_smollm2
    from seqkv.store import SessionStore

    torch.set_num_threads(1)
    serve = load_example()
    model, tokenizer = load_smollm2()
    n_conv, turns = (4, 2) if args.quick else (12, 3)
    conversations = serve.chat_workload(tokenizer, n_conv, turns)
    capacity = int(args.capacity_mib * (1 << 20))
    result: dict[str, Any] = {
        "machine": serve_machine(),
        "model": "SmolLM2-135M-Instruct (fp32, CPU)",
        "quick": args.quick,
        "workload": {
            "conversations": n_conv,
            "turns": turns,
            "requests": n_conv * turns,
            "system_prompts": len(serve.SYSTEM_PROMPTS),
            "system_prompt_tokens": [int(c.system.size) for c in conversations[: len(serve.SYSTEM_PROMPTS)]],
            "max_new_tokens": args.max_new_tokens,
        },
        "store": {"codec": "plt", "capacity_bytes": capacity, "policy": "lru",
                  "variants": {name: {"tiers": list(tiers), "warm_bits": bits if "warm" in tiers else None}
                               for name, tiers, bits in VARIANTS}},
        "threads": {},
    }
    # warm up torch's kernels once so the first measured request pays no start-up cost
    serve.run(serve.ChatServer(model, None, max_new_tokens=2), conversations[:1], 1)
    t_start = time.perf_counter()
    for threads in [int(t) for t in args.threads.split(",")]:
        baseline = serve.run(serve.ChatServer(model, None, max_new_tokens=args.max_new_tokens), conversations, threads)
        ref = {r.prompt_digest: r.answer for r in baseline.replies}
        row: dict[str, Any] = {"baseline": serve.summary(baseline)}
        for name, tiers, bits in VARIANTS:
            store = SessionStore(model, codec="plt", capacity_bytes=capacity, tiers=tiers, warm_bits=bits)
            served = serve.run(serve.ChatServer(model, store, max_new_tokens=args.max_new_tokens), conversations, threads)
            # answers can only be compared where both runs saw the same prompt (an earlier answer
            # that differs changes every later prompt of its conversation)
            same_prompt = [r for r in served.replies if r.prompt_digest in ref]
            equal = sum(ref[r.prompt_digest] == r.answer for r in same_prompt) / max(1, len(same_prompt))
            row[name] = {
                **serve.summary(served),
                "answers_equal_baseline": round(equal, 3),
                "requests_with_baseline_prompt": len(same_prompt),
                # what the stored sessions' KV would take if all of it stayed hot (fp32)
                "kv_bytes_if_all_hot": int(store.stats()["tokens"] * hf.kv_bits_per_token(model, 32) // 8),
                **hot_bytes(store),
                "tiers": store.tier_stats(),
            }
            store.close()
        b, s = row["baseline"], row["seqkv"]
        row["ttft_p50_speedup"] = round(b["ttft_ms"]["p50"] / s["ttft_ms"]["p50"], 2)
        row["tokens_per_s_ratio"] = round(s["tokens_per_s"] / b["tokens_per_s"], 2)
        result["threads"][str(threads)] = row
        h, w4 = row["seqkv_hot_cold"], row["seqkv_warm4"]
        print(f"{threads} threads: ttft p50 {b['ttft_ms']['p50']:.0f} -> {s['ttft_ms']['p50']:.0f} ms "
              f"(hot/cold only {h['ttft_ms']['p50']:.0f}), p95 {b['ttft_ms']['p95']:.0f} -> {s['ttft_ms']['p95']:.0f} ms, "
              f"tokens/s {b['tokens_per_s']:.1f} -> {s['tokens_per_s']:.1f}, peak KV {b['kv_bytes']['peak'] / 2**20:.1f} -> "
              f"{s['kv_bytes']['peak'] / 2**20:.1f} MiB (hot at the end {s['hot_unique_bytes'] / 2**20:.1f} MiB "
              f"for {s['hot_logical_bytes'] / 2**20:.1f} MiB of sessions), reused {s['reused_tokens']}/{s['prompt_tokens']} tokens, "
              f"answers equal {s['answers_equal_baseline']:.0%} (4-bit warm {w4['answers_equal_baseline']:.0%}, "
              f"hot/cold only {h['answers_equal_baseline']:.0%})",
              flush=True)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    write_summary(args.out, Serve, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
