"""Strategies for token ids: single sequences, and sessions that share prefixes across namespaces
(what a store's trie deduplicates)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from ..errors import InvalidInputError
from ._hypothesis import st

__all__ = ["Namespace", "TokenSession", "sessions_with_shared_prefixes", "token_sequences"]

#: A trie namespace as ``seqkv.Trie`` takes it: ``None`` (the default one), text, bytes or an int.
Namespace = Union[None, str, bytes, int]

_NAMESPACES: tuple[Namespace, ...] = (None, "tenant-a", b"tenant-b", 7)


@dataclass(frozen=True)
class TokenSession:
    """One drawn session: its namespace, and its tokens (``uint32``)."""

    namespace: Namespace
    tokens: np.ndarray


@st.composite
def token_sequences(
    draw: st.DrawFn, vocab_size: int, *, min_size: int = 0, max_size: int = 256
) -> np.ndarray:
    """``uint32`` token ids in ``0..vocab_size``: uniform over the vocabulary, or over a few ids
    (repetitive text, what a context model compresses), always able to hit 0 and ``vocab_size-1``."""
    if vocab_size < 1:
        raise InvalidInputError(f"vocab_size must be >= 1, got {vocab_size}")
    alphabet = draw(
        st.one_of(
            st.just(st.integers(0, vocab_size - 1)),
            st.lists(st.integers(0, vocab_size - 1), min_size=1, max_size=4, unique=True).map(st.sampled_from),
        )
    )
    ids = draw(st.lists(alphabet, min_size=min_size, max_size=max_size))
    return np.array(ids, dtype=np.uint32)


@st.composite
def sessions_with_shared_prefixes(
    draw: st.DrawFn,
    vocab_size: int,
    *,
    max_sessions: int = 6,
    max_prefix: int = 64,
    max_tail: int = 32,
    namespaces: tuple[Namespace, ...] = _NAMESPACES,
) -> list[TokenSession]:
    """Sessions built as ``trunk[:k] + tail``: a few trunks (system prompts) that several sessions
    start with, at any cut, each session in one of ``namespaces`` (the same tokens may land in
    two namespaces, which must not share them)."""
    trunks = draw(st.lists(token_sequences(vocab_size, max_size=max_prefix), min_size=1, max_size=3))
    sessions = []
    for _ in range(draw(st.integers(1, max_sessions))):
        trunk = draw(st.sampled_from(trunks))
        cut = draw(st.integers(0, trunk.size))
        tail = draw(token_sequences(vocab_size, max_size=max_tail))
        namespace = draw(st.sampled_from(namespaces))
        sessions.append(TokenSession(namespace, np.concatenate([trunk[:cut], tail]).astype(np.uint32)))
    return sessions
