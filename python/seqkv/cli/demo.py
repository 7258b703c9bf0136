"""The main job (``seqkv demo`` / ``make demo``): SmolLM2 sessions stored as tokens and restored.

Several chat sessions share one system prompt; each asks one of two questions about a
document from ``/usr/share/common-licenses/`` (a few hundred tokens), so the two sessions on a
document share it too, and each ends with the model's own greedy reply. Each
session's KV cache is computed the way a server would (one prefill of the prompt, then one
decode step per generated token, all sessions batched) on the batch-invariant engine with the
model's f32 weights; the store keeps only the tokens (the shared prefix once, through the
trie) and rebuilds the caches on demand with the same engine. One table compares:

* per codec (``raw``, ``plt``, ``lm``, ``lm-robust``): bits per token position (the coded
  payload, and the whole container with its header), the model's cross-entropy, and the ratio
  against bf16 KV (SmolLM2: 30 layers × 2 × 3 heads × 64 × 16 bits = 184,320 bits/token) and
  against 3-bit/component KV quantization (34,560 bits/token);
* dedup across sessions;
* restore latency (decode + recompute) against loading the bf16 KV from a file;
* fidelity: max |ΔKV| of the faithful restore, greedy-continuation agreement, and the
  exact-mode replay with its per-layer hash check (and bit equality with the original);
* multi-stream decode: all sessions' ``lm`` streams decoded together (one batched engine step
  per position, ``LMCodec.decode_batch``) against one after another.

The ``lm`` codec computes its logits with the batch-invariant engine (``seqkv.engine.cpu``, bf16
weights): the encoder in prefill passes, the decoder in single steps, the same bits either
way. ``--transformers`` uses transformers single steps at both ends instead (several times
slower).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from typing import Any, Iterator, Sequence

import numpy as np

__all__ = ["main", "build_sessions", "DEFAULT_DOCS", "SYSTEM_PROMPT"]

LICENSES = "/usr/share/common-licenses"
DEFAULT_DOCS = ("Apache-2.0", "GPL-3", "MPL-2.0", "Artistic", "LGPL-2.1")
SYSTEM_PROMPT = (
    "You are a careful legal assistant. Read the license text the user provides and answer "
    "questions about it precisely, quoting the relevant clause when you can."
)


def _bar(total: int, desc: str, enabled: bool, unit: str = "tok") -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the dev requirements
        tqdm = None
    if tqdm is None or not enabled:

        class _Null:
            def update(self, n: int = 1) -> None:
                pass

            def close(self) -> None:
                pass

        return _Null()
    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr)


QUESTIONS = (
    "What does this license say about patents?",
    "Can I use this code in a commercial product without publishing my changes?",
)


def build_sessions(
    tokenizer: Any, docs: Sequence[str], doc_tokens: int, questions: Sequence[str] = QUESTIONS
) -> tuple[list[int], dict[str, list[int]]]:
    """(system prompt ids, {"doc/qN": prompt ids}) in SmolLM2's chat format: every session
    shares the system prompt; the sessions about one document also share the document."""
    shared = tokenizer(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n")["input_ids"]
    tail = tokenizer("<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    out = {}
    for name in docs:
        path = name if os.path.isabs(name) else os.path.join(LICENSES, name)
        with open(path, encoding="utf-8", errors="replace") as f:
            ids = tokenizer(f.read())["input_ids"][:doc_tokens]
        for qi, question in enumerate(questions, 1):
            q = tokenizer("\n\n" + question)["input_ids"]
            out[f"{os.path.basename(name)}/q{qi}"] = list(shared) + list(ids) + list(q) + list(tail)
    return list(shared), out


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run transformers on one thread: its two-thread OpenMP kernels stall whenever another
    process holds a core (docs/engine.md gives the figures), and a single step is memory-bound
    anyway."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fmt(x: float, digits: int = 3) -> str:
    if x != x:  # NaN
        return "-"
    if abs(x) >= 1e5:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))
    out = [line, "-" * len(line)]
    for r in rows:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seqkv demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", nargs="+", default=list(DEFAULT_DOCS[:3]), help="license names or file paths")
    parser.add_argument("--doc-tokens", type=int, default=200, help="tokens of each document (default 200)")
    parser.add_argument("--reply-tokens", type=int, default=16, help="greedy reply tokens per session")
    parser.add_argument("--continue-tokens", type=int, default=16, help="tokens of greedy continuation compared")
    parser.add_argument("--quick", action="store_true", help="2 documents × 64 tokens")
    parser.add_argument("--no-robust", action="store_true", help="skip the lm-robust row")
    parser.add_argument(
        "--transformers",
        action="store_true",
        help="compute lm logits with transformers single steps instead of the batch-invariant engine (slow)",
    )
    parser.add_argument("--no-batch", action="store_true", help="skip the multi-stream decode comparison")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.quick:
        args.docs = args.docs[:2]
        args.doc_tokens = min(args.doc_tokens, 64)
        args.reply_tokens = min(args.reply_tokens, 8)
        args.continue_tokens = min(args.continue_tokens, 8)
    show = not args.no_progress

    from .. import codecs
    from ..integrations import transformers as hf
    from ..integrations.models import load_smollm2, numerics_profile
    from ..store.session_store import SessionStore

    t_start = time.perf_counter()
    print("seqkv demo: loading SmolLM2-135M-Instruct (fp32, CPU) ...", file=sys.stderr)
    model, tok = load_smollm2()
    kv_bf16 = hf.kv_bits_per_token(model, 16)
    kv_3bit = hf.kv_bits_per_token(model, 3)

    shared, prompts = build_sessions(tok, args.docs, args.doc_tokens)

    # 1. the sessions as a server would run them: prefill every prompt, then greedy reply
    #    tokens by batched decode steps of all sessions at once — on the batch-invariant
    #    engine with the model's own f32 weights (each session's KV is the same bits as if it
    #    had run alone, or as one prefill of its tokens)
    from ..engine.cpu import Engine

    server = Engine.for_model(model, "f32")
    names = list(prompts)
    seqs = [server.new_sequence() for _ in names]
    t0 = time.perf_counter()
    last = server.forward(seqs, [prompts[n] for n in names], logits="last")
    replies: list[list[int]] = [[] for _ in names]
    bar = _bar(args.reply_tokens * len(names), f"{len(names)} sessions: greedy replies (batched engine steps)", show)
    for step in range(args.reply_tokens):
        nxt = [int(np.argmax(r)) for r in last]
        for reply, t in zip(replies, nxt):
            reply.append(t)
        bar.update(len(names))
        if step + 1 < args.reply_tokens:
            last = server.step(seqs, nxt)
    bar.close()
    serve_s = time.perf_counter() - t0
    sessions: dict[str, dict[str, Any]] = {}
    for name, seq, reply in zip(names, seqs, replies):
        prompt = prompts[name]
        toks = np.array(prompt + reply[:-1], dtype=np.int64)  # the cache holds all but the newest token
        schedule = [len(prompt)] + [1] * (toks.size - len(prompt))
        sessions[name] = {"tokens": toks, "schedule": schedule, "cache": seq.kv_cache()}
    n_positions = sum(s["tokens"].size for s in sessions.values())
    print(
        f"{len(sessions)} sessions, {n_positions} token positions (shared prefix {len(shared)} tokens), "
        f"served in {serve_s:.1f} s",
        file=sys.stderr,
    )

    # 2. store them with the lm codec (the real store: hashes, restore). The codec's logits come
    #    from the engine (bf16 weights; encode by prefill, decode by steps) unless
    #    --transformers; the store rebuilds KV with the server's engine, so exact restores are
    #    one prefill checked against the hashes of the served KV.
    lm_codec: Any = "lm"
    if args.transformers:  # (the store's own engine= is the KV engine, so build the codec here)
        lm_codec = codecs.get("lm", model=model, tokenizer=tok, engine=False, profile="digest")
    store = SessionStore(model, codec=lm_codec, tokenizer=tok, engine=server)
    source = type(store.codec.source).__name__
    ce_bits = 0.0
    ce_tokens = 0
    for name, s in sessions.items():
        bar = _bar(int(s["tokens"].size), f"lm encode {name}", show)
        r = store.put(name, s["tokens"], schedule=s["schedule"], kv=s["cache"], progress=bar.update)
        bar.close()
        s["put"] = r
        ce_bits += r["cross_entropy_bits"]
        ce_tokens += r["coded_tokens"]
    st = store.stats()

    # 3. the other codecs over the same sessions (same dedup)
    codec_rows: dict[str, dict[str, float]] = {}

    def record(label: str, stats: dict[str, Any]) -> None:
        codec_rows[label] = {
            "payload_bits_per_token": stats["payload_bits_per_token"],
            "container_bits_per_token": stats["bits_per_token"],
            "payload_bits_per_coded_token": stats["payload_bits_per_coded_token"],
        }

    for name in ("raw", "plt"):
        if name not in codecs.available():
            continue
        other = SessionStore(model, codec=name, record_hashes=False, namespace="demo-" + name)
        for sid, s in sessions.items():
            other.put(sid, s["tokens"])
        record(name, other.stats())
    record("lm", st)
    if not args.no_robust:
        robust = SessionStore(model, codec="lm-robust", tokenizer=tok, record_hashes=False, encode_chunk=64)
        bar = _bar(n_positions, "lm-robust encode (transformers, 64-token chunks)", show)
        with _one_torch_thread():
            for sid, s in sessions.items():
                robust.put(sid, s["tokens"])
                bar.update(int(s["tokens"].size))
        bar.close()
        record(f"lm-robust (ε={robust.codec.bins.epsilon:g})", robust.stats())

    # 4. restore: decode + recompute, against reading bf16 KV from a file
    store.drop_caches()
    restore_s = []
    exact_ok = []
    max_err = 0.0
    agree = []
    with tempfile.TemporaryDirectory() as tmp:
        load_s = []
        for sid, s in sessions.items():
            path = os.path.join(tmp, sid.replace("/", "_") + ".kv")
            with open(path, "wb") as fw:
                fw.write(hf.kv_to_bf16_bytes(s["cache"]))
            t0 = time.perf_counter()
            with open(path, "rb") as fr:
                hf.kv_from_bf16_bytes(model, fr.read())
            load_s.append(time.perf_counter() - t0)
            s["bf16_bytes"] = os.path.getsize(path)
        for sid, s in sessions.items():
            bar = _bar(int(s["put"]["coded_tokens"]), f"restore {sid}", show)
            t0 = time.perf_counter()
            toks, cache = store.get(sid, progress=bar.update)
            restore_s.append(time.perf_counter() - t0)
            bar.close()
            assert np.array_equal(toks, s["tokens"])
            max_err = max(max_err, hf.max_abs_diff(cache, s["cache"]))
            with _one_torch_thread():  # the restored DynamicCache continues generation in transformers
                orig = hf.greedy_continuation(model, toks, s["cache"], args.continue_tokens)
                rest = hf.greedy_continuation(model, toks, cache, args.continue_tokens)
            agree.append(sum(a == b for a, b in zip(orig, rest)) / max(1, len(orig)))
            _, exact = store.get(sid, mode="exact")  # raises NumericsMismatchError on a hash mismatch
            exact_ok.append(hf.caches_equal(exact, s["cache"]))
        # the same KV from transformers' own forward (one prefill per session): time and agreement
        bar = _bar(n_positions, "transformers prefill of the same tokens", show)
        t0 = time.perf_counter()
        hf_err = 0.0
        with _one_torch_thread():
            for s in sessions.values():
                hf_cache, _ = hf.compute_cache(model, s["tokens"])
                hf_err = max(hf_err, hf.max_abs_diff(hf_cache, s["cache"]))
                bar.update(int(s["tokens"].size))
        prefill_s = time.perf_counter() - t0
        bar.close()
        t0 = time.perf_counter()
        for s in sessions.values():
            seq = server.new_sequence()
            server.prefill(seq, s["tokens"], logits="none")
            seq.kv_cache()
        engine_prefill_s = time.perf_counter() - t0

    # 5. multi-stream decode: every session coded whole, then all streams decoded together
    #    (one batched engine step per position) against one after another
    batch: dict[str, float] = {}
    if not args.no_batch and getattr(store.codec.source, "batched", False):
        whole = [s["tokens"] for s in sessions.values()]
        streams = store.codec.encode_batch(whole)
        bar = _bar(n_positions, f"decode {len(whole)} streams together", show)
        t0 = time.perf_counter()
        together = store.codec.decode_batch(streams, progress=bar.update)
        batch["together_s"] = time.perf_counter() - t0
        bar.close()
        bar = _bar(n_positions, "decode the same streams one by one", show)
        t0 = time.perf_counter()
        alone = [store.codec.decode(d, progress=bar.update) for d in streams]
        batch["alone_s"] = time.perf_counter() - t0
        bar.close()
        if not all(np.array_equal(a, w) and np.array_equal(b, w) for a, b, w in zip(together, alone, whole)):
            raise AssertionError("multi-stream decode did not give the sessions back")

    # 6. the table
    lm_bpt = codec_rows["lm"]["payload_bits_per_token"]
    ce_per = ce_bits / max(1, ce_tokens)
    rows = []
    for label, r in codec_rows.items():
        rows.append(
            [
                label,
                _fmt(r["payload_bits_per_token"]),
                _fmt(r["container_bits_per_token"]),
                _fmt(r["payload_bits_per_coded_token"]),
                _fmt(kv_bf16 / r["container_bits_per_token"], 0),
                _fmt(kv_bf16 / r["payload_bits_per_token"], 0),
                _fmt(kv_3bit / r["payload_bits_per_token"], 0),
            ]
        )
    header = ["codec", "bits/pos", "w/ header", "bits/coded", "× bf16 (w/ header)", "× bf16", "× 3-bit"]
    n_sessions = len(sessions)
    saved = st["referenced_tokens"] * st["payload_bits_per_coded_token"]
    out = []
    out.append("")
    out.append(
        f"seqkv demo: SmolLM2-135M-Instruct fp32 on {numerics_profile(model)['cpu']}, "
        f"{n_sessions} sessions: {len(args.docs)} licenses ({args.doc_tokens} tokens each) × {len(QUESTIONS)} questions, "
        f"one shared {len(shared)}-token system prompt, {args.reply_tokens}-token greedy replies; {n_positions} token positions; "
        f"lm logits from {source}"
    )
    out.append("")
    out.append(_table(rows, header))
    out.append("")
    out.append(
        f"model cross-entropy on the coded tokens: {ce_per:.3f} bits/token, float softmax "
        f"(lm payload per coded token {codec_rows['lm']['payload_bits_per_coded_token']:.3f}: the integer "
        f"tables cap a token at 24 bits, e.g. <|im_start|> right after <|endoftext|>); "
        f"KV: bf16 {kv_bf16:,.0f} bits/token, 3-bit {kv_3bit:,.0f} bits/token"
    )
    out.append(
        f"dedup: {st['tokens']} positions, {st['coded_tokens']} coded, {st['referenced_tokens']} by reference "
        f"(ratio {st['dedup_ratio']:.2f}×, ≈{saved / 8:,.0f} payload bytes saved vs coding each session whole, "
        f"{st['trie']['pins']} trie pins held)"
    )
    out.append(
        f"restore: decode + recompute {1e3 * np.mean(restore_s):,.0f} ms/session (recompute alone: engine "
        f"{1e3 * engine_prefill_s / n_sessions:,.0f} ms, transformers {1e3 * prefill_s / n_sessions:,.0f} ms); "
        f"bf16 KV from file {1e3 * np.mean(load_s):,.1f} ms/session "
        f"({np.mean([s['bf16_bytes'] for s in sessions.values()]) / 1e6:.1f} MB each vs "
        f"{st['container_bytes'] / n_sessions / 1e3:.2f} kB of tokens)"
    )
    out.append(
        f"fidelity: faithful max |ΔKV| {max_err:.2e} (vs transformers' own KV of the same tokens {hf_err:.1e}); "
        f"greedy continuation in transformers ({args.continue_tokens} tokens) agreement {100 * np.mean(agree):.1f}%; "
        f"exact mode: one engine prefill for a prompt-prefill + {args.reply_tokens - 1}-step schedule, "
        f"{sum(exact_ok)}/{n_sessions} hash-verified and bit-identical to the served KV"
    )
    if batch:
        out.append(
            f"multi-stream decode: the {n_sessions} sessions coded whole ({n_positions} tokens) decode together in "
            f"{batch['together_s']:.1f} s ({n_positions / batch['together_s']:.0f} tokens/s) vs {batch['alone_s']:.1f} s "
            f"one by one ({n_positions / batch['alone_s']:.0f} tokens/s): {batch['alone_s'] / batch['together_s']:.2f}×, "
            f"same tokens"
        )
    out.append(
        "bits/pos: coded payload bits per token position, shared prefixes counted once; w/ header: whole "
        "containers; bits/coded: payload per token actually coded"
    )
    out.append(f"total {time.perf_counter() - t_start:.0f} s")
    print("\n".join(out))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fj:
            json.dump(
                {
                    "codecs": codec_rows,
                    "cross_entropy_bits": ce_per,
                    "lm_bits_per_token": lm_bpt,
                    "store": {k: v for k, v in st.items() if k != "trie"},
                    "restore_ms": 1e3 * float(np.mean(restore_s)),
                    "recompute_ms": 1e3 * engine_prefill_s / n_sessions,
                    "transformers_recompute_ms": 1e3 * prefill_s / n_sessions,
                    "max_abs_kv_vs_transformers": hf_err,
                    "serve_s": serve_s,
                    "kv_load_ms": 1e3 * float(np.mean(load_s)),
                    "max_abs_kv_error": max_err,
                    "greedy_agreement": float(np.mean(agree)),
                    "exact_verified": int(sum(exact_ok)),
                    "sessions": n_sessions,
                    "lm_source": source,
                    "multi_stream_decode": {
                        k: v for k, v in {
                            **batch,
                            "tokens": n_positions if batch else None,
                            "together_tokens_per_s": n_positions / batch["together_s"] if batch else None,
                            "alone_tokens_per_s": n_positions / batch["alone_s"] if batch else None,
                        }.items() if v is not None
                    },
                },
                fj,
                indent=2,
            )
    return 0 if all(exact_ok) else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
