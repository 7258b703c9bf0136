"""Property testing for pipelines built on seqkv (extra ``seqkv[testing]``: hypothesis).

Assertions (no hypothesis needed): :func:`assert_roundtrip` (a codec gives its tokens back),
:func:`assert_restore_exact` (a store restores a session's KV bit for bit).

hypothesis strategies, in one module per kind of data: :mod:`~seqkv.testing.tokens` (token
sequences; sessions sharing prefixes across namespaces), :mod:`~seqkv.testing.logits`
(adversarial logits rows), :mod:`~seqkv.testing.kv` (KV caches in the transformers layout),
:mod:`~seqkv.testing.streams` (coded containers and their corruptions). They are imported on
first use: ``import seqkv.testing`` works without hypothesis, and using a strategy without it
raises :class:`~seqkv.errors.MissingExtraError`. See ``docs/testing.md``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .assertions import assert_restore_exact, assert_roundtrip

_STRATEGIES = {
    "token_sequences": "tokens",
    "sessions_with_shared_prefixes": "tokens",
    "TokenSession": "tokens",
    "logits_rows": "logits",
    "logits_batches": "logits",
    "kv_caches": "kv",
    "KVCache": "kv",
    "encoded_streams": "streams",
    "EncodedStream": "streams",
    "corruptions": "streams",
    "Corruption": "streams",
}

__all__ = ["assert_restore_exact", "assert_roundtrip", *_STRATEGIES]


def __getattr__(name: str) -> Any:
    module = _STRATEGIES.get(name)
    if module is None:
        raise AttributeError(f"module 'seqkv.testing' has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
