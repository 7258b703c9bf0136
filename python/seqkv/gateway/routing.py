"""Choosing a replica: the one whose resident prefixes cover most of a request's tokens.

Each replica's resident conversations (the nodes held in its slots or saved as slot files on
its disk) are kept in one shared :class:`seqkv.Trie`, one namespace per replica; a request goes
to the healthy replica with the longest match for its tokens (ties: the fewest busy slots).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..trie import Trie
from .errors import UpstreamUnavailableError

__all__ = ["Router"]


class Router:
    """Resident prefixes per replica name; ``tokens_of(node)`` gives a node's cached tokens."""

    def __init__(self, names: Sequence[str], tokens_of: Callable[[str], np.ndarray]):
        self.names = list(names)
        self.healthy = {n: True for n in self.names}
        self._resident: dict[str, set[str]] = {n: set() for n in self.names}
        self._tokens_of = tokens_of
        self._trie: Any = None  # rebuilt lazily after a removal (the trie has no delete by key)

    def add(self, replica: str, node: str) -> None:
        if node in self._resident[replica]:
            return
        self._resident[replica].add(node)
        if self._trie is not None:
            self._trie.insert(self._tokens_of(node), namespace=replica)

    def discard(self, replica: str, node: str) -> None:
        if node in self._resident[replica]:
            self._resident[replica].discard(node)
            self._trie = None

    def resident(self, replica: str) -> set[str]:
        return set(self._resident[replica])

    def coverage(self, replica: str, tokens: np.ndarray) -> int:
        if not tokens.size:
            return 0
        if self._trie is None:
            self._trie = Trie()
            for name, nodes in self._resident.items():
                for node in nodes:
                    self._trie.insert(self._tokens_of(node), namespace=name)
        return int(self._trie.match_prefix(tokens, namespace=replica).length)

    def choose(self, tokens: np.ndarray, busy: Callable[[str], int]) -> str:
        live = [n for n in self.names if self.healthy[n]]
        if not live:
            raise UpstreamUnavailableError("no upstream replica is available")
        return max(live, key=lambda n: (self.coverage(n, tokens), -busy(n), -self.names.index(n)))

    def mark_down(self, replica: str) -> None:
        """A replica that failed: nothing resident on it is trusted any more."""
        self.healthy[replica] = False
        self._resident[replica].clear()
        self._trie = None

    def mark_up(self, replica: str) -> None:
        self.healthy[replica] = True
