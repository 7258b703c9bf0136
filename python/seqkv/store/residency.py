"""KV residency: which sessions' KV is held in memory, in which form, within a byte budget.

A :class:`Residency` keeps each tracked session (by number) in one tier: **hot** (its KV in the
pages of a :class:`~seqkv.store.pages.HotPrefixIndex`, full pages of a shared prefix stored
once), **warm** (quantized by :class:`~seqkv.store.warm.WarmCodec`) or **cold** (no KV in
memory). Placement is decided by :class:`~seqkv.store.tiers.Tiers` (LRU or ``plt``); this class
carries its moves out, counts hits and reports sizes. It knows nothing of models, codecs or
backends: it takes KV caches of a :class:`KVLayout` and gives them back, so it can be driven
with synthetic tensors.

Thread safety: one lock guards all of its state; the hot index has its own lock, always taken
after this one. Copying a hot session's pages out (pinned while read) and dequantizing warm KV
run outside the lock.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..codecs.base import common_prefix_length
from ..errors import InvalidInputError
from .config import TIER_NAMES
from .pages import HotPrefixIndex, ReleasedHandleError
from .tiers import Tiers
from .warm import WarmCodec, WarmKV

__all__ = ["Residency", "KVLayout", "Built", "HotKV"]


@dataclass(frozen=True)
class KVLayout:
    """The shape of a model's KV cache: ``layers`` × (K, V) of ``[1, kv_heads, n, head_dim]``
    tensors of ``dtype`` on ``device``; ``config`` lays out the ``DynamicCache`` built from them."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: Any
    device: Any
    config: Any

    @classmethod
    def of_model(cls, model: Any) -> KVLayout:
        config = model.config
        heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
        dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        param = next(iter(model.parameters()))
        return cls(int(config.num_hidden_layers), heads, dim, param.dtype, param.device, config)

    @property
    def element_bytes(self) -> int:
        import torch

        return int(torch.empty((), dtype=self.dtype).element_size())


@dataclass
class HotKV:
    """A session's KV in the hot tier: its handle in the hot index (pages shared with other hot
    sessions, plus a private part). ``kind``: ``"exact"`` (the recorded KV), ``"faithful"`` (one
    prefill) or ``"quantized"`` (dequantized warm KV, never shared; ``codes`` keeps the warm form
    so that a later demotion does not quantize twice)."""

    handle: Any
    kind: str
    codes: WarmKV | None = None

    @property
    def nbytes(self) -> int:
        """Bytes charged to the session in the hot tier: its handle's charge (its private part and
        the shared pages it pays for) plus the warm codes it keeps."""
        return self.handle.charge + (self.codes.nbytes if self.codes is not None else 0)


@dataclass
class Built:
    """A cache built for a read and what it is, offered for promotion."""

    tokens: np.ndarray
    cache: Any
    kind: str
    codes: WarmKV | None = None


def _key(number: int) -> str:
    """The tier manager's key of a session number (numbers are never reused, ids may be)."""
    return f"#{number}"


class Residency:
    """The in-memory tiers of a store (see the module doc). ``capacity_bytes=None``: unbounded."""

    def __init__(
        self,
        layout: KVLayout,
        tiers: tuple[str, ...],
        *,
        capacity_bytes: int | None,
        policy: str = "lru",
        tier_limits: Any = None,
        warm_bits: int = 3,
        page_tokens: int = 16,
    ):
        self.layout = layout
        self.capacity_bytes = capacity_bytes
        if tier_limits is None and capacity_bytes is not None and "warm" in tiers and "hot" in tiers:
            tier_limits = {"hot": capacity_bytes * 3 // 4}  # leave demoted sessions room in warm
        self._tiers = Tiers(
            sys.maxsize if capacity_bytes is None else capacity_bytes, policy, tiers=tiers, limits=tier_limits
        )
        self.warm_codec = WarmCodec(layout.head_dim, warm_bits) if "warm" in tiers else None
        self.hot_index = (
            HotPrefixIndex(layout.layers, layout.kv_heads, layout.head_dim, page_tokens, dtype=layout.dtype,
                           device=layout.device, config=layout.config)
            if "hot" in tiers else None
        )
        self._lock = threading.RLock()
        self._hot: dict[int, HotKV] = {}
        self._warm: dict[int, WarmKV] = {}
        self._held_tokens: dict[int, np.ndarray] = {}  # tokens of the sessions in hot/warm
        self._hits = dict.fromkeys(TIER_NAMES, 0)

    @property
    def tiers(self) -> tuple[str, ...]:
        return self._tiers.tiers

    @property
    def keeps_hot(self) -> bool:
        """Whether a new session's KV goes into the hot index (hot is the first tier)."""
        return self.hot_index is not None and self._tiers.tiers[0] == "hot"

    def _sizes(self, n_tokens: int, record_bytes: int) -> dict[str, int]:
        lay = self.layout
        sizes = {"cold": int(record_bytes)}
        if "hot" in self._tiers.tiers:
            sizes["hot"] = n_tokens * lay.layers * 2 * lay.kv_heads * lay.head_dim * lay.element_bytes
        if self.warm_codec is not None:
            wc, heads, dim = self.warm_codec, lay.kv_heads, lay.head_dim
            sizes["warm"] = lay.layers * (wc.nbytes(heads * n_tokens, dim, means=heads) + wc.nbytes(heads * n_tokens, dim))
        return sizes

    # -- tracking sessions ------------------------------------------------------------------

    def insert_hot(self, toks: np.ndarray, cache: Any, number: int) -> Any:
        """Copy a new session's KV into the hot index before it is tracked (outside the store's
        bookkeeping lock); :meth:`track` then places it, or :meth:`release` drops it."""
        assert self.hot_index is not None
        return self.hot_index.insert(toks, cache, owner=number)

    def release(self, handle: Any) -> None:
        with self._lock:
            self._release_hot(handle)

    def track(self, number: int, n_tokens: int, record_bytes: int, toks: np.ndarray | None = None,
              cache: Any = None, handle: Any = None) -> str:
        """Track a session: in the first tier with ``cache`` (hot: ``handle`` from
        :meth:`insert_hot`), or cold without it. Returns the tier it is in."""
        with self._lock:
            key = _key(number)
            sizes = self._sizes(n_tokens, record_bytes)
            first = self._tiers.tiers[0]
            if cache is None or first == "cold" or n_tokens == 0:
                if handle is not None:
                    self._release_hot(handle)
                self._apply(self._tiers.add(key, "cold", sizes=sizes))
                return self._tiers.tier_of(key)
            assert toks is not None
            self._held_tokens[number] = toks
            if first == "hot":
                assert handle is not None and self.hot_index is not None
                hot = HotKV(handle, "exact")
                self._hot[number] = hot
                for other in self.hot_index.touch(handle):  # the new session pays; the others pay less
                    if other is not handle:
                        self._sync_size(other.owner, "hot", 0)
                sizes["hot"] = hot.nbytes
            else:
                assert self.warm_codec is not None
                warm = self.warm_codec.quantize(cache)
                sizes["warm"] = warm.nbytes
                self._warm[number] = warm
            self._apply(self._tiers.add(key, first, sizes=sizes))
            return self._tiers.tier_of(key)

    def set_reuse(self, number: int, score: float) -> None:
        """The ``plt`` policy's reuse estimate of a session."""
        with self._lock:
            key = _key(number)
            if key in self._tiers:
                self._tiers.set_score(key, score)

    def forget(self, number: int) -> None:
        """Stop tracking a session and drop its KV."""
        with self._lock:
            self._tiers.remove(_key(number))
            hot = self._hot.pop(number, None)
            if hot is not None:
                self._release_hot(hot.handle)
            self._warm.pop(number, None)
            self._held_tokens.pop(number, None)

    # -- moves (under the lock) -------------------------------------------------------------

    def _apply(self, moves: list[Any], built: Built | None = None) -> None:
        """Carry out the tier manager's moves (demotions first, then the accessed entry's
        promotion, which installs ``built``), then report the real sizes of the entries that
        moved (which may demote others: carried out the same way)."""
        rank = TIER_NAMES.index
        sizes: list[tuple[int, str, int]] = []
        for move in moves:
            number = int(move.session_id[1:])
            if rank(move.to_tier) < rank(move.from_tier):
                sizes.extend(self._promote(number, move.from_tier, move.to_tier, built))
            else:
                sizes.extend(self._demote(number, move.from_tier, move.to_tier))
        for number, tier, nbytes in sizes:
            self._sync_size(number, tier, nbytes)

    def _demote(self, number: int, frm: str, to: str) -> list[tuple[int, str, int]]:
        codes: WarmKV | None = None
        sizes: list[tuple[int, str, int]] = []
        if frm == "hot":
            assert self.hot_index is not None
            hot = self._hot.pop(number)
            if to == "warm":
                assert self.warm_codec is not None
                codes = hot.codes if hot.codes is not None else self.warm_codec.quantize(self.hot_index.gather(hot.handle))
            sizes = self._release_hot(hot.handle, sync=False)
            # its hot charge may have been small (others paid for its shared pages): estimate a
            # later promotion at a copy of all its KV, which it pays for once it is used again
            sizes.append((number, "hot", self.hot_index.pool.token_bytes * hot.handle.n))
        elif frm == "warm":
            self._warm.pop(number)
        if codes is not None:
            self._warm[number] = codes
            return [(number, "warm", codes.nbytes), *sizes]
        self._held_tokens.pop(number, None)
        return sizes

    def _touch_hot(self, number: int) -> None:
        """Make a hot session the payer of the shared pages it uses (the most recently used
        session pays, see :mod:`seqkv.store.pages`) and report the charges that moved."""
        hot = self._hot.get(number)
        if hot is None or self.hot_index is None:
            return
        changed = self.hot_index.touch(hot.handle)
        for heir in sorted(changed, key=lambda h: h is hot.handle):  # decreases first
            self._sync_size(heir.owner, "hot", 0)

    def _release_hot(self, handle: Any, *, sync: bool = True) -> list[tuple[int, str, int]]:
        """Release a hot handle: the pages it alone used are freed, and the pages it paid for
        that other hot sessions still use are charged to one of them. Returns those sessions'
        new hot sizes (``sync``: reported to the tier manager right away)."""
        assert self.hot_index is not None
        sizes = []
        for heir in self.hot_index.release(handle):
            hot = self._hot.get(heir.owner)
            if hot is not None and hot.handle is heir:
                sizes.append((heir.owner, "hot", hot.nbytes))
        if sync:
            for number, tier, nbytes in sizes:
                self._sync_size(number, tier, nbytes)
        return sizes

    def _promote(self, number: int, frm: str, to: str, built: Built | None) -> list[tuple[int, str, int]]:
        if built is None:  # pragma: no cover - only the accessed entry is promoted, with its cache
            self._apply(self._tiers.place(_key(number), frm))
            return []
        self._held_tokens[number] = built.tokens
        if to == "hot":
            codes = self._warm.pop(number, None) if frm == "warm" else None
            codes = (built.codes or codes) if built.kind == "quantized" else None
            assert self.hot_index is not None
            handle = self.hot_index.insert(built.tokens, built.cache, owner=number, share=built.kind != "quantized")
            hot = HotKV(handle, built.kind, codes)
            self._hot[number] = hot
            return [(number, "hot", hot.nbytes)]
        assert self.warm_codec is not None  # cold -> warm
        warm = built.codes if built.codes is not None else self.warm_codec.quantize(built.cache)
        self._warm[number] = warm
        return [(number, "warm", warm.nbytes)]

    def _sync_size(self, number: int, tier: str, nbytes: int) -> None:
        key = _key(number)
        if key not in self._tiers:
            return
        if tier == "hot":
            hot = self._hot.get(number)
            if hot is not None:  # a hot session's charge changes as others come and go: the current one
                nbytes = hot.nbytes
            elif self._tiers.tier_of(key) != "hot":  # left the hot tier: the estimate for a promotion
                self._apply(self._tiers.resize(key, nbytes, "hot"))
                return
            else:  # pragma: no cover - a hot entry whose KV is not installed yet
                return
        if self._tiers.tier_of(key) == tier:
            self._apply(self._tiers.resize(key, nbytes, tier))

    # -- reads --------------------------------------------------------------------------------

    def tier_of(self, number: int) -> str:
        with self._lock:
            key = _key(number)
            return self._tiers.tier_of(key) if key in self._tiers else "cold"

    def read(self, number: int, mode: str) -> tuple[Built, str] | None:
        """The session's KV from memory: a copy of its hot KV when it is hot (for ``mode="exact"``
        only when that is the recorded KV), else (faithful only) its warm KV dequantized; ``None``
        when it has to come from the cold tier. Returns the KV and the tier that served it."""
        while True:
            with self._lock:
                hot, warm = self._hot.get(number), self._warm.get(number)
                held = self._held_tokens.get(number)
            if hot is not None and held is not None and (mode == "faithful" or hot.kind == "exact"):
                assert self.hot_index is not None
                try:
                    return Built(held, self.hot_index.gather(hot.handle), hot.kind, hot.codes), "hot"
                except ReleasedHandleError:
                    continue  # demoted while its pages were read: look again
            if warm is not None and held is not None and mode == "faithful":
                assert self.warm_codec is not None
                return Built(held, self.warm_codec.dequantize(self.layout.config, warm), "quantized", warm), "warm"
            return None

    def accessed(self, number: int, served: str, built: Built | None, *, promote: bool = True) -> None:
        """Count a hit in ``served`` and let the tier manager promote the session with ``built``
        (``None``: a hit that cannot promote, e.g. a prefix served from shared hot pages)."""
        with self._lock:
            self._hits[served] += 1
            key = _key(number)
            if key not in self._tiers:  # deleted meanwhile
                return
            self._apply(self._tiers.access(key, promote=promote and built is not None), built)
            self._touch_hot(number)
            if built is not None and self._tiers.tier_of(key) == "hot" and built.kind == "exact":
                hot = self._hot.get(number)
                if hot is not None and hot.kind != "exact":  # upgrade a faithful/quantized copy
                    assert self.hot_index is not None
                    handle = self.hot_index.insert(built.tokens, built.cache, owner=number)
                    self._hot[number] = HotKV(handle, "exact")
                    self._held_tokens[number] = built.tokens
                    self._release_hot(hot.handle)
                    self._sync_size(number, "hot", 0)

    def count_hit(self, tier: str) -> None:
        with self._lock:
            self._hits[tier] += 1

    def lookup_prefix(self, toks: np.ndarray) -> tuple[int, Any]:
        """``(n, cache)``: KV for the longest prefix of ``toks`` held in memory: the hot index's
        match, or a longer one a warm session holds (dequantized; the session promoted). Counts
        the hit. ``(0, None)`` when memory holds no prefix."""
        n_hot, hot_cache, owner = self.hot_index.lookup(toks) if self.hot_index is not None else (0, None, None)
        best: tuple[int, int, WarmKV, np.ndarray] | None = None  # a warm session holding more
        with self._lock:
            for number, warm in self._warm.items():
                held = self._held_tokens.get(number)
                if held is None:
                    continue
                n = common_prefix_length(held, toks)
                if n > n_hot and (best is None or n > best[0]):
                    best = (n, number, warm, held)
        if best is not None:
            from ..integrations import transformers as hf

            n, number, warm, held = best
            assert self.warm_codec is not None
            full = self.warm_codec.dequantize(self.layout.config, warm)
            out = (
                hf.cache_from_config_layers(
                    self.layout.config,
                    [(k[..., :n, :].clone(), v[..., :n, :].clone()) for k, v in hf.cache_layers(full)],
                )
                if n < warm.length
                else full
            )
            self.accessed(number, "warm", Built(held, full, "quantized", warm))  # promotion copies `full`
            return n, out
        if n_hot:
            if owner is not None:
                self.accessed(owner, "hot", None, promote=False)
            else:  # pragma: no cover - pages whose last user left while they were read
                self.count_hit("hot")
        return n_hot, hot_cache

    # -- explicit moves -----------------------------------------------------------------------

    def check_demotion_target(self, tier: str) -> None:
        """:class:`InvalidInputError` unless ``tier`` is one a session can be demoted to."""
        if tier not in self._tiers.tiers or tier == self._tiers.tiers[0]:
            raise InvalidInputError(f"demote to one of {self._tiers.tiers[1:]}, not {tier!r}")

    def demote(self, number: int, tier: str) -> str:
        """Move a session down to ``tier`` now; one already there or lower stays. Returns its tier."""
        self.check_demotion_target(tier)
        rank = TIER_NAMES.index
        with self._lock:
            key = _key(number)
            current = self._tiers.tier_of(key)
            if rank(tier) <= rank(current):
                return current
            sizes = self._demote(number, current, tier)
            self._apply(self._tiers.place(key, tier))
            for n, t, nbytes in sizes:
                self._sync_size(n, t, nbytes)
            return self._tiers.tier_of(key)

    def drop_all(self) -> None:
        """Every session goes cold; all in-memory KV is released."""
        with self._lock:
            for number in list(self._hot) + list(self._warm):
                self._tiers.place(_key(number), "cold")
            for hot in self._hot.values():
                self._release_hot(hot.handle, sync=False)
            self._hot.clear()
            self._warm.clear()
            self._held_tokens.clear()

    # -- stats ----------------------------------------------------------------------------------

    def stats(self, cold_bytes: int) -> dict[str, Any]:
        """Per tier: ``count``, ``bytes`` (cold: ``cold_bytes``, every record), ``hits``,
        ``promotions_in``, ``demotions_out``; hot adds the hot index's page figures. See
        :meth:`seqkv.store.SessionStore.tier_stats`."""
        with self._lock:
            st = self._tiers.stats()
            out: dict[str, Any] = {}
            for name in TIER_NAMES:
                t = st["tiers"].get(name)
                if t is None:
                    continue
                out[name] = {
                    "count": t["entries"],
                    "bytes": cold_bytes if name == "cold" else t["bytes"],
                    "hits": self._hits[name],
                    "promotions_in": t["promotions_in"],
                    "demotions_out": t["demotions_out"],
                }
            index = self.hot_index.stats() if self.hot_index is not None else None
            if index is not None and "hot" in out:
                out["hot"].update(
                    kv_bytes=index["unique_bytes"],
                    codes_bytes=sum(h.codes.nbytes for h in self._hot.values() if h.codes is not None),
                    logical_bytes=index["logical_bytes"],
                    pages=index["pages"],
                    pages_shared=index["pages_shared"],
                    page_tokens=index["page_tokens"],
                )
            return {
                "hot_index": index,
                "tiers": out,
                "capacity_bytes": self.capacity_bytes,
                "limits": {t: v["limit"] for t, v in st["tiers"].items() if t != "cold"}
                if self.capacity_bytes is not None
                else {},
                "used_bytes": st["used_bytes"],
                "policy": st["policy"],
            }
