"""The store's prefix index: which stored session already holds a prefix of new tokens.

Each stored token is a trie value ``session_number << 32 | position``. The trie is only a cache
of what the records say (they are the truth): it is snapshotted into the backend's ``"trie"``
blob by :meth:`SessionStore.checkpoint` / ``close`` and rebuilt from the records when that blob
is missing or unreadable. Session numbers are never reused, so a stale path can only name a
session that is gone, which :meth:`PrefixIndex.match` skips.

Not locked itself: the store calls it under its bookkeeping lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["PrefixIndex", "POS_BITS"]

POS_BITS = 32


class PrefixIndex:
    """Sessions' tokens in a :class:`~seqkv.Trie` under one namespace."""

    def __init__(self, trie: Any, namespace: str):
        self.trie = trie
        self.namespace = namespace

    def match(self, toks: np.ndarray, alive: Callable[[int], bool]) -> tuple[int, int | None]:
        """``(prefix length, owner number)`` of the longest stored prefix whose owner is alive."""
        if toks.size == 0:
            return 0, None
        m = self.trie.match_prefix(toks, namespace=self.namespace)
        values = np.asarray(m.values, dtype=np.uint64)
        for length in range(int(m.length), 0, -1):
            owner = int(values[length - 1]) >> POS_BITS
            if alive(owner):
                return length, owner
        return 0, None

    def insert(self, number: int, toks: np.ndarray, logprobs: np.ndarray | None = None) -> None:
        if toks.size:
            values = (np.uint64(number) << np.uint64(POS_BITS)) | np.arange(toks.size, dtype=np.uint64)
            self.trie.insert(toks, values=values, logprobs=logprobs, namespace=self.namespace)

    def sessions_held(self, lengths: Mapping[int, int]) -> dict[int, np.ndarray]:
        """The tokens of the sessions ``lengths`` names (number -> token count) read back from the
        trie itself, without decoding a record: a session owns the node of its last token unless
        that node already existed when it was inserted (then it is missing from the result)."""
        found: dict[int, np.ndarray] = {}
        for _, toks, values in self.trie._dump():
            owners = np.asarray(values, dtype=np.uint64) >> np.uint64(POS_BITS)
            for owner in np.unique(owners).tolist():
                n = lengths.get(int(owner))
                if n is not None and owner not in found and n <= owners.size and int(owners[n - 1]) == owner:
                    found[int(owner)] = np.asarray(toks[:n], dtype=np.uint32).copy()
        return found

    def pin(self, prefix: np.ndarray) -> Any:
        """Pin the node ending ``prefix`` (a reference keeps its parent's prefix in the trie)."""
        return self.trie.pin(self.trie.match_prefix(prefix, namespace=self.namespace).node)

    def unpin(self, pin: Any) -> None:
        try:
            self.trie.unpin(pin)
        except Exception:  # pragma: no cover - a pin released with its trie
            pass

    def snapshot(self) -> bytes:
        return bytes(self.trie.snapshot())

    @staticmethod
    def restore(blob: bytes) -> Any:
        from ..trie import Trie

        return Trie.restore(blob)

    @staticmethod
    def rebuilt(namespace: str, sessions: Iterable[tuple[int, np.ndarray]]) -> PrefixIndex:
        """A fresh index holding exactly ``sessions`` (number, tokens)."""
        from ..trie import Trie

        index = PrefixIndex(Trie(), namespace)
        for number, toks in sessions:
            index.insert(number, toks)
        return index
