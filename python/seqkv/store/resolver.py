"""Token resolution: a session's tokens, decoded from its record and its chain of prefix
references, checked against the recorded checksums, with an LRU of decoded sessions."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ..codecs.base import TOKEN_DTYPE
from ..errors import CorruptStreamError, SessionNotFoundError
from .catalog import Catalog, Entry, RecordMeta, check_tokens
from .layout import SharedTable, expand

__all__ = ["TokenResolver", "RetiredEntryError"]


class RetiredEntryError(Exception):
    """The entry was replaced or deleted while it was read (the caller looks its id up again)."""


class TokenResolver:
    """Decodes sessions' tokens. ``lock`` is the store's bookkeeping lock (guarding ``catalog``),
    ``codec_for(name)`` the codec of a record, ``model_lock`` held while a codec runs, ``table``
    the store's shared table (what layout-2 records leave out)."""

    def __init__(
        self,
        backend: Any,
        catalog: Catalog,
        lock: threading.RLock,
        codec_for: Callable[[str], Any],
        model_lock: threading.RLock,
        capacity: int,
        table: SharedTable,
    ):
        self._backend = backend
        self._table = table
        self._catalog = catalog
        self._lock = lock
        self._codec_for = codec_for
        self._model_lock = model_lock
        self._capacity = capacity
        self._lru: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()

    def remember(self, number: int, toks: np.ndarray) -> None:
        with self._lock:
            if self._capacity == 0:
                return
            self._lru[number] = toks
            self._lru.move_to_end(number)
            while len(self._lru) > self._capacity:
                self._lru.popitem(last=False)

    def forget(self, number: int) -> None:
        with self._lock:
            self._lru.pop(number, None)

    def clear(self) -> None:
        with self._lock:
            self._lru.clear()

    def cached(self, number: int) -> np.ndarray | None:
        with self._lock:
            return self._lru.get(number)

    def read_record(self, entry: Entry) -> Any:
        """The entry's record from the backend. Follows a move to its hidden id; raises
        :class:`RetiredEntryError` when the entry was retired meanwhile and
        :class:`CorruptStreamError` when the row is not the entry's."""
        while True:
            with self._lock:
                key = entry.key
            try:
                record = self._backend.get(key)
            except SessionNotFoundError:
                record = None
            if record is not None:
                meta = RecordMeta.from_stored(record.meta, key, self._table)
                if meta.number == entry.number:
                    if meta.tokens_crc32c != entry.meta.tokens_crc32c:
                        raise CorruptStreamError(f"record {key!r} changed under session number {entry.number}")
                    return record
            with self._lock:
                if self._catalog.by_number.get(entry.number) is not entry:
                    raise RetiredEntryError(entry.number)
                if entry.key != key:
                    continue  # moved to its hidden id
            if record is None:
                raise CorruptStreamError(f"the record of session {entry.meta.sid!r} is missing from the backend")
            raise CorruptStreamError(f"record {key!r} holds session number {meta.number}, not {entry.number}: a swapped row")

    def container(self, entry: Entry, record: Any) -> bytes:
        """The full ``SQKV`` container of the entry's record (layout 2 stores it stripped)."""
        if entry.meta.layout == 1:
            return bytes(record.container)
        meta = entry.meta
        return expand(record.container, self._table, meta.n_tokens - meta.prefix, meta.tokens_crc32c, f"record {entry.key!r}")

    def tokens(self, entry: Entry, progress: Any = None) -> np.ndarray:
        """The entry's tokens (the LRU's array: callers copy before handing it out)."""
        chain: list[Entry] = []
        base: np.ndarray | None = None
        with self._lock:
            e: Entry | None = entry
            while e is not None:
                base = self._lru.get(e.number)
                if base is not None:
                    break
                chain.append(e)
                e = self._catalog.check_parent(e)
        toks = base if base is not None else np.empty(0, dtype=TOKEN_DTYPE)
        for e in reversed(chain):
            record = self.read_record(e)
            prefix = toks[: e.meta.prefix]
            if prefix.size != e.meta.prefix:
                raise CorruptStreamError(f"session {e.meta.sid!r} references {e.meta.prefix} tokens its parent lacks")
            container = self.container(e, record)
            with self._model_lock:
                tail = self._codec_for(e.meta.codec).decode(container, context=prefix, progress=progress)
            toks = np.concatenate([prefix, np.asarray(tail)]).astype(TOKEN_DTYPE)
            check_tokens(e.meta, toks)
            self.remember(e.number, toks)
        return toks
