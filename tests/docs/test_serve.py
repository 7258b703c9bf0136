"""examples/serve.py on the tiny random Llama: the thread pool answers every request, reuses the
stored prefixes (system prompts and earlier turns) and keeps one session per conversation."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "serve.py"


@pytest.fixture(scope="module")
def serve():
    spec = importlib.util.spec_from_file_location("seqkv_example_serve", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def workload(serve, rng, n=6, turns=3):
    systems = [rng.integers(0, 512, 40) for _ in range(2)]
    close = np.array([3, 4])
    return [
        serve.Conversation(f"c{i}", systems[i % 2], [rng.integers(0, 512, 6) for _ in range(turns)], close)
        for i in range(n)
    ]


@pytest.mark.parametrize("threads", [1, 3])
def test_serving_reuses_prefixes(serve, tiny_llama, rng, threads):
    from seqkv.store import SessionStore

    convs = workload(serve, rng)
    per_token = 2 * 2 * 2 * 16 * 4
    store = SessionStore(tiny_llama, codec="plt", engine=False, record_hashes=False, capacity_bytes=200 * per_token)
    with_store = serve.run(serve.ChatServer(tiny_llama, store, max_new_tokens=4), convs, threads)
    baseline = serve.run(serve.ChatServer(tiny_llama, None, max_new_tokens=4), convs, threads)
    assert len(with_store.replies) == len(baseline.replies) == 18
    assert all(len(r.answer) == 4 for r in with_store.replies)
    assert all(r.reused_tokens == 0 for r in baseline.replies)
    by_turn = {(r.cid, r.turn): r for r in with_store.replies}
    for (cid, turn), r in by_turn.items():
        assert 0 <= r.reused_tokens < r.prompt_tokens
        if turn:  # the previous turn's prompt and answer (but its last token) are reused
            prev = by_turn[(cid, turn - 1)]
            assert r.reused_tokens >= prev.prompt_tokens + len(prev.answer) - 1
    # conversations after the first of each system prompt reuse at least the system prompt
    firsts = sorted(by_turn[(c.cid, 0)].reused_tokens for c in convs)
    assert firsts[-1] >= 40 and sum(f >= 40 for f in firsts) >= len(convs) - (2 if threads == 1 else 4)
    # one session per conversation is left (earlier turns deleted; hidden while referenced)
    assert sorted(store.ids()) == sorted(f"{c.cid}/2" for c in convs)
    st = store.tier_stats()
    assert st["used_bytes"] <= 200 * per_token and st["tiers"]["hot"]["hits"] > 0
    s = serve.summary(with_store)
    assert s["reused_tokens"] > 0 and s["prefilled_tokens"] < serve.summary(baseline)["prefilled_tokens"]
    assert with_store.peak_kv_bytes > 0 and baseline.peak_kv_bytes > 0


def test_first_request_matches_the_baseline(serve, tiny_llama, rng):
    """With nothing stored yet, the served answer is the plain model's greedy answer."""
    from seqkv.integrations import transformers as hf
    from seqkv.store import SessionStore

    conv = workload(serve, rng, n=1, turns=1)
    store = SessionStore(tiny_llama, codec="raw", engine=False, record_hashes=False)
    r = serve.run(serve.ChatServer(tiny_llama, store, max_new_tokens=5), conv, 1).replies[0]
    prompt = np.concatenate([conv[0].system, conv[0].users[0]])
    assert r.reused_tokens == 0
    assert r.answer == hf.greedy_continuation(tiny_llama, prompt, None, 5)
