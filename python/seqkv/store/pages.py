"""The hot tier's memory: KV pages in a pool, shared between sessions through a radix trie.

:class:`KVPagePool` holds KV in fixed-size **pages** of ``page_tokens`` positions, each laid out
``[layers, 2 (K, V), kv_heads, page_tokens, head_dim]`` (the model's dtype and device), allocated
in chunks of whole pages so that growing the pool never moves a page a reader is copying.

:class:`HotPrefixIndex` puts a :class:`seqkv.Trie` (``page_size=page_tokens``; its own instance,
so its evictions touch nothing else) over the pool, in the manner of SGLang's ``RadixCache`` with
``page_size > 1``: the value of the ``i``-th token of a page stored in slot ``s`` is
``s * page_tokens + i``. ``insert(tokens, cache)`` returns a :class:`HotHandle`; the session's
full pages that the trie already holds **with the same bits** are shared (stored once), the
others are written to new pages and inserted, and the handle pins the trie node where its shared
pages end, so that nothing it uses is evicted. What is left (the last partial page, and every
page from the first one whose bits differ from the trie's) is kept privately by the handle.
``release(handle)`` unpins it and frees every page no other handle uses (``Trie.evict`` of all
unpinned leaves, returning their slots to the pool).

Sharing never changes the bits a session is served: a page is shared only when it is bitwise
equal (compared as integers: ``-0.0``, NaN payloads and all) to the KV the new session brought.
With the batch-invariant engine (``SessionStore(engine=...)``) a prefix's KV is the same in
every session, so every common full page is shared; transformers may compute a prefix's KV with
other last bits under another schedule or length, and such a session keeps its own copy from the
first differing page on.

Accounting: each page in use is **charged** to one handle using it (its payer); a handle's
:attr:`HotHandle.charge` is its private bytes plus the pages it pays for, so the charges of the
live handles add up to the bytes the index holds (pool pages in use plus private tails). The
payer of a page is its most recently used user (:meth:`HotPrefixIndex.touch` makes a handle the
payer of all its pages): under an LRU demotion policy the least recently used session then pays
only for what no more recent session uses, so demoting it frees exactly its charge. When a
payer is released, each of its pages still in use is charged to the most recent remaining
user: :meth:`HotPrefixIndex.release` returns those handles with their new charges.

Thread safety: every method may be called from many threads. Trie mutations, pins taken for
handles, charges and the page tables change under one index lock (never held while KV is
copied); lookups match the trie without it (lock-free), take it only to pick a handle from a
table, and pin what they read, so that a page is never freed or reused while it is copied.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..codecs.base import common_prefix_length
from ..errors import InvalidInputError, StoreError

__all__ = ["KVPagePool", "HotPrefixIndex", "HotHandle", "ReleasedHandleError", "DEFAULT_PAGE_TOKENS"]

#: Positions per page by default (SGLang's common GPU page sizes are 16 to 64; the trie shares
#: whole pages, so smaller pages share more of prefixes that end mid-page).
DEFAULT_PAGE_TOKENS = 16
_CHUNK_BYTES = 8 << 20  # bytes of pool storage allocated at once (at least one page)


class ReleasedHandleError(StoreError):
    """A :class:`HotHandle` was released (its session left the hot tier) before it was read."""


def _int_view(t: Any) -> Any:
    """``t``'s bits as a same-width integer tensor (a view), for bitwise comparisons."""
    import torch

    kinds = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.view(kinds[t.element_size()])


class KVPagePool:
    """Thread-safe storage of KV pages; see the module docstring.

    ``layers``, ``kv_heads``, ``head_dim``: the model's KV layout; ``page_tokens``: positions per
    page; ``dtype``/``device``: torch's, of the model's cache. ``chunk_bytes``: storage allocated
    at once (rounded to whole pages, at least one). Raises :class:`InvalidInputError` for a
    dimension below 1.
    """

    def __init__(
        self,
        layers: int,
        kv_heads: int,
        head_dim: int,
        page_tokens: int = DEFAULT_PAGE_TOKENS,
        *,
        dtype: Any = None,
        device: Any = "cpu",
        chunk_bytes: int = _CHUNK_BYTES,
    ) -> None:
        import torch

        dims = {"layers": layers, "kv_heads": kv_heads, "head_dim": head_dim, "page_tokens": page_tokens}
        for name, v in dims.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InvalidInputError(f"{name} must be an int >= 1, not {v!r}")
        self.layers, self.kv_heads, self.head_dim, self.page_tokens = layers, kv_heads, head_dim, page_tokens
        self.dtype = torch.float32 if dtype is None else dtype
        self.device = torch.device(device)
        self.page_shape = (layers, 2, kv_heads, page_tokens, head_dim)
        self.token_bytes = layers * 2 * kv_heads * head_dim * torch.empty((), dtype=self.dtype).element_size()
        self.page_bytes = self.token_bytes * page_tokens
        self.chunk_pages = max(1, int(chunk_bytes) // self.page_bytes)
        self._lock = threading.Lock()
        self._chunks: list[Any] = []
        self._free: list[int] = []  # a heap: the lowest slot first, so that the last chunks empty out
        self._allocated = bytearray()  # per slot: 1 while allocated
        self._used_per_chunk: list[int] = []
        self._in_use = 0

    # -- allocation ------------------------------------------------------------------------

    def alloc(self, n: int) -> np.ndarray:
        """``n`` free page slots (int64), growing the pool by whole chunks when needed."""
        import torch

        out = np.empty(n, dtype=np.int64)
        with self._lock:
            while len(self._free) < n:
                base = len(self._chunks) * self.chunk_pages
                with torch.inference_mode(False):  # a normal tensor: written in place from any mode
                    chunk = torch.empty((self.chunk_pages, *self.page_shape), dtype=self.dtype, device=self.device)
                self._chunks.append(chunk)
                self._used_per_chunk.append(0)
                self._allocated.extend(bytes(self.chunk_pages))
                for s in range(base, base + self.chunk_pages):
                    heapq.heappush(self._free, s)
            for i in range(n):
                s = heapq.heappop(self._free)
                out[i] = s
                self._allocated[s] = 1
                self._used_per_chunk[s // self.chunk_pages] += 1
            self._in_use += n
        return out

    def free(self, slots: Any) -> None:
        """Return page slots to the pool; trailing chunks left empty are given back to the allocator.
        Raises :class:`InvalidInputError` for a slot that is not allocated."""
        slots = [int(s) for s in np.asarray(slots, dtype=np.int64).reshape(-1)]
        with self._lock:
            if len(set(slots)) != len(slots):
                raise InvalidInputError("a page slot is freed twice")
            for s in slots:
                if not (0 <= s < len(self._allocated) and self._allocated[s]):
                    raise InvalidInputError(f"page slot {s} is not allocated")
            for s in slots:
                self._allocated[s] = 0
                heapq.heappush(self._free, s)
                self._used_per_chunk[s // self.chunk_pages] -= 1
            self._in_use -= len(slots)
            shrunk = False
            while self._chunks and self._used_per_chunk[-1] == 0:
                self._chunks.pop()
                self._used_per_chunk.pop()
                shrunk = True
            if shrunk:
                limit = len(self._chunks) * self.chunk_pages
                del self._allocated[limit:]
                self._free = [s for s in self._free if s < limit]
                heapq.heapify(self._free)

    # -- copies (no lock: callers own or pin the slots they touch) -------------------------

    def _runs(self, slots: np.ndarray) -> list[tuple[int, int, int, int]]:
        """``(first index in slots, count, chunk, first page in chunk)`` of consecutive slots."""
        runs = []
        i, n = 0, len(slots)
        while i < n:
            s = int(slots[i])
            c, p = divmod(s, self.chunk_pages)
            j = i + 1
            while j < n and int(slots[j]) == s + (j - i) and (p + j - i) < self.chunk_pages:
                j += 1
            runs.append((i, j - i, c, p))
            i = j
        return runs

    def _pages_of(self, kv: Any, start: int, count: int) -> Any:
        """Positions ``start .. start + count * page_tokens`` of ``kv`` (``[L, 2, H, n, D]``) as a
        ``[count, L, 2, H, P, D]`` view."""
        P = self.page_tokens
        return kv[..., start : start + count * P, :].unflatten(3, (count, P)).permute(3, 0, 1, 2, 4, 5)

    def write(self, slots: np.ndarray, kv: Any, start: int = 0) -> None:
        """Copy ``len(slots)`` pages of ``kv`` (``[L, 2, H, n, D]``) from position ``start`` into ``slots``."""
        P = self.page_tokens
        for i, k, c, p in self._runs(slots):
            self._chunks[c][p : p + k].copy_(self._pages_of(kv, start + i * P, k))

    def read_into(self, out: Any, slots: np.ndarray, n: int) -> None:
        """Copy the first ``n`` positions held by ``slots`` (pages in order) into ``out[..., :n, :]``
        (``out``: ``[L, 2, H, >= n, D]``)."""
        P = self.page_tokens
        full = n // P
        for i, k, c, p in self._runs(slots[:full]):
            self._pages_of(out, i * P, k).copy_(self._chunks[c][p : p + k])
        rest = n - full * P
        if rest:
            c, p = divmod(int(slots[full]), self.chunk_pages)
            out[..., full * P : n, :].copy_(self._chunks[c][p, :, :, :, :rest, :])

    def equal_pages(self, slots: np.ndarray, kv: Any, start: int = 0) -> int:
        """How many of the pages ``slots`` (from the first) hold exactly the bits of ``kv``'s
        positions from ``start`` on."""
        P = self.page_tokens
        for i, k, c, p in self._runs(slots):
            a = _int_view(self._chunks[c][p : p + k])
            b = _int_view(self._pages_of(kv, start + i * P, k))
            differs = (a != b).reshape(k, -1).any(dim=1)
            if bool(differs.any()):
                return i + int(differs.nonzero()[0, 0])
        return len(slots)

    # -- sizes -------------------------------------------------------------------------

    @property
    def pages_in_use(self) -> int:
        with self._lock:
            return self._in_use

    @property
    def bytes_in_use(self) -> int:
        """Bytes of the pages allocated (``pages_in_use * page_bytes``)."""
        return self.pages_in_use * self.page_bytes

    @property
    def bytes_reserved(self) -> int:
        """Bytes of storage the pool holds (whole chunks, free pages included)."""
        with self._lock:
            return len(self._chunks) * self.chunk_pages * self.page_bytes


_ids = itertools.count(1)


@dataclass(eq=False)
class HotHandle:
    """One session's KV in a :class:`HotPrefixIndex`: ``shared`` positions in trie pages
    (``pages``), the rest (``private``) its own. ``charge``: bytes accounted to it (its private
    bytes plus the pages it pays for). ``owner``: what the caller attached (a session number)."""

    owner: Any
    tokens: np.ndarray = field(repr=False)
    shared: int = 0
    pages: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64), repr=False)
    private: Any = field(default=None, repr=False)  # [L, 2, H, n - shared, D] tensor, or (foreign layout) a list of (k, v)
    private_bytes: int = 0
    charge: int = 0
    released: bool = False
    last_use: int = 0  # the index's use stamp (insert, touch): the latest user of a page pays
    keys: list = field(default_factory=list, repr=False)  # its entries in the index's page-start table
    node: Any = None  # the trie node pinned for the shared pages (None: no shared page)
    id: int = field(default_factory=lambda: next(_ids))

    @property
    def n(self) -> int:
        """Positions held."""
        return int(self.tokens.size)


class HotPrefixIndex:
    """KV of hot sessions in shared, refcounted pages under a radix trie; see the module docstring.

    ``config``: the model's transformers config (gathered caches are ``DynamicCache`` s built with
    it); the other arguments are :class:`KVPagePool`'s. :meth:`for_model` reads them off a model.
    """

    def __init__(
        self,
        layers: int,
        kv_heads: int,
        head_dim: int,
        page_tokens: int = DEFAULT_PAGE_TOKENS,
        *,
        dtype: Any = None,
        device: Any = "cpu",
        config: Any = None,
        chunk_bytes: int = _CHUNK_BYTES,
    ) -> None:
        from ..trie import Trie

        self.pool = KVPagePool(layers, kv_heads, head_dim, page_tokens, dtype=dtype, device=device, chunk_bytes=chunk_bytes)
        self.page_tokens = page_tokens
        self.config = config
        self.trie = Trie(page_size=page_tokens)
        self._lock = threading.RLock()
        self._handles: dict[int, HotHandle] = {}
        # (hash of tokens[:j * P], tokens[j * P]) -> the handles holding that prefix and next token,
        # for every page start j * P < n of each handle: extends a trie match past its last page
        self._by_prefix: dict[tuple[bytes, int], dict[int, HotHandle]] = {}
        self._users: dict[int, dict[int, HotHandle]] = {}  # page slot -> handles using it
        self._payer: dict[int, HotHandle] = {}  # page slot -> the handle charged for it
        self._clock = itertools.count(1)  # use stamps (HotHandle.last_use)
        self._orphans: set[int] = set()  # pages in the trie no handle uses (held by a reader's pin)
        self._private_bytes = 0
        self._logical_tokens = 0

    @classmethod
    def for_model(cls, model: Any, page_tokens: int = DEFAULT_PAGE_TOKENS, **kwargs: Any) -> "HotPrefixIndex":
        """An index laid out for ``model``'s KV cache (layers, KV heads, head dim, parameter dtype/device)."""
        config = model.config
        heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
        dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        param = next(iter(model.parameters()))
        return cls(int(config.num_hidden_layers), heads, dim, page_tokens, dtype=param.dtype, device=param.device,
                   config=config, **kwargs)

    # -- building blocks ---------------------------------------------------------------------

    def _stack(self, cache: Any, n: int) -> Any:
        """The cache as one ``[L, 2, H, n, D]`` tensor, or ``None`` when its layout is not the pool's."""
        import torch

        from ..integrations import transformers as hf

        layers = hf.cache_layers(cache)
        pool = self.pool
        want = (1, pool.kv_heads, n, pool.head_dim)
        if len(layers) != pool.layers or any(
            tuple(t.shape) != want or t.dtype != pool.dtype or t.device != pool.device for kv in layers for t in kv
        ):
            return None
        with torch.no_grad():
            return torch.stack([torch.stack((k[0], v[0])) for k, v in layers])

    def _page_keys(self, toks: np.ndarray) -> list[tuple[bytes, int]]:
        """``(hash of toks[:j * P], toks[j * P])`` for every page start ``j * P < len(toks)``."""
        P = self.page_tokens
        h = hashlib.blake2b(digest_size=16)
        keys = []
        for j in range(0, toks.size, P):
            keys.append((h.digest(), int(toks[j])))
            h.update(toks[j : j + P].tobytes())
        return keys

    def _values(self, slots: np.ndarray) -> np.ndarray:
        P = self.page_tokens
        return (np.repeat(slots.astype(np.uint64) * np.uint64(P), P) + np.tile(np.arange(P, dtype=np.uint64), len(slots)))

    def _slots(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=np.uint64)[:: self.page_tokens] // np.uint64(self.page_tokens)).astype(np.int64)

    def _node_at(self, tokens: np.ndarray, values: np.ndarray) -> Any:
        """Pin a trie node that ends exactly at ``len(tokens)`` (splitting an edge if needed: an
        insert of stored tokens stores nothing but makes a node there). Under the lock."""
        self.trie.insert(tokens, values=values)
        m = self.trie.match_prefix(tokens, pin=True)
        if int(m.length) != tokens.size:  # pragma: no cover - the path is pinned by the caller
            self.trie.unpin(m.node)
            raise StoreError(f"hot index: the trie path of {tokens.size} tokens vanished while pinned")
        return m.node

    def _collect(self) -> None:
        """Free every page no pin protects (under the lock)."""
        freed = self.trie.evict(1 << 62)
        if freed.size:
            slots = np.unique(freed // np.uint64(self.page_tokens)).astype(np.int64)
            for s in slots.tolist():
                self._users.pop(s, None)
                self._payer.pop(s, None)
                self._orphans.discard(s)
            self.pool.free(slots)

    def _unpin(self, node: Any) -> None:
        """Release a reader's or an insert's temporary pin, then free pages it alone held."""
        self.trie.unpin(node)
        if self._orphans:
            with self._lock:
                self._collect()

    # -- insert / release --------------------------------------------------------------------

    def insert(self, tokens: Any, cache: Any, owner: Any = None, *, share: bool = True) -> HotHandle:
        """Keep ``cache`` (the KV of ``tokens``, batch 1) hot; returns its handle. Full pages that the
        trie holds with the same bits are shared; new full pages are inserted (when ``share``) so
        that later sessions share them; the rest stays private to the handle. A cache whose
        layout is not the pool's (dtype, device, shape) is kept whole and private.
        Raises :class:`InvalidInputError` when the cache does not hold ``len(tokens)`` positions."""
        from ..integrations import transformers as hf

        toks = np.ascontiguousarray(np.asarray(tokens).reshape(-1).astype(np.uint32))
        n = int(toks.size)
        if hf.cache_length(cache) != n:
            raise InvalidInputError(f"the cache holds {hf.cache_length(cache)} positions, tokens {n}")
        handle = HotHandle(owner, toks)
        handle.keys = self._page_keys(toks)
        kv = self._stack(cache, n)
        if kv is None:  # foreign layout: a private copy of every layer
            handle.private = [(k.clone(), v.clone()) for k, v in hf.cache_layers(cache)]
            handle.private_bytes = sum(int(t.numel()) * t.element_size() for kv_ in handle.private for t in kv_)
            return self._register(handle, 0, np.empty(0, np.int64), None)
        P = self.page_tokens
        F = n // P
        if not share or F == 0:
            self._set_private(handle, kv, 0)
            return self._register(handle, 0, np.empty(0, np.int64), None)
        full = toks[: F * P]
        temp = None  # a pin on the stored path we compare against
        checked = 0  # pages of the stored path known to equal ours
        try:
            while True:
                m = self.trie.match_prefix(full, pin=True)
                if temp is not None:
                    self.trie.unpin(temp)
                temp = m.node
                have = self._slots(m.values)
                same = checked + self.pool.equal_pages(have[checked:], kv, checked * P)
                if same < len(have) or len(have) == F:  # diverged, or every full page is stored
                    self._set_private(handle, kv, same * P)
                    with self._lock:
                        node = self._node_at(full[: same * P], self._values(have[:same])) if same else None
                        return self._register(handle, same * P, have[:same], node)
                checked = len(have)
                new = self.pool.alloc(F - len(have))
                stored = False
                try:
                    self.pool.write(new, kv, len(have) * P)
                    self._set_private(handle, kv, F * P)
                    with self._lock:
                        if int(self.trie.match_prefix(full).length) == len(have) * P:
                            slots = np.concatenate([have, new])
                            self.trie.insert(full, values=self._values(slots))
                            node = self.trie.match_prefix(full, pin=True).node
                            stored = True
                            return self._register(handle, F * P, slots, node)
                finally:
                    if not stored:  # another thread stored these pages first: compare with theirs
                        self.pool.free(new)
        finally:
            if temp is not None:
                self._unpin(temp)

    @staticmethod
    def _set_private(handle: HotHandle, kv: Any, shared: int) -> None:
        """The positions from ``shared`` on, kept by the handle alone (``kv`` itself when nothing is shared)."""
        if shared < handle.n:
            handle.private = kv[..., shared:, :].clone() if shared else kv
            handle.private_bytes = int(handle.private.numel()) * handle.private.element_size()
        else:
            handle.private, handle.private_bytes = None, 0

    def _register(self, handle: HotHandle, shared: int, slots: np.ndarray, node: Any) -> HotHandle:
        with self._lock:
            handle.shared, handle.pages, handle.node = shared, slots, node  # node: pinned by the caller
            handle.charge = handle.private_bytes
            handle.last_use = next(self._clock)
            for s in slots.tolist():
                users = self._users.setdefault(s, {})
                if not users:  # a new page (or one only a reader held): the new handle pays
                    handle.charge += self.pool.page_bytes
                    self._payer[s] = handle
                    self._orphans.discard(s)
                users[handle.id] = handle  # a shared page's payer keeps paying until touch()
            self._handles[handle.id] = handle
            for key in handle.keys:
                self._by_prefix.setdefault(key, {})[handle.id] = handle
            self._private_bytes += handle.private_bytes
            self._logical_tokens += handle.n
            return handle

    def release(self, handle: HotHandle) -> dict[HotHandle, int]:
        """Forget ``handle``: unpin its pages and free those no other handle uses. Returns the
        handles whose charge grew (they now pay for pages the released one paid for), with their
        new charges. Releasing twice is a no-op."""
        changed: dict[HotHandle, int] = {}
        with self._lock:
            if handle.released:
                return changed
            handle.released = True
            self._handles.pop(handle.id, None)
            for key in handle.keys:
                at = self._by_prefix.get(key)
                if at is not None:
                    at.pop(handle.id, None)
                    if not at:
                        del self._by_prefix[key]
            for s in handle.pages.tolist():
                users = self._users.get(s)
                if users is None:  # pragma: no cover - a page of a live handle is always tracked
                    continue
                users.pop(handle.id, None)
                if self._payer.get(s) is not handle:
                    continue
                if not users:
                    del self._payer[s]
                    self._orphans.add(s)
                else:
                    heir = max(users.values(), key=lambda h: h.last_use)
                    self._payer[s] = heir
                    heir.charge += self.pool.page_bytes
                    changed[heir] = heir.charge
            self._private_bytes -= handle.private_bytes
            self._logical_tokens -= handle.n
            handle.charge = 0
            handle.private = None
            if handle.node is not None:
                self.trie.unpin(handle.node)
            if self._orphans:
                self._collect()
        return changed

    def touch(self, handle: HotHandle) -> dict[HotHandle, int]:
        """Record a use of ``handle``: it becomes the most recent user, and so the payer, of every
        page it uses. Returns the handles whose charge changed (the previous payers, which now
        pay less, and ``handle``), with their new charges; ``{}`` for a released handle."""
        changed: dict[HotHandle, int] = {}
        with self._lock:
            if handle.released:
                return changed
            handle.last_use = next(self._clock)
            for s in handle.pages.tolist():
                payer = self._payer[s]
                if payer is handle:
                    continue
                self._payer[s] = handle
                payer.charge -= self.pool.page_bytes
                handle.charge += self.pool.page_bytes
                changed[payer] = payer.charge
            if changed:
                changed[handle] = handle.charge
        return changed

    # -- reads -------------------------------------------------------------------------------

    def _build(self, n: int, shared: int, slots: np.ndarray, private: Any) -> Any:
        """A ``DynamicCache`` of the first ``n`` positions (pages for ``< shared``, then private)."""
        import torch

        from ..integrations.transformers import cache_from_config_layers

        if isinstance(private, list):  # foreign layout
            layers = [(k[..., :n, :].clone(), v[..., :n, :].clone()) for k, v in private]
            return cache_from_config_layers(self.config, layers)
        pool = self.pool
        with torch.no_grad():
            out = torch.empty((pool.layers, 2, pool.kv_heads, n, pool.head_dim), dtype=pool.dtype, device=pool.device)
            k = min(n, shared)
            if k:
                pool.read_into(out, slots, k)
            if n > k:
                out[..., k:n, :].copy_(private[..., : n - k, :])
        layers = [(out[i, 0].unsqueeze(0), out[i, 1].unsqueeze(0)) for i in range(pool.layers)]
        return cache_from_config_layers(self.config, layers)

    def gather(self, handle: HotHandle, n: int | None = None) -> Any:
        """A ``DynamicCache`` (a copy the caller owns) of the first ``n`` positions of ``handle``
        (default: all), bit for bit the KV it was inserted with. Raises
        :class:`ReleasedHandleError` when the handle was released, :class:`InvalidInputError`
        for ``n`` out of range."""
        n = handle.n if n is None else int(n)
        if not 0 <= n <= handle.n:
            raise InvalidInputError(f"n must be in 0..{handle.n}, not {n}")
        with self._lock:
            if handle.released:
                raise ReleasedHandleError("the hot KV was released before it was read")
            pin = None if handle.node is None else self.trie.pin(handle.node)
            shared, slots, private = handle.shared, handle.pages, handle.private
        try:
            return self._build(n, shared, slots, private)
        finally:
            if pin is not None:
                self._unpin(pin)

    def match(self, tokens: Any) -> tuple[int, np.ndarray]:
        """``(n, slots)``: the longest prefix of ``tokens`` stored in whole pages, and its page
        slots (a snapshot: pages may be freed right after; :meth:`lookup` reads them safely)."""
        toks = np.asarray(tokens).reshape(-1).astype(np.uint32)
        m = self.trie.match_prefix(toks)
        return int(m.length), self._slots(m.values)

    def lookup(self, tokens: Any, limit: int | None = None) -> tuple[int, Any, Any]:
        """``(n, cache, owner)``: the longest prefix of ``tokens`` whose KV the index holds (a copy
        the caller owns), and the owner of a handle holding it; ``(0, None, None)`` when nothing
        matches. One trie match finds the whole shared pages; the positions after them (part of
        a page, or a handle's private part) come from the handles that hold the matched prefix
        and the next token (one table look-up, then a comparison per such handle). ``limit``
        caps ``n``."""
        toks = np.ascontiguousarray(np.asarray(tokens).reshape(-1).astype(np.uint32))
        if limit is not None:
            toks = toks[: max(0, int(limit))]
        if toks.size == 0:
            return 0, None, None
        P = self.page_tokens
        m = self.trie.match_prefix(toks[: toks.size // P * P], pin=True)
        pins: list[Any] = [m.node]
        try:
            length = int(m.length)
            key = (hashlib.blake2b(toks[:length].tobytes(), digest_size=16).digest(), int(toks[length])) if length < toks.size else None
            with self._lock:
                best, ext = None, 0
                for h in self._by_prefix.get(key, {}).values() if key is not None else ():
                    e = common_prefix_length(h.tokens[length:], toks[length:])
                    if e > ext and np.array_equal(h.tokens[:length], toks[:length]):
                        best, ext = h, e
                if best is not None:
                    n, shared, slots, private, owner = length + ext, best.shared, best.pages, best.private, best.owner
                    if best.node is not None:
                        pins.append(self.trie.pin(best.node))  # its pages past the match
                else:
                    slots = self._slots(m.values)
                    n, shared, private = length, length, None
                    payer = self._payer.get(int(slots[-1])) if slots.size else None
                    owner = None if payer is None else payer.owner
            if n == 0:
                return 0, None, None
            return n, self._build(n, shared, slots, private), owner
        finally:
            for pin in pins:
                self._unpin(pin)

    # -- stats ---------------------------------------------------------------------------------

    def bytes_held(self) -> int:
        """Bytes of KV the index holds: pool pages in use plus private parts (= the sum of the
        live handles' charges, plus pages a reader still pins after their last user left)."""
        with self._lock:
            return self.pool.bytes_in_use + self._private_bytes

    def stats(self) -> dict[str, Any]:
        """``handles``; ``page_tokens``, ``page_bytes``; ``pages`` (in use), ``pages_shared`` (used by
        two handles or more); ``pool_bytes`` (pages in use), ``reserved_bytes`` (pool storage
        allocated), ``private_bytes``; ``unique_bytes`` = pool + private; ``logical_bytes``: what a
        copy per handle would take; ``shared_tokens`` (positions served from pages, summed over
        handles); ``trie``: the index trie's stats."""
        with self._lock:
            pool_bytes = self.pool.bytes_in_use
            return {
                "handles": len(self._handles),
                "page_tokens": self.page_tokens,
                "page_bytes": self.pool.page_bytes,
                "pages": self.pool.pages_in_use,
                "pages_shared": sum(1 for u in self._users.values() if len(u) > 1),
                "pool_bytes": pool_bytes,
                "reserved_bytes": self.pool.bytes_reserved,
                "private_bytes": self._private_bytes,
                "unique_bytes": pool_bytes + self._private_bytes,
                "logical_bytes": self._logical_tokens * self.pool.token_bytes,
                "shared_tokens": sum(h.shared for h in self._handles.values()),
                "trie": self.trie.stats(),
            }

    def close(self) -> None:
        """Release every handle."""
        with self._lock:
            for h in list(self._handles.values()):
                self.release(h)
