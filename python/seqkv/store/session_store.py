"""``SessionStore``: KV caches stored as token sequences, deduplicated through a shared trie,
with hot / warm / cold storage tiers under a memory budget.

``put(session_id, tokens)`` looks the tokens up in the trie. The longest prefix another
stored session already holds is stored as a **reference** (0 bits: the owning session's
number, its token checksum and the prefix length; the trie node is pinned while referenced);
only the tail is coded, by the store's codec (``lm`` by default, conditioned on the prefix as
context). The tokens then go into the trie, so later sessions dedupe against them.

Tiers
-----
Every session lives in the **cold** tier: its record (container, metadata, optional residual)
is written to the backend at ``put`` and stays there until the session is deleted. Above it,
within ``capacity_bytes`` of memory (256 MiB by default; ``None``: unbounded), the
:class:`~seqkv.store.residency.Residency` keeps sessions' KV **hot** (pages of a radix-indexed
pool, shared prefixes stored once) or **warm** (quantized per vector, about 3 bits per
component). Demotion (hot → warm → cold) happens when the budget is exceeded; promotion on
access. A session is never lost by demotion: the worst case is a cold restore from its tokens.

``get(session_id)`` serves from the hottest tier present:

* ``mode="faithful"``: the hot copy, else the warm codes dequantized (lossy), else one prefill
  over the decoded tokens;
* ``mode="exact"``: a hot copy only when it is the recorded KV itself; else the KV is
  recomputed replaying the schedule recorded at ``put``, checked against the per-layer hashes
  recorded then and corrected by the residual ``put(..., residual=True)`` kept
  (:class:`~seqkv.store.builder.KVBuilder`), or :class:`~seqkv.errors.NumericsMismatchError`.

With ``engine="auto"`` (or ``True``, or an :class:`seqkv.engine.cpu.Engine`) every KV the store
computes comes from the batch-invariant engine: exact restores match with a zero residual.

The parts
---------
:class:`~seqkv.store.config.StoreConfig` (options, validated once),
:class:`~seqkv.store.catalog.Catalog` (the record schema and the sessions by id and number),
:class:`~seqkv.store.dedup.PrefixIndex` (the trie: who holds a prefix),
:class:`~seqkv.store.resolver.TokenResolver` (tokens through prefix chains, checked),
:class:`~seqkv.store.builder.KVBuilder` (computing KV), and the residency manager. This class
wires them together.

Durability (``docs/durability.md``): records are the truth. A re-``put`` writes the new record
over the old in one backend transaction (the old version stays readable until the new one is
durable); session numbers come from the backend's persistent counter and are never reused, and
a reference records its parent's checksum; every decoded record is checked against its
``tokens_crc32c``. The trie is a cache, snapshotted by :meth:`checkpoint` and :meth:`close` and
rebuilt from the records when its snapshot is missing or unreadable. A record that cannot be
read at open is quarantined (:attr:`quarantined`) instead of stopping the store.

Thread safety and lock order
----------------------------
Every method may be called from many threads at once. Locks, always taken in this order: the
bookkeeping lock (catalog, trie, token LRU, backend writes), then the residency lock, then the
hot index's own lock. Model work runs outside all of them (under the model lock for
transformers; the engine needs none), and so do decoding, dequantizing warm KV and copying a
hot session's pages out. The model lock is never held while the bookkeeping lock is taken.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import numpy as np

from ..codecs.base import as_tokens
from ..coding.container import CODECS
from ..errors import CorruptStreamError, InvalidInputError, StoreError
from ..kv.hashing import combined_hash
from .builder import RESIDUAL, KVBuilder, resolve_engine
from .catalog import HIDDEN_PREFIX, RECORD_VERSION, Catalog, Entry, RecordMeta, allocate_number, hidden_key
from .config import TIER_NAMES, StoreConfig
from .dedup import PrefixIndex
from .layout import SharedTable, strip
from .residency import Built, KVLayout, Residency
from .resolver import RetiredEntryError, TokenResolver
from .results import PutResult, StoreStats

__all__ = ["SessionStore", "TIER_NAMES"]

_STORE_BLOB = "store"
_TRIE_BLOB = "trie"
#: A read that keeps finding its session replaced under it gives up after this many tries.
_READ_ATTEMPTS = 16


class SessionStore:
    """Store sessions' KV caches as tokens, with in-memory tiers (see the module doc).

    ``SessionStore(model, codec="lm", trie=None, tokenizer=None, *, backend=None, **options)``
    or ``SessionStore(model, config=StoreConfig(...), ...)``.

    model:
        the transformers causal LM whose caches are stored (and, for ``lm``, the coding model).
    trie:
        a :class:`~seqkv.Trie` to share (a new one by default).
    tokenizer:
        passed to the codec (chooses ``lm``'s start token).
    backend:
        a :class:`~seqkv.backends.Backend`, or a path/URL for :func:`~seqkv.backends.open_backend`.

    Options (:class:`~seqkv.store.config.StoreConfig`; an unknown one raises
    :class:`~seqkv.errors.InvalidInputError` naming the closest):

    codec:
        ``"lm"`` (default), ``"lm-robust"``, ``"plt"``, ``"raw"``, or an object with the
        :class:`~seqkv.codecs.base.Codec` protocol.
    namespace:
        the trie namespace of this store's sessions (kept in the backend; default: a new UUID).
    keep_kv:
        put each session's KV into memory (the first tier) at ``put``; default: on when the
        caller passes ``capacity_bytes``. ``put(keep_kv=...)`` overrides per session.
    record_hashes:
        record a hash of the session's KV at ``put`` for ``mode="exact"``: ``True`` (default) one
        8-byte hash of the whole cache, ``"layers"`` one per layer (a failed exact restore then
        names the layers that differ), ``False`` none.
    token_cache:
        decoded sessions kept in memory (prefix references are resolved through it).
    capacity_bytes:
        bytes of KV the in-memory tiers (hot and warm) may hold together; 256 MiB by default,
        ``None`` for unbounded (nothing is demoted).
    tiers:
        an ordered subset of ``("hot", "warm", "cold")`` ending with ``"cold"``. Default: all
        three, or ``("hot", "cold")`` for a head dimension the warm quantizer cannot take.
    policy:
        ``"lru"`` or ``"plt"`` (reuse-weighted, see :mod:`seqkv.store.tiers`).
    tier_limits:
        per-tier caps within ``capacity_bytes`` (default with a warm tier: hot at most 3/4).
    warm_bits:
        bits per component of the warm codes: 2, 3 (default) or 4.
    engine:
        an :data:`~seqkv.codecs.sources.EngineChoice` for the KV the store computes: ``"auto"``
        (default, as for ``LMCodec``: the batch-invariant engine when it supports the model on
        its device, else transformers), ``False``/``"transformers"``, ``True``/``"seqkv"``, or an
        Engine. Under the engine a caller's own transformers cache (``put(kv=...)``) needs
        ``residual=True`` for exact restores; ``engine=False`` stores transformers' KV as it is.
    page_tokens:
        positions per page of the hot tier's KV pool (default 16).
    anything else:
        a parameter of the codec (e.g. ``epsilon`` for ``lm-robust``).
    """

    def __init__(
        self,
        model: Any,
        codec: Any = None,
        trie: Any = None,
        tokenizer: Any = None,
        *,
        backend: Any = None,
        config: StoreConfig | None = None,
        **options: Any,
    ):
        from .. import codecs
        from ..backends import MemoryBackend, open_backend
        from ..integrations.models import vocab_size

        if config is None:
            config = StoreConfig.from_options(**({"codec": codec} if codec is not None else {}), **options)
        elif codec is not None or options:
            raise InvalidInputError("pass options either in config= or as keyword arguments, not both")
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size(model)
        layout = KVLayout.of_model(model)
        self._residency = Residency(
            layout,
            config.tiers_for(layout.head_dim),
            capacity_bytes=config.capacity_bytes,
            policy=config.policy,
            tier_limits=config.tier_limits,
            warm_bits=config.warm_bits,
            page_tokens=config.page_tokens,
        )
        self._model_lock = threading.RLock()
        self._lock = threading.RLock()
        self.kv_builder = KVBuilder(model, resolve_engine(model, config.engine), self._model_lock)
        self.codec: Any = (
            codecs.get(config.codec, **config.codec_kwargs(config.codec, model, tokenizer))
            if isinstance(config.codec, str)
            else config.codec
        )
        self._codecs: dict[str, Any] = {self.codec.name: self.codec}
        self._owns_trie = trie is None
        if trie is None:
            from ..trie import Trie

            trie = Trie()
        self.backend = MemoryBackend() if backend is None else open_backend(backend)
        self._persist = not isinstance(self.backend, MemoryBackend)
        self.keep_kv = config.resolved_keep_kv()
        self.record_hashes = config.record_hashes
        self.capacity_bytes = config.capacity_bytes
        self.page_tokens = config.page_tokens
        self._catalog = Catalog()
        self._table = SharedTable(self.backend)
        self._resolver = TokenResolver(
            self.backend, self._catalog, self._lock, self._codec_for, self._model_lock, config.token_cache, self._table
        )
        self.namespace = self._open_namespace(config.namespace)
        self._index = PrefixIndex(trie, self.namespace)
        self._quarantined: list[str] = []
        self._dead_tokens = 0  # tokens in the trie whose sessions are gone
        self._compacting = threading.Lock()  # one trie compaction at a time
        self._numbered_before = 0  # the largest session number read at open
        self._load()

    # -- construction -----------------------------------------------------------------------

    def _codec_for(self, name: str) -> Any:
        from .. import codecs

        with self._lock:
            codec = self._codecs.get(name)
            if codec is None:
                codec = codecs.get(name, **self.config.codec_kwargs(name, self.model, self.tokenizer))
                self._codecs[name] = codec
            return codec

    def _open_namespace(self, wanted: str | None) -> str:
        """The store's namespace, kept in the backend's ``"store"`` blob with the model's
        numerics profile (written once per store)."""
        import json

        blob = self.backend.get_blob(_STORE_BLOB)
        if blob is None:
            from ..integrations.models import numerics_profile

            namespace = wanted if wanted is not None else f"seqkv-store:{uuid.uuid4()}"
            info = {"namespace": namespace, "v": 1, "numerics_profile": numerics_profile(self.model)}
            self.backend.put_blob(_STORE_BLOB, json.dumps(info, sort_keys=True).encode())
            return namespace
        try:
            stored = json.loads(blob)["namespace"]
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"the backend's store config blob is unreadable: {exc}") from exc
        if wanted is not None and wanted != stored:
            raise InvalidInputError(f"the backend holds sessions of trie namespace {stored!r}, not {wanted!r}")
        return str(stored)

    def _quarantine(self, key: str, why: str) -> None:
        self.backend.quarantine(key, reason=why)
        self._quarantined.append(f"{key}: {why}")

    def _load(self) -> None:
        """Pick up the records of an existing backend (cold), quarantining unreadable ones, and
        the trie snapshot, or rebuild the trie from the records."""
        self._table.refresh()
        scan = self.backend.scan_meta()
        for key, why in sorted(scan.corrupt.items()):
            self._quarantine(key, why)
        metas: dict[int, tuple[str, RecordMeta]] = {}
        for key, raw in sorted(scan.meta.items()):
            try:
                meta = RecordMeta.from_stored(raw, key, self._table)
            except CorruptStreamError as exc:
                self._quarantine(key, str(exc))
                continue
            seen = metas.get(meta.number)
            if seen is not None:  # a crash between writing a hidden copy and the record over it
                hidden_one = key if meta.hidden else seen[0]
                self.backend.delete(hidden_one)
                if hidden_one == seen[0]:
                    metas[meta.number] = (key, meta)
                continue
            metas[meta.number] = (key, meta)
        self._numbered_before = max(metas, default=0)
        for number in sorted(metas):  # parents were numbered before their children
            key, meta = metas[number]
            entry = Entry(meta, key, self.backend.size(key))
            self._catalog.add(entry)
            if not meta.hidden:
                self._residency.track(number, meta.n_tokens, entry.record_bytes)
        self._load_trie()
        for entry in [e for e in self._catalog.by_number.values() if e.hidden and e.refs == 0]:
            self._drop(entry)  # hidden and no longer referenced: a leftover of an interrupted delete
        self._compact_trie()

    def _load_trie(self) -> None:
        if not self._owns_trie:
            return
        try:
            blob = self.backend.get_blob(_TRIE_BLOB)
            if blob is not None:
                self._index = PrefixIndex(PrefixIndex.restore(blob), self.namespace)
        except Exception as exc:  # a corrupt row or the native restore's errors: any unreadable snapshot
            self._quarantined.append(f"blob {_TRIE_BLOB!r}: {exc} (rebuilt from the records)")
            blob = None
        if blob is None and self._catalog.by_number:
            self._rebuild_trie()
        self._dead_tokens = 0

    def _rebuild_trie(self) -> None:
        """At open, with no trie snapshot: a trie of the stored sessions' tokens, decoded from
        their records."""
        sessions: dict[int, np.ndarray] = {}
        for number in sorted(self._catalog.by_number):
            entry = self._catalog.by_number[number]
            try:
                sessions[number] = self._resolver.tokens(entry)
            except (CorruptStreamError, StoreError) as exc:
                self._quarantined.append(f"{entry.key}: not indexed ({exc})")
        self._replace_index(sessions)

    # -- the mapping interface ----------------------------------------------------------

    def __contains__(self, session_id: object) -> bool:
        with self._lock:
            return isinstance(session_id, str) and session_id in self._catalog.by_id

    def __len__(self) -> int:
        with self._lock:
            return len(self._catalog.by_id)

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._catalog.by_id)

    @property
    def tiers(self) -> tuple[str, ...]:
        """The store's tiers, hottest first."""
        return self._residency.tiers

    @property
    def trie(self) -> Any:
        return self._index.trie

    @property
    def engine(self) -> Any:
        return self.kv_builder.engine

    @property
    def kv_source(self) -> str:
        """What computes the KV this store rebuilds: ``"seqkv-engine"`` or ``"transformers"``."""
        return self.kv_builder.kv_source

    @property
    def quarantined(self) -> list[str]:
        """Records and blobs that could not be read at open (``"<id>: <why>"``): set aside, not served."""
        with self._lock:
            return list(self._quarantined)

    @staticmethod
    def _check_id(session_id: Any) -> str:
        from ..backends.base import check_session_id

        sid = check_session_id(session_id)
        if sid.startswith(HIDDEN_PREFIX):
            raise InvalidInputError(f"session ids may not start with {HIDDEN_PREFIX!r}")
        return sid

    # -- put ------------------------------------------------------------------------------

    def put(
        self,
        session_id: str,
        tokens: Any,
        *,
        schedule: Any = None,
        keep_kv: bool | None = None,
        kv: Any = None,
        residual: bool = False,
        progress: Any = None,
    ) -> PutResult:
        """Store a session.

        ``schedule``: the chunk sizes the session's KV was computed with (default: one
        prefill), replayed by ``get(mode="exact")``. ``kv``: the session's own cache (one
        sequence holding exactly ``tokens``), hashed instead of recomputing it and, with
        ``keep_kv``, kept in memory (copied); a cache the exact restore could not reproduce is
        refused unless ``residual=True`` keeps the difference. Replacing an existing id is
        atomic: the old version stays readable until the new one is stored. ``progress(n)`` is
        called as tokens are coded.

        Raises :class:`InvalidInputError` (bad id, tokens, schedule, kv, or ``residual``
        without ``kv``), :class:`StoreError` when the backend fails.
        """
        from ..backends import SessionRecord
        from ..coding.container import tokens_checksum
        from ..integrations import transformers as hf

        sid = self._check_id(session_id)
        toks = as_tokens(tokens, self.vocab_size)
        sched = hf.normalize_schedule(schedule, int(toks.size))
        keep = self.keep_kv if keep_kv is None else bool(keep_kv)
        if kv is not None:
            self.kv_builder.check_given(kv, int(toks.size))
        if residual and kv is None:
            raise InvalidInputError("residual=True needs the session's original kv (put(..., kv=cache))")
        if residual and toks.size == 0:
            raise InvalidInputError("residual=True needs a non-empty session")
        t0 = time.perf_counter()
        number = allocate_number(self.backend, self._numbered_before)
        with self._lock:
            prefix_len, parent = self._index.match(toks, self._catalog.by_number.__contains__)
            parent_entry = self._catalog.by_number[parent] if parent is not None else None
            if parent_entry is not None:
                parent_entry.refs += 1  # reserved: the parent cannot go while we code
        reserved = parent_entry is not None
        handle = None  # the KV kept hot (the index copies it into its pages)
        try:
            prefix, tail = toks[:prefix_len], toks[prefix_len:]
            with self._model_lock:
                data, stats = self.codec.encode_with_stats(tail, context=prefix, progress=progress)
            recorded = self.kv_builder.record(
                toks, sched, kv, hashes=self.record_hashes, keep=keep, residual=residual
            )
            kept = recorded.cache if keep else None
            if kept is not None and toks.size and self._residency.keeps_hot:
                handle = self._residency.insert_hot(toks, kept, number)
            crc = tokens_checksum(toks)
            # a third-party codec's stream need not be an SQKV container: kept whole, in layout 1
            layout = RECORD_VERSION if self.codec.name in CODECS else 1
            stored = strip(data, self._table, crc) if layout == RECORD_VERSION else data
            meta = RecordMeta(
                sid=sid,
                number=number,
                n_tokens=int(toks.size),
                prefix=int(prefix_len),
                parent=parent,
                parent_crc32c=parent_entry.meta.tokens_crc32c if parent_entry is not None else None,
                codec=self.codec.name,
                schedule=sched,
                hashes=recorded.hashes if self.record_hashes == "layers" or not recorded.hashes
                else (combined_hash(recorded.hashes),),
                hashes_combined=self.record_hashes != "layers" and bool(recorded.hashes),
                payload_bits=int(stats.payload_bits),
                container_bytes=len(stored),
                residual_bytes=len(recorded.attachments.get(RESIDUAL, b"")),
                kv_source=self.kv_builder.source_id,
                tokens_crc32c=crc,
                layout=layout,
            )
            record = SessionRecord(container=stored, meta=meta.to_stored(self._table, binds_ids=self.backend.binds_ids), attachments=recorded.attachments)
            entry = Entry(meta, sid, record.nbytes)
            with self._lock:
                self._store_record(entry, record)
                log2p = stats.extra.get("token_log2p")
                logprobs = None
                if isinstance(log2p, np.ndarray) and log2p.size == tail.size:
                    logprobs = np.concatenate([np.zeros(prefix_len), log2p * np.log(2.0)])
                self._index.insert(number, toks, logprobs)
                if prefix_len:
                    entry.pin = self._index.pin(prefix)
                self._catalog.add(entry)
                if parent_entry is not None:
                    parent_entry.refs -= 1  # the reservation; the entry's own reference holds it now
                    reserved = False
                self._resolver.remember(number, toks)
                tier = self._residency.track(number, meta.n_tokens, entry.record_bytes, toks, kept, handle)
                handle = None  # placed: the residency owns it now
                if parent_entry is not None and not parent_entry.hidden:
                    self._rescore(parent_entry)
        except BaseException:
            if reserved:
                assert parent_entry is not None
                with self._lock:
                    self._release_reservation(parent_entry)
            if handle is not None:
                self._residency.release(handle)
            raise
        self._compact_trie()
        return PutResult(
            session_id=sid,
            number=number,
            tokens=meta.n_tokens,
            prefix_tokens=meta.prefix,
            coded_tokens=int(tail.size),
            payload_bits=meta.payload_bits,
            container_bytes=meta.container_bytes,
            record_bytes=entry.record_bytes,
            residual_bytes=meta.residual_bytes,
            cross_entropy_bits=stats.cross_entropy_bits,
            tier=tier,
            seconds=time.perf_counter() - t0,
        )

    def _store_record(self, entry: Entry, record: Any) -> None:
        """Write a session's record (under the bookkeeping lock). Over an existing id, the new
        record replaces the old in one backend transaction; an old version other sessions
        reference is first copied to its hidden id, so it is never missing."""
        from ..backends import SessionRecord

        sid = entry.meta.sid
        old = self._catalog.by_id.get(sid)
        if old is not None and old.refs > 0:
            stored = self._resolver.read_record(old)
            self.backend.put(
                hidden_key(old.number),
                SessionRecord(container=stored.container, meta=old.meta.hide().to_stored(self._table, binds_ids=self.backend.binds_ids), attachments=stored.attachments),
            )
        self.backend.put(sid, record)
        if old is None:
            return
        self._residency.forget(old.number)
        if old.refs > 0:
            self._catalog.hide(old)
        else:
            self._drop(old, delete_record=False)

    def _rescore(self, entry: Entry) -> None:
        """The ``plt`` policy's reuse estimate: tokens a restore of this session saves, times the
        sessions that reference it (plus one for itself)."""
        self._residency.set_reuse(entry.number, float(entry.meta.n_tokens * (1 + entry.refs)) / 1024.0)

    # -- tokens and get ---------------------------------------------------------------------

    def _read(self, session_id: str, fn: Any) -> Any:
        """``fn(entry)`` for the session's current entry, again when the session was replaced
        while ``fn`` read it (a reader never sees a session missing during a re-put)."""
        for _ in range(_READ_ATTEMPTS):
            with self._lock:
                entry = self._catalog.entry(session_id)
            try:
                return fn(entry)
            except RetiredEntryError:
                continue
        raise StoreError(f"session {session_id!r} kept being replaced while it was read")

    def tokens(self, session_id: str) -> np.ndarray:
        """The session's tokens (decoded and checked against their recorded checksum; no KV rebuilt)."""
        return self._read(session_id, lambda e: self._resolver.tokens(e).copy())

    def container(self, session_id: str) -> bytes:
        """The session's record as a full ``SQKV`` container (records store it stripped of what
        the store's records share): the coded tail, which decodes with the session's first
        ``prefix`` tokens as context when it continues another session."""
        return self._read(session_id, lambda e: self._resolver.container(e, self._resolver.read_record(e)))

    def tier_of(self, session_id: str) -> str:
        """The hottest tier holding the session (``"hot"``, ``"warm"`` or ``"cold"``)."""
        with self._lock:
            entry = self._catalog.entry(session_id)
        return self._residency.tier_of(entry.number)

    def get(
        self, session_id: str, mode: str = "faithful", *, promote: bool = True, progress: Any = None
    ) -> tuple[np.ndarray, Any]:
        """``(tokens, cache)``: the tokens and a transformers ``DynamicCache`` for them (a copy
        the caller owns), from the hottest tier present.

        ``mode="faithful"``: the hot copy, the dequantized warm KV, or one prefill;
        ``"exact"``: the recorded KV bit for bit — a hot copy of it, or a recompute replaying
        the recorded schedule, checked against the recorded hashes and corrected by the stored
        residual when they differ. ``promote``: let the tier manager move the session up
        (default). Raises :class:`SessionNotFoundError`, :class:`InvalidInputError` (bad mode;
        exact mode for a session stored without hashes), :class:`NumericsMismatchError` (exact
        mode: the KV differs and no residual was kept, or it does not repair it),
        :class:`CorruptStreamError` (a record that fails its checksums).
        """
        if mode not in ("faithful", "exact"):
            raise InvalidInputError(f"mode must be 'faithful' or 'exact', got {mode!r}")
        return self._read(session_id, lambda e: self._get(e, mode, promote, progress))

    def _get(self, entry: Entry, mode: str, promote: bool, progress: Any) -> tuple[np.ndarray, Any]:
        if mode == "exact" and not entry.meta.hashes:
            raise InvalidInputError(f"session {entry.meta.sid!r} was stored without KV hashes; exact mode needs them")
        toks = self._resolver.tokens(entry, progress)
        found = self._residency.read(entry.number, mode)
        if found is not None:
            built, served = found
            built.tokens = toks
        elif mode == "faithful":
            built, served = Built(toks, self.kv_builder.compute(toks, None), "faithful"), "cold"
        else:
            residual = lambda: self._resolver.read_record(entry).attachments.get(RESIDUAL)  # noqa: E731
            built, served = Built(toks, self.kv_builder.exact_restore(entry.meta, toks, residual), "exact"), "cold"
        self._residency.accessed(entry.number, served, built, promote=promote and toks.size > 0)
        return toks.copy(), built.cache

    def get_prefix(self, tokens: Any) -> tuple[int, Any]:
        """``(n, cache)``: KV for the longest prefix ``tokens[:n]`` this store can serve, for a
        new request whose first ``n`` tokens need no prefill (``(0, None)`` when nothing
        matches). Looks first at the hot tier, then at warm sessions holding a longer prefix
        (dequantized), else restores the longest stored prefix from the cold tier by one
        prefill. Faithful quality; the cache is the caller's. Counts a hit and promotes as
        ``get`` does. Raises :class:`InvalidInputError` for bad tokens."""
        toks = as_tokens(tokens, self.vocab_size)
        if toks.size == 0:
            return 0, None
        n, cache = self._residency.lookup_prefix(toks)
        if n:
            return n, cache
        with self._lock:
            n, owner = self._index.match(toks, self._catalog.by_number.__contains__)
            entry = self._catalog.by_number.get(owner) if owner is not None else None
        if entry is None or n == 0:
            return 0, None
        cache = self.kv_builder.compute(toks[:n], None)
        if n == entry.meta.n_tokens and not entry.hidden:
            self._residency.accessed(entry.number, "cold", Built(toks[:n].copy(), cache, "faithful"))
        else:
            self._residency.count_hit("cold")
        return n, cache

    def demote(self, session_id: str, tier: str = "cold") -> str:
        """Move a session down to ``tier`` now (``"warm"``: quantize its hot KV; ``"cold"``: drop
        its in-memory KV); a session already there or lower stays. Returns its tier afterwards.
        Raises :class:`SessionNotFoundError`, and :class:`InvalidInputError` for a tier this
        store does not have (or its first tier)."""
        self._residency.check_demotion_target(tier)
        with self._lock:
            entry = self._catalog.entry(session_id)
        return self._residency.demote(entry.number, tier)

    def drop_caches(self) -> None:
        """Forget decoded tokens and every in-memory KV (all sessions go cold)."""
        with self._lock:
            self._resolver.clear()
            self._residency.drop_all()

    # -- delete ---------------------------------------------------------------------------

    def delete(self, session_id: str) -> bool:
        """Remove a session; ``False`` if absent. A session other sessions reference is kept
        (hidden, its record only) until the last of them goes."""
        from ..backends import SessionRecord

        with self._lock:
            entry = self._catalog.by_id.get(session_id) if isinstance(session_id, str) else None
            if entry is None:
                return False
            self._residency.forget(entry.number)
            if entry.refs > 0:
                stored = self._resolver.read_record(entry)
                self.backend.put(
                    hidden_key(entry.number),
                    SessionRecord(container=stored.container, meta=entry.meta.hide().to_stored(self._table, binds_ids=self.backend.binds_ids),
                                  attachments=stored.attachments),
                )
                self.backend.delete(entry.key)
                self._catalog.hide(entry)
            else:
                self._drop(entry)
        self._compact_trie()
        return True

    def _drop(self, entry: Entry, *, delete_record: bool = True) -> None:
        """Forget a record (and its record, unless a replacement already overwrote it), then the
        hidden ancestors nothing references any more."""
        if delete_record:
            self.backend.delete(entry.key)
        self._resolver.forget(entry.number)
        if entry.pin is not None:
            self._index.unpin(entry.pin)
            entry.pin = None
        self._dead_tokens += entry.meta.n_tokens
        for orphan in self._catalog.remove(entry):
            self._drop(orphan)

    def _compaction_due(self) -> bool:
        live = sum(e.meta.n_tokens for e in self._catalog.by_number.values())
        return self._owns_trie and self._dead_tokens > 0 and self._dead_tokens >= live

    def _compact_trie(self) -> None:
        """Once the trie holds at least as many tokens of gone sessions as of stored ones, rebuild
        it from the stored sessions: dead paths go, and prefixes a gone session owned point at a
        live session again (so later sessions dedup against them). A trie the caller shares is
        left alone. Called with the bookkeeping lock free.

        The stored sessions' tokens are read back from the trie itself, their parents or the
        token LRU (:meth:`_known_tokens`); only a session found in none of them is decoded, outside
        the bookkeeping lock, so other sessions' gets and puts go on meanwhile. The new trie is
        built and swapped in under the lock; if a session appeared that cannot be placed, the
        compaction waits for a later delete."""
        if not self._compacting.acquire(blocking=False):
            return  # another thread is compacting
        try:
            with self._lock:
                if not self._compaction_due():
                    return
                missing = [e for n, e in self._catalog.by_number.items() if n not in self._known_tokens()]
            decoded: dict[int, np.ndarray] = {}
            unreadable: set[int] = set()  # left out of the new trie
            for entry in missing:
                try:
                    decoded[entry.number] = self._resolver.tokens(entry)
                except RetiredEntryError:
                    continue
                except (CorruptStreamError, StoreError) as exc:
                    unreadable.add(entry.number)
                    with self._lock:
                        self._quarantined.append(f"{entry.key}: not indexed ({exc})")
            with self._lock:
                known = self._known_tokens(decoded)
                if any(n not in known and n not in unreadable for n in self._catalog.by_number):
                    return
                self._replace_index(known)
        finally:
            self._compacting.release()

    def _known_tokens(self, decoded: dict[int, np.ndarray] | None = None) -> dict[int, np.ndarray]:
        """Tokens of the stored sessions known without decoding (under the bookkeeping lock): read
        back from the trie, taken from a parent the session is a whole prefix of, or from the
        token LRU (or ``decoded``); each is checked against the session's recorded checksum."""
        from .catalog import check_tokens

        entries = self._catalog.by_number
        held = self._index.sessions_held({n: e.meta.n_tokens for n, e in entries.items()})
        known: dict[int, np.ndarray] = {}
        for number in sorted(entries):  # parents before their children
            meta = entries[number].meta
            parent = known.get(meta.parent) if meta.parent is not None else None
            candidates = (
                held.get(number),
                (decoded or {}).get(number),
                self._resolver.cached(number),
                parent[: meta.prefix] if parent is not None and meta.prefix == meta.n_tokens else None,
                np.empty(0, dtype=np.uint32) if meta.n_tokens == 0 else None,
            )
            for toks in candidates:
                if toks is None:
                    continue
                try:
                    check_tokens(meta, toks)
                except CorruptStreamError:
                    continue
                known[number] = toks
                break
        return known

    def _replace_index(self, known: dict[int, np.ndarray]) -> None:
        """Swap in a trie of exactly ``known`` (under the bookkeeping lock). Pins of references
        into the old trie go with it (they only guard against eviction)."""
        for entry in self._catalog.by_number.values():
            entry.pin = None
        self._index = PrefixIndex.rebuilt(self.namespace, sorted(known.items()))
        self._dead_tokens = 0

    def _release_reservation(self, parent: Entry) -> None:
        parent.refs -= 1
        if parent.refs <= 0 and parent.hidden:
            self._drop(parent)

    # -- stats ----------------------------------------------------------------------------

    def tier_stats(self) -> dict[str, Any]:
        """Per tier: ``count`` (sessions whose hottest tier it is), ``bytes`` (hot/warm: memory
        held; cold: backend bytes of every record, since the cold tier holds every session),
        ``hits`` (restores served from it), ``promotions_in``, ``demotions_out``; plus
        ``capacity_bytes`` (``None``: unbounded), ``used_bytes`` and ``policy``.

        The hot tier's ``bytes`` count shared KV pages once (each is charged to one of the hot
        sessions using it); it also has ``kv_bytes`` (KV held: pool pages in use + private
        parts), ``codes_bytes`` (warm codes kept by hot sessions promoted from warm; ``bytes`` =
        ``kv_bytes`` + ``codes_bytes``), ``logical_bytes`` (what a KV copy per hot session would
        take), ``pages``, ``pages_shared`` (pages used by two sessions or more) and
        ``page_tokens``; ``hot_index`` is :meth:`seqkv.store.pages.HotPrefixIndex.stats`."""
        with self._lock:
            record_bytes = sum(e.record_bytes for e in self._catalog.by_number.values())
        return self._residency.stats(record_bytes)

    def stats(self) -> StoreStats:
        """Sizes and ratios over the stored sessions, and the tiers.

        ``tokens``: token positions of the visible sessions; ``coded_tokens``: tokens actually
        coded in all stored records (hidden ones included); ``dedup_ratio``: tokens /
        coded_tokens; ``bits_per_token``: stored container bits / tokens (what
        each record keeps of its container, amortized over every position); ``payload_bits_per_token``: coded payload only;
        ``payload_bytes`` / ``overhead_bytes``: the records' bytes split into coded payload and
        everything else; ``ratio_vs_bf16``: bf16 KV bits of the same positions / container
        bits; ``residual_bytes``: exact-mode residuals kept; ``quarantined``: see
        :attr:`quarantined`; ``tiers`` etc.: see :meth:`tier_stats`.
        """
        from ..integrations.transformers import kv_bits_per_token

        tiers = self.tier_stats()
        with self._lock:
            visible = list(self._catalog.by_id.values())
            records = [e.meta for e in self._catalog.by_number.values()]
            tokens = sum(e.meta.n_tokens for e in visible)
            coded = sum(m.n_tokens - m.prefix for m in records)
            payload = sum(m.payload_bits for m in records)
            payload_bytes = sum((m.payload_bits + 7) // 8 for m in records)
            container_bytes = sum(m.container_bytes for m in records)
            record_bytes = sum(e.record_bytes for e in self._catalog.by_number.values())
            kv_bits = kv_bits_per_token(self.model) * tokens
            return StoreStats(
                sessions=len(visible),
                hidden_sessions=len(records) - len(visible),
                tokens=tokens,
                coded_tokens=coded,
                referenced_tokens=sum(e.meta.prefix for e in visible),
                dedup_ratio=tokens / coded if coded else (float("inf") if tokens else 1.0),
                payload_bits=payload,
                payload_bytes=payload_bytes,
                overhead_bytes=record_bytes - payload_bytes,
                container_bytes=container_bytes,
                record_bytes=record_bytes,
                residual_bytes=sum(m.residual_bytes for m in records),
                bits_per_token=8 * container_bytes / tokens if tokens else 0.0,
                payload_bits_per_token=payload / tokens if tokens else 0.0,
                payload_bits_per_coded_token=payload / coded if coded else 0.0,
                ratio_vs_bf16=kv_bits / (8 * container_bytes) if container_bytes else float("inf"),
                kept_kv_sessions=tiers["tiers"].get("hot", {}).get("count", 0),
                codec=self.codec.name,
                kv_source=self.kv_source,
                trie=self._index.trie.stats(),
                quarantined=list(self._quarantined),
                **tiers,
            )

    # -- lifecycle ----------------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Write the trie snapshot to the backend (a cache: a store opened without it rebuilds
        the trie from the records)."""
        with self._lock:
            if self._persist and self._owns_trie:
                self.backend.put_blob(_TRIE_BLOB, self._index.snapshot())

    def close(self) -> None:
        """Snapshot the trie, release pins, drop the in-memory tiers and close the backend."""
        with self._lock:
            self.checkpoint()
            for entry in self._catalog.by_number.values():
                if entry.pin is not None:
                    self._index.unpin(entry.pin)
                    entry.pin = None
            self._residency.drop_all()
            self.backend.close()

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
