"""Multithreaded chat serving with a SessionStore: reuse the KV of shared system prompts and of
earlier turns instead of prefilling them again.

A thread pool answers chat requests on SmolLM2. Conversations start with one of a few system
prompts, and each new turn's prompt is the previous turn's prompt and answer plus a new user
message. For every request the server

1. asks the store for the longest prefix it can serve (``SessionStore.get_prefix``): a hot KV
   cache in memory (sliced, no compute), a warm one (3-bit codes, dequantized), or a cold
   session (restored from its tokens);
2. prefills only the rest of the prompt, then decodes greedily;
3. stores the conversation so far (``put(..., kv=cache)``: the tokens are coded into the cold
   tier, the KV kept hot while the memory budget allows) and deletes the previous turn's
   session (its record stays as long as the new one references it).

Without a store (``ChatServer(model, store=None)``) the same loop prefills every prompt in
full: that is the baseline ``benches/serve.py`` compares against.

Run: python examples/serve.py [--threads 4] [--conversations 8] [--turns 3]
"""

from __future__ import annotations

import argparse
import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seqkv.integrations import transformers as hf
from seqkv.store import SessionStore

SYSTEM_PROMPTS = [
    "You are a patient support agent for a company that sells home solar batteries. Answer in one or two "
    "short sentences. Warranty: ten years on cells, five years on the inverter; claims need the serial "
    "number on the side label. Shipping takes three to five working days; installation is booked "
    "separately through a certified partner. Never promise refunds; hand billing questions to a human.",
    "You are a concise tutor for first-year physics students. Explain with one everyday example and no "
    "formulas unless asked. Topics this week: Newton's laws, friction, energy conservation, simple "
    "harmonic motion and the pendulum. If a question is off topic, say so politely and suggest asking "
    "the teaching assistant during office hours on Tuesday or Thursday afternoons.",
    "You are a travel assistant for a small hotel by a lake in the mountains. Breakfast is served from "
    "seven to ten, the sauna opens at four in the afternoon, bikes can be rented at the front desk, and "
    "the last bus to the village leaves at half past nine. Pets are welcome in the ground-floor rooms "
    "only. Keep every answer friendly and under forty words.",
]
QUESTIONS = [
    "How long does it take?",
    "Can you give me an example?",
    "What should I do first?",
    "Is there anything I should avoid?",
    "Could you say that more simply?",
    "What happens if I forget?",
    "Who can I ask if I need more help?",
    "Thanks! One more question: what about the weekend?",
]


@dataclass
class Conversation:
    """A conversation to replay: its system prompt and user messages as token ids, and the chat
    template pieces (token ids) that frame each turn."""

    cid: str
    system: np.ndarray
    users: list[np.ndarray]
    assistant_close: np.ndarray  # appended after each answer (e.g. "<|im_end|>\n")


@dataclass
class Reply:
    cid: str
    turn: int
    prompt_tokens: int
    prompt_digest: str  # BLAKE2b of the prompt's token ids: runs compare answers to equal prompts only
    reused_tokens: int
    answer: list[int]
    ttft_s: float
    seconds: float


@dataclass
class RunResult:
    replies: list[Reply] = field(default_factory=list)
    wall_s: float = 0.0
    peak_kv_bytes: int = 0
    final_kv_bytes: int = 0


def chat_workload(tokenizer: Any, n_conversations: int, turns: int, seed: int = 0) -> list[Conversation]:
    """Conversations in SmolLM2's chat format (``<|im_start|>role\\n...<|im_end|>\\n``), each turn
    tokenized on its own so that every prompt extends the previous one token for token."""
    rng = np.random.default_rng(seed)

    def enc(text: str) -> np.ndarray:
        ids = tokenizer.encode(text, add_special_tokens=False)
        ids = getattr(ids, "ids", ids)
        return np.asarray(ids, dtype=np.int64)

    systems = [enc(f"<|im_start|>system\n{s}<|im_end|>\n") for s in SYSTEM_PROMPTS]
    close = enc("<|im_end|>\n")
    out = []
    for c in range(n_conversations):
        qs = rng.permutation(len(QUESTIONS))[:turns]
        users = [enc(f"<|im_start|>user\n{QUESTIONS[q]}<|im_end|>\n<|im_start|>assistant\n") for q in qs]
        out.append(Conversation(f"conv{c}", systems[c % len(systems)], users, close))
    return out


class ChatServer:
    """Answers chat requests with ``model`` (greedy, ``max_new_tokens``), reusing KV through
    ``store`` when one is given. Thread-safe: each request has its own cache; the model runs
    concurrently from several threads."""

    def __init__(self, model: Any, store: SessionStore | None = None, *, max_new_tokens: int = 8):
        self.model = model
        self.store = store
        self.max_new_tokens = int(max_new_tokens)
        self._lock = threading.Lock()
        self._in_flight: dict[int, int] = {}  # thread id -> KV bytes of its request
        self.peak_kv_bytes = 0  # the most resident_kv_bytes() seen at the end of a request

    def _forward(self, ids: np.ndarray, cache: Any) -> tuple[Any, int]:
        import torch

        x = torch.tensor([ids.tolist()], dtype=torch.long)
        with torch.inference_mode():
            out, cache = hf.forward_with_cache(self.model, cache, input_ids=x, logits_to_keep=1)
        return cache, int(torch.argmax(out.logits[0, -1]))

    def _track(self, cache: Any) -> None:
        nbytes = sum(int(k.numel()) * k.element_size() * 2 for k, _ in hf.cache_layers(cache)) if cache else 0
        with self._lock:
            self._in_flight[threading.get_ident()] = nbytes

    def resident_kv_bytes(self) -> int:
        """KV bytes held right now: the requests in flight plus the store's hot and warm tiers."""
        with self._lock:
            flying = sum(self._in_flight.values())
        return flying + (self.store.tier_stats()["used_bytes"] if self.store is not None else 0)

    def answer(self, cid: str, turn: int, prompt: np.ndarray) -> Reply:
        """Answer one request; ``prompt`` is the whole conversation so far (token ids)."""
        t0 = time.perf_counter()
        reused, cache = 0, None
        if self.store is not None:
            reused, cache = self.store.get_prefix(prompt[:-1])  # leave a token to compute logits from
        if cache is None:
            cache = hf.new_cache(self.model)
        cache, token = self._forward(prompt[reused:], cache)
        ttft = time.perf_counter() - t0
        self._track(cache)
        answer = [token]
        for _ in range(self.max_new_tokens - 1):
            cache, token = self._forward(np.array([token]), cache)
            answer.append(token)
        self._track(cache)
        if self.store is not None:
            # the cache holds the prompt and every answer token but the last (never fed)
            held = np.concatenate([prompt, np.asarray(answer[:-1], dtype=np.int64)])
            self.store.put(f"{cid}/{turn}", held, kv=cache)
            if turn:
                self.store.delete(f"{cid}/{turn - 1}")
        resident = self.resident_kv_bytes()  # this request's cache is still counted
        with self._lock:
            self.peak_kv_bytes = max(self.peak_kv_bytes, resident)
            self._in_flight.pop(threading.get_ident(), None)
        digest = hashlib.blake2b(prompt.astype(np.int64).tobytes(), digest_size=16).hexdigest()
        return Reply(cid, turn, int(prompt.size), digest, int(reused), answer, ttft, time.perf_counter() - t0)


def run(server: ChatServer, conversations: list[Conversation], threads: int) -> RunResult:
    """Replay ``conversations`` on a pool of ``threads`` workers (a conversation's turns in order,
    conversations in parallel)."""
    result = RunResult()
    lock = threading.Lock()

    def converse(conv: Conversation) -> None:
        history = conv.system
        for turn, user in enumerate(conv.users):
            prompt = np.concatenate([history, user])
            reply = server.answer(conv.cid, turn, prompt)
            with lock:
                result.replies.append(reply)
            history = np.concatenate([prompt, np.asarray(reply.answer, dtype=np.int64), conv.assistant_close])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for fut in [pool.submit(converse, c) for c in conversations]:
            fut.result()
    result.wall_s = time.perf_counter() - t0
    result.peak_kv_bytes = server.peak_kv_bytes
    result.final_kv_bytes = server.resident_kv_bytes()
    return result


def summary(result: RunResult) -> dict[str, Any]:
    ttft = np.array([r.ttft_s for r in result.replies]) * 1000
    tokens = sum(len(r.answer) for r in result.replies)
    prompt = sum(r.prompt_tokens for r in result.replies)
    reused = sum(r.reused_tokens for r in result.replies)
    return {
        "requests": len(result.replies),
        "ttft_ms": {"p50": round(float(np.percentile(ttft, 50)), 1), "p95": round(float(np.percentile(ttft, 95)), 1),
                    "mean": round(float(ttft.mean()), 1)},
        "tokens_per_s": round(tokens / result.wall_s, 2),
        "wall_s": round(result.wall_s, 2),
        "prompt_tokens": prompt,
        "reused_tokens": reused,
        "prefilled_tokens": prompt - reused,
        "kv_bytes": {"peak": result.peak_kv_bytes, "final": result.final_kv_bytes},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--conversations", type=int, default=6)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--capacity-mib", type=float, default=32.0, help="memory budget of the hot and warm tiers")
    args = ap.parse_args()
    import torch

    from seqkv.integrations.models import load_smollm2

    torch.set_num_threads(1)  # one core per request thread; the pool provides the parallelism
    model, tokenizer = load_smollm2()
    conversations = chat_workload(tokenizer, args.conversations, args.turns)
    # The model serves with transformers, so the store keeps transformers KV (engine=False); the
    # caches it is given come from a mix of stored prefixes, prefills and steps, so it records no
    # hashes for exact restores (record_hashes=False): a cold session is rebuilt faithfully.
    store = SessionStore(model, codec="plt", engine=False, record_hashes=False,
                         capacity_bytes=int(args.capacity_mib * (1 << 20)))
    server = ChatServer(model, store, max_new_tokens=args.max_new_tokens)
    result = run(server, conversations, args.threads)
    for r in sorted(result.replies, key=lambda r: (r.cid, r.turn))[: 2 * args.turns]:
        print(f"{r.cid} turn {r.turn}: prompt {r.prompt_tokens} tokens, {r.reused_tokens} reused, "
              f"ttft {1000 * r.ttft_s:.0f} ms: {tokenizer.decode(r.answer)!r}")
    s = summary(result)
    print(f"{s['requests']} requests on {args.threads} threads: ttft p50 {s['ttft_ms']['p50']} ms, "
          f"p95 {s['ttft_ms']['p95']} ms, {s['tokens_per_s']} tokens/s; "
          f"{s['reused_tokens']} of {s['prompt_tokens']} prompt tokens reused")
    print("tiers:", {t: (v["count"], v["bytes"], v["hits"]) for t, v in store.tier_stats()["tiers"].items()})


if __name__ == "__main__":
    main()
