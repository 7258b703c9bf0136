"""Cross-session dedup on a multi-session workload: stored bits per token position of a
SessionStore holding many chat sessions that share prefixes, against the same sessions each
stored alone. SmolLM2-135M-Instruct, real text.

    python benches/dedup.py [--quick] [--codecs plt lm] [--out PATH]

Workload: the chat conversations of ``examples/serve.py`` (``chat_workload``: SmolLM2 chat format,
conversations sharing three system prompts, each turn's prompt extending the previous turn's
token for token); every turn of every conversation is one stored session (its whole prompt so
far), as a chat server storing each request would. Answers are not generated here: each turn
closes an empty assistant message. Full: 12 conversations × 3 turns; quick: 4 × 2.

Per codec: one ``SessionStore`` with all sessions (its trie stores a shared prefix once; a later
session references the longest prefix an earlier one holds and codes only its tail), against a
fresh store per session (no sharing). Reported from ``SessionStore.stats()``: logical tokens,
coded tokens, dedup ratio, container bits per logical token (headers included), payload bits per
logical token, and bf16 KV bits per token of the same positions for scale; every session is read
back (``tokens``) and compared. Writes benches/results/dedup.json (dedup-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _summary import Dedup, machine, write_summary

ROOT = Path(__file__).resolve().parents[1]


def chat_sessions(tokenizer: Any, conversations: int, turns: int) -> list[tuple[str, np.ndarray]]:
    """(session id, tokens) for every turn of every conversation of examples/serve.py's workload."""
    spec = importlib.util.spec_from_file_location("seqkv_example_serve", ROOT / "examples" / "serve.py")
    assert spec is not None and spec.loader is not None
    serve = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = serve
    spec.loader.exec_module(serve)
    out = []
    for conv in serve.chat_workload(tokenizer, conversations, turns):
        toks = conv.system
        for t, user in enumerate(conv.users):
            toks = np.concatenate([toks, user])
            out.append((f"{conv.cid}-turn{t}", toks.copy()))
            toks = np.concatenate([toks, conv.assistant_close])
    return out


def measure(model: Any, codec: str, sessions: list[tuple[str, np.ndarray]]) -> dict[str, Any]:
    from seqkv import SessionStore
    from seqkv.integrations.transformers import kv_bits_per_token

    t0 = time.perf_counter()
    shared = SessionStore(model, codec=codec, record_hashes=False)
    for sid, toks in sessions:
        shared.put(sid, toks)
    put_s = time.perf_counter() - t0
    shared.drop_caches()
    for sid, toks in sessions:
        if not np.array_equal(shared.tokens(sid), toks):
            raise AssertionError(f"{codec}: session {sid} read back wrong")
    st = shared.stats()
    shared.close()
    alone_bytes = alone_payload = 0
    t0 = time.perf_counter()
    for sid, toks in sessions:
        one = SessionStore(model, codec=codec, record_hashes=False)
        one.put(sid, toks)
        s1 = one.stats()
        alone_bytes += s1["container_bytes"]
        alone_payload += s1["payload_bits"]
        one.close()
    alone_s = time.perf_counter() - t0
    tokens = st["tokens"]
    return {
        "codec": codec,
        "sessions": st["sessions"],
        "tokens": tokens,
        "coded_tokens": st["coded_tokens"],
        "dedup_ratio": st["dedup_ratio"],
        "bits_per_token": st["bits_per_token"],
        "payload_bits_per_token": st["payload_bits_per_token"],
        "payload_bits_per_coded_token": st["payload_bits_per_coded_token"],
        "container_bytes": st["container_bytes"],
        "alone_bits_per_token": 8 * alone_bytes / tokens,
        "alone_payload_bits_per_token": alone_payload / tokens,
        "alone_container_bytes": alone_bytes,
        "bf16_kv_bits_per_token": kv_bits_per_token(model, 16),
        "put_all_s": round(put_s, 2),
        "put_alone_s": round(alone_s, 2),
        "read_back_equal": True,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 conversations × 2 turns")
    ap.add_argument("--codecs", nargs="+", default=["plt", "lm"])
    ap.add_argument("--out", default=None, help="default benches/results/dedup.json (dedup-quick.json with --quick)")
    args = ap.parse_args()
    import torch

    from seqkv.integrations.models import load_smollm2

    torch.manual_seed(0)
    host = machine()
    t_start = time.perf_counter()
    model, tok = load_smollm2()
    conv, turns = (4, 2) if args.quick else (12, 3)
    sessions = chat_sessions(tok, conv, turns)
    rows = [measure(model, c, sessions) for c in args.codecs]
    res = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF de-quantized to fp32), CPU",
        "quick": args.quick,
        "workload": {"source": "examples/serve.py chat_workload", "conversations": conv, "turns": turns,
                     "sessions": len(sessions), "tokens": int(sum(t.size for _, t in sessions))},
        "codecs": rows,
        "seconds": round(time.perf_counter() - t_start, 1),
        "machine": host,
    }
    out = Path(args.out) if args.out else ROOT / "benches" / "results" / ("dedup-quick.json" if args.quick else "dedup.json")
    write_summary(out, Dedup, res, indent=1)
    print(f"{len(sessions)} sessions, {res['workload']['tokens']:,} tokens")
    for r in rows:
        print(f"{r['codec']:>4}: {r['bits_per_token']:.3f} bits/token with dedup (ratio {r['dedup_ratio']:.2f}), "
              f"{r['alone_bits_per_token']:.3f} stored alone; payload {r['payload_bits_per_token']:.3f} vs "
              f"{r['alone_payload_bits_per_token']:.3f}")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
