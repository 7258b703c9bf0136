"""Share one prefix trie between many Python threads, as a serving process does.

Eight worker threads each serve sessions that start with one of two system prompts.
Every session looks up the longest cached prefix, pins it while it "uses" the KV
pages, and inserts its own tokens so later sessions can reuse them. The trie
releases the GIL, so the threads need no lock of their own.

Run: python examples/shared_prefix_threads.py
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import seqkv

VOCAB = 49_152
rng = np.random.default_rng(7)
SYSTEM_PROMPTS = [rng.integers(0, VOCAB, 512) for _ in range(2)]
next_page = itertools.count()


def serve(session: int) -> int:
    """Returns how many tokens of this session were already cached."""
    local = np.random.default_rng(session)
    tokens = np.concatenate([SYSTEM_PROMPTS[session % 2], local.integers(0, VOCAB, 64)])
    match = trie.match_prefix(tokens)
    with trie.pin(match.node):
        # A real server would attend over the KV pages in `match.values` here.
        new_values = np.array([next(next_page) for _ in range(len(tokens) - match.length)], dtype=np.uint64)
        trie.insert(tokens, values=np.concatenate([match.values, new_values]))
    return match.length


trie = seqkv.Trie()
with ThreadPoolExecutor(max_workers=8) as pool:
    reused = list(pool.map(serve, range(200)))

total = 200 * (512 + 64)
print(f"sessions: 200, tokens seen: {total}, tokens stored once: {len(trie)}")
print(f"prefix tokens served from the trie: {sum(reused)} ({sum(reused) / total:.0%})")
assert len(trie) < total and sum(reused) > 0
