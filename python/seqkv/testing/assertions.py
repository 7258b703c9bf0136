"""Assertions for users' own tests: a codec round-trips its tokens, a store restores a session's
KV exactly. Each raises :class:`AssertionError` with what differs (not a bare ``assert``, so it
also checks under ``python -O``); neither needs hypothesis."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..codecs import CodingStats, as_tokens, stream_info

__all__ = ["assert_restore_exact", "assert_roundtrip"]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _check_tokens(got: Any, expected: np.ndarray, what: str) -> None:
    _check(isinstance(got, np.ndarray) and got.dtype == np.uint32, f"{what}: expected a uint32 array, got {got!r:.80}")
    _check(got.shape == expected.shape, f"{what}: {got.size} tokens, expected {expected.size}")
    differ = np.flatnonzero(got != expected)
    _check(
        differ.size == 0,
        f"{what}: {differ.size} tokens differ, first at {differ[0] if differ.size else -1}: "
        f"{got[differ[:5]].tolist()} instead of {expected[differ[:5]].tolist()}",
    )


def _check_bits(name: str, value: float | None) -> None:
    _check(value is None or (math.isfinite(value) and value >= 0), f"stats.{name} = {value!r}: not a bit count")


def assert_roundtrip(codec: Any, tokens: Any, *, context: Any = None) -> tuple[bytes, CodingStats]:
    """Encode ``tokens`` with ``codec`` (a :class:`seqkv.codecs.Codec`, given ``context`` when
    not None), decode the stream and check that the same ids come back as ``uint32``, that the
    container describes them, and that the stats add up. Returns ``(data, stats)``."""
    expected = as_tokens(tokens)
    data, stats = codec.encode_with_stats(tokens, context=context)
    _check(isinstance(data, bytes), f"encode_with_stats returned {type(data).__name__}, not bytes")
    _check_tokens(codec.decode(data, context=context), expected, f"{codec.name} round trip")

    info = stream_info(data)
    _check(info.codec == codec.name, f"the container says codec {info.codec!r}, the codec is {codec.name!r}")
    _check(info.tokens == expected.size, f"the container says {info.tokens} tokens, {expected.size} were coded")
    _check(stats.codec == codec.name, f"stats.codec = {stats.codec!r}, the codec is {codec.name!r}")
    _check(stats.tokens == expected.size, f"stats.tokens = {stats.tokens}, {expected.size} were coded")
    _check(
        stats.container_bits == 8 * len(data),
        f"stats.container_bits = {stats.container_bits}, the stream has {8 * len(data)} bits",
    )
    _check(
        0 <= stats.payload_bits <= stats.container_bits,
        f"stats.payload_bits = {stats.payload_bits} outside 0..container_bits ({stats.container_bits})",
    )
    _check_bits("cross_entropy_bits", stats.cross_entropy_bits)
    _check_bits("table_bits", stats.table_bits)
    return data, stats


def _layer_hashes(cache: Any) -> list[bytes]:
    from ..integrations.transformers import layer_hashes

    return layer_hashes(cache)


def _differing_layers(got: list[bytes], expected: list[bytes]) -> list[int]:
    if len(got) != len(expected):
        return list(range(max(len(got), len(expected))))
    return [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]


def assert_restore_exact(store: Any, session_id: str, *, expected_kv: Any = None) -> tuple[np.ndarray, Any]:
    """Check that ``store.get(session_id, mode="exact")`` gives the session's tokens and a KV
    cache laid out for them, and that it is the same KV, layer hash for layer hash, as a restore
    recomputed from the session's record (the session is moved to the cold tier for that, and
    left there) and, when given, as ``expected_kv`` (the cache that was ``put``). Returns the
    first restore's ``(tokens, cache)``."""
    from ..integrations.transformers import cache_layers

    tokens, cache = store.get(session_id, mode="exact")
    _check_tokens(tokens, store.tokens(session_id), f"exact restore of {session_id!r}")
    for i, (keys, values) in enumerate(cache_layers(cache)):
        for name, t in (("keys", keys), ("values", values)):
            _check(
                len(t.shape) == 4 and t.shape[0] == 1 and t.shape[2] == tokens.size,
                f"layer {i} {name}: shape {tuple(t.shape)}, expected [1, kv_heads, {tokens.size}, head_dim]",
            )
    hashes = _layer_hashes(cache)

    if store.tier_of(session_id) != "cold":
        store.demote(session_id, "cold")
    _, recomputed = store.get(session_id, mode="exact", promote=False)
    bad = _differing_layers(_layer_hashes(recomputed), hashes)
    _check(not bad, f"exact restores of {session_id!r} differ from a cold recompute in layers {bad}")
    if expected_kv is not None:
        bad = _differing_layers(hashes, _layer_hashes(expected_kv))
        _check(not bad, f"the exact restore of {session_id!r} differs from expected_kv in layers {bad}")
    return tokens, cache
