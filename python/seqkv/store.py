"""``SessionStore``: KV caches stored as token sequences, deduplicated through a shared trie.

``put(session_id, tokens)`` looks the tokens up in the trie. The longest prefix another
stored session already holds is stored as a **reference** (0 bits: the owning session's
number and the prefix length; the trie node is pinned while referenced); only the tail is
coded, by the store's codec (``lm`` by default, conditioned on the prefix as context). The
tokens then go into the trie (values: per-token handles ``session_number << 32 | position``,
log-probabilities from the model when the codec computed them), so later sessions dedupe
against them.

``get(session_id)`` decodes the tokens (following prefix references, with a small cache of
decoded sessions) and rebuilds the KV cache by recompute:

* ``mode="faithful"``: one prefill (fast; float noise against the original, see
  ``docs/numerics.md``);
* ``mode="exact"``: replays the compute schedule recorded at ``put`` (prefill chunk sizes, then
  single steps) and checks the per-layer hashes recorded then (BLAKE2b of each layer's K and
  V bytes); a difference raises :class:`~seqkv.errors.NumericsMismatchError`.

Records live in a :class:`~seqkv.backends.Backend` (in memory by default; SQLite or Redis
with ``backend="store.sqlite"`` / ``"redis://..."``): the container is the codec's stream, the
metadata (keys listed in :data:`META_KEYS`) carries the reference, schedule and hashes. With a
persistent backend the trie snapshot is written with every ``put`` (blob ``"trie"``), and a
store opened on an existing backend picks up its sessions and trie.

Thread safety: one lock guards the bookkeeping; model work (coding, recompute) runs outside
it under a second lock per store, so concurrent ``get``s of different sessions queue on the
model, not on the dictionaries.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .codecs.base import TOKEN_DTYPE, as_tokens, run_lengths
from .errors import InvalidInputError, NumericsMismatchError, SessionNotFoundError, StoreError

__all__ = ["SessionStore", "META_KEYS"]

#: Metadata keys a SessionStore writes into each record.
META_KEYS = (
    "v",  # record layout version (1)
    "number",  # the session's number (trie handles, references)
    "tokens",  # token count
    "prefix",  # tokens taken from the parent by reference
    "parent",  # parent session number, or None
    "codec",  # codec name of the container
    "schedule",  # run-length compute schedule [[size, repeat], ...]
    "hashes",  # per-layer KV hashes, hex (empty if not recorded)
    "payload_bits",  # coded payload bits of the container
    "hidden",  # deleted but still referenced by other sessions
    "sid",  # the user's session id
)

_HIDDEN_PREFIX = "__seqkv_hidden__/"
_STORE_BLOB = "store"
_TRIE_BLOB = "trie"
_POS_BITS = 32


def _unrle(runs: list[list[int]]) -> tuple[int, ...]:
    out: list[int] = []
    for size, repeat in runs:
        out.extend([int(size)] * int(repeat))
    return tuple(out)


@dataclass
class _Entry:
    sid: str
    number: int
    key: str
    n_tokens: int
    prefix: int
    parent: int | None
    codec: str
    schedule: tuple[int, ...]
    hashes: list[bytes]
    payload_bits: int
    container_bytes: int
    record_bytes: int
    hidden: bool = False
    refs: int = 0
    pin: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class SessionStore:
    """Store sessions' KV caches as tokens (see the module doc).

    Parameters
    ----------
    model:
        the transformers causal LM whose caches are stored (and, for ``lm``, the coding model).
    codec:
        ``"lm"`` (default), ``"lm-robust"``, ``"plt"``, ``"raw"``, or a codec instance.
    trie:
        a :class:`~seqkv.Trie` to share (a new one by default).
    tokenizer:
        passed to the codec (chooses ``lm``'s start token).
    backend:
        a :class:`~seqkv.backends.Backend`, or a path/URL for :func:`~seqkv.backends.open_backend`.
    namespace:
        the trie namespace of this store's sessions (kept in the backend; default: a new UUID).
    keep_kv:
        keep a copy of each session's cache in memory (``get(mode="faithful")`` then skips the
        recompute); ``put(keep_kv=...)`` overrides per session.
    record_hashes:
        compute the session's KV at ``put`` (replaying its schedule) and record per-layer hashes
        for ``mode="exact"``.
    token_cache:
        decoded sessions kept in memory (prefix references are resolved through it).
    codec_options:
        forwarded to ``seqkv.codecs.get``.
    """

    def __init__(
        self,
        model: Any,
        codec: Any = "lm",
        trie: Any = None,
        tokenizer: Any = None,
        *,
        backend: Any = None,
        namespace: str | None = None,
        keep_kv: bool = False,
        record_hashes: bool = True,
        token_cache: int = 64,
        **codec_options: Any,
    ):
        from . import codecs
        from .backends import MemoryBackend, open_backend
        from .models import vocab_size

        self.model = model
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size(model)
        self._codec_options = dict(codec_options)
        self.codec: Any = codecs.get(codec, **self._codec_kwargs(codec)) if isinstance(codec, str) else codec
        self._codecs: dict[str, Any] = {self.codec.name: self.codec}
        if trie is None:
            from .trie import Trie

            trie = Trie()
        self.trie = trie
        self.backend = MemoryBackend() if backend is None else open_backend(backend)
        self._persist = not isinstance(self.backend, MemoryBackend)
        self.keep_kv = bool(keep_kv)
        self.record_hashes = bool(record_hashes)
        self._lock = threading.RLock()
        self._model_lock = threading.RLock()
        self._sessions: dict[str, _Entry] = {}
        self._by_number: dict[int, _Entry] = {}
        self._hot: dict[str, Any] = {}
        self._tokens: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._token_cache = max(0, int(token_cache))
        self._next_number = 1
        self.namespace = namespace
        self._load()

    # -- construction helpers -----------------------------------------------------------

    def _codec_kwargs(self, name: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(self._codec_options)
        kwargs.setdefault("model", self.model)
        if name in ("lm", "lm-robust"):
            kwargs.setdefault("tokenizer", self.tokenizer)
            kwargs.setdefault("profile", "digest")  # the full profile is kept once, in the "store" blob
        elif name in ("raw", "plt"):
            kwargs = {k: v for k, v in kwargs.items() if k in ("model", "vocab_size", "block_tokens", "order")}
        return kwargs

    def _codec_for(self, name: str) -> Any:
        from . import codecs

        codec = self._codecs.get(name)
        if codec is None:
            codec = codecs.get(name, **self._codec_kwargs(name))
            self._codecs[name] = codec
        return codec

    def _load(self) -> None:
        """Pick up the sessions (and trie) of an existing backend."""
        config = self.backend.get_blob(_STORE_BLOB)
        if config is not None:
            try:
                stored = json.loads(config)
            except ValueError as exc:
                raise StoreError(f"the backend's store config blob is unreadable: {exc}") from exc
            if self.namespace is not None and self.namespace != stored.get("namespace"):
                raise InvalidInputError(
                    f"the backend holds sessions of trie namespace {stored.get('namespace')!r}, not {self.namespace!r}"
                )
            self.namespace = stored.get("namespace")
        if self.namespace is None:
            self.namespace = f"seqkv-store:{uuid.uuid4()}"
        if config is None:
            from .models import numerics_profile

            info = {"namespace": self.namespace, "v": 1, "numerics_profile": numerics_profile(self.model)}
            self.backend.put_blob(_STORE_BLOB, json.dumps(info, sort_keys=True).encode())
        ids = self.backend.ids()
        if not ids:
            return
        trie_blob = self.backend.get_blob(_TRIE_BLOB)
        if trie_blob is not None and len(self.trie) == 0:
            from .trie import Trie

            self.trie = Trie.restore(trie_blob)
        for key in ids:
            meta = self.backend.get_meta(key)
            if meta.get("v") != 1 or "number" not in meta:
                continue
            entry = _Entry(
                sid=str(meta.get("sid", key)),
                number=int(meta["number"]),
                key=key,
                n_tokens=int(meta["tokens"]),
                prefix=int(meta["prefix"]),
                parent=None if meta.get("parent") is None else int(meta["parent"]),
                codec=str(meta["codec"]),
                schedule=_unrle(meta.get("schedule", [])),
                hashes=[bytes.fromhex(h) for h in meta.get("hashes", [])],
                payload_bits=int(meta.get("payload_bits", 0)),
                container_bytes=int(meta.get("container_bytes", 0)),
                record_bytes=int(meta.get("record_bytes", 0)),
                hidden=bool(meta.get("hidden", False)),
            )
            self._by_number[entry.number] = entry
            if not entry.hidden:
                self._sessions[entry.sid] = entry
            self._next_number = max(self._next_number, entry.number + 1)
        for entry in self._by_number.values():
            if entry.parent is not None and entry.parent in self._by_number:
                self._by_number[entry.parent].refs += 1

    # -- the mapping interface ----------------------------------------------------------

    def __contains__(self, session_id: object) -> bool:
        with self._lock:
            return isinstance(session_id, str) and session_id in self._sessions

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._sessions)

    def _entry(self, session_id: str) -> _Entry:
        entry = self._sessions.get(session_id)
        if entry is None:
            raise SessionNotFoundError(f"no session {session_id!r} in this store")
        return entry

    @staticmethod
    def _check_id(session_id: Any) -> str:
        if not isinstance(session_id, str) or not session_id:
            raise InvalidInputError(f"session ids are non-empty strings, got {session_id!r}")
        if session_id.startswith(_HIDDEN_PREFIX):
            raise InvalidInputError(f"session ids may not start with {_HIDDEN_PREFIX!r}")
        return session_id

    # -- put ------------------------------------------------------------------------------

    def _match(self, toks: np.ndarray) -> tuple[int, int | None]:
        """(prefix length, owner number) of the longest stored prefix whose owner is alive."""
        if toks.size == 0:
            return 0, None
        m = self.trie.match_prefix(toks, namespace=self.namespace)
        values = np.asarray(m.values, dtype=np.uint64)
        for length in range(int(m.length), 0, -1):
            owner = int(values[length - 1]) >> _POS_BITS
            if owner in self._by_number:
                return length, owner
        return 0, None

    def put(
        self,
        session_id: str,
        tokens: Any,
        *,
        schedule: Any = None,
        keep_kv: bool | None = None,
        kv: Any = None,
        progress: Any = None,
    ) -> dict[str, Any]:
        """Store a session; returns a summary (tokens, prefix, coded tokens, bits, bytes).

        ``schedule``: the chunk sizes the session's KV was computed with (default: one
        prefill), replayed by ``get(mode="exact")``. ``kv``: the session's own cache, hashed
        instead of recomputing it (it must hold exactly ``tokens``). Replacing an existing id
        deletes the old session first. ``progress(n)`` is called as tokens are coded.
        """
        from . import container, hf

        sid = self._check_id(session_id)
        toks = as_tokens(tokens, self.vocab_size)
        sched = hf.normalize_schedule(schedule, int(toks.size))
        keep = self.keep_kv if keep_kv is None else bool(keep_kv)
        if kv is not None and hf.cache_length(kv) != toks.size:
            raise InvalidInputError(f"kv holds {hf.cache_length(kv)} positions, tokens {toks.size}")
        t0 = time.perf_counter()
        with self._lock:
            if sid in self._sessions:
                self._delete_locked(sid)
            prefix_len, parent = self._match(toks)
            if parent is not None:
                self._by_number[parent].refs += 1  # reserved: the parent cannot go while we code
            number = self._next_number
            self._next_number += 1
        try:
            prefix = toks[:prefix_len]
            tail = toks[prefix_len:]
            with self._model_lock:
                data, stats = self.codec.encode_with_stats(tail, context=prefix, progress=progress)
                cache = kv
                hashes: list[bytes] = []
                if self.record_hashes or keep:
                    if cache is None and toks.size:
                        cache, _ = hf.compute_cache(self.model, toks, sched)
                    if self.record_hashes and cache is not None:
                        hashes = hf.layer_hashes(cache)
            log2p = stats.extra.get("token_log2p")
            with self._lock:
                values = (np.uint64(number) << np.uint64(_POS_BITS)) | np.arange(toks.size, dtype=np.uint64)
                logprobs = None
                if isinstance(log2p, np.ndarray) and log2p.size == tail.size:
                    logprobs = np.concatenate([np.zeros(prefix_len), log2p * np.log(2.0)])
                if toks.size:
                    self.trie.insert(toks, values=values, logprobs=logprobs, namespace=self.namespace)
                pin = None
                if prefix_len:
                    node = self.trie.match_prefix(prefix, namespace=self.namespace).node
                    pin = self.trie.pin(node)
                key = sid
                meta = {
                    "v": 1,
                    "sid": sid,
                    "number": number,
                    "tokens": int(toks.size),
                    "prefix": int(prefix_len),
                    "parent": parent,
                    "codec": self.codec.name,
                    "schedule": run_lengths(sched),
                    "hashes": [h.hex() for h in hashes],
                    "payload_bits": int(stats.payload_bits),
                    "container_bytes": len(data),
                    "tokens_crc32c": container.tokens_checksum(toks),
                }
                from .backends import SessionRecord

                record = SessionRecord(container=data, meta=meta)
                blobs = {_TRIE_BLOB: self.trie.snapshot()} if self._persist else None
                self.backend.put(key, record, blobs=blobs)
                entry = _Entry(
                    sid=sid,
                    number=number,
                    key=key,
                    n_tokens=int(toks.size),
                    prefix=int(prefix_len),
                    parent=parent,
                    codec=self.codec.name,
                    schedule=sched,
                    hashes=hashes,
                    payload_bits=int(stats.payload_bits),
                    container_bytes=len(data),
                    record_bytes=record.nbytes,
                    pin=pin,
                )
                self._sessions[sid] = entry
                self._by_number[number] = entry
                self._remember_tokens(number, toks)
                if keep and cache is not None:
                    self._hot[sid] = cache if kv is None else hf.clone_cache(self.model, kv)
        except BaseException:
            with self._lock:
                if parent is not None and parent in self._by_number:
                    self._release_ref(parent)
            raise
        return {
            "session_id": sid,
            "tokens": int(toks.size),
            "prefix_tokens": int(prefix_len),
            "coded_tokens": int(tail.size),
            "payload_bits": int(stats.payload_bits),
            "container_bytes": len(data),
            "record_bytes": entry.record_bytes,
            "cross_entropy_bits": stats.cross_entropy_bits,
            "seconds": time.perf_counter() - t0,
        }

    # -- tokens -----------------------------------------------------------------------------

    def _remember_tokens(self, number: int, toks: np.ndarray) -> None:
        if self._token_cache == 0:
            return
        self._tokens[number] = toks
        self._tokens.move_to_end(number)
        while len(self._tokens) > self._token_cache:
            self._tokens.popitem(last=False)

    def _tokens_of(self, number: int, progress: Any = None) -> np.ndarray:
        """Decode one session's tokens, resolving its chain of prefix references."""
        chain: list[_Entry] = []
        with self._lock:
            n: int | None = number
            base: np.ndarray | None = None
            while n is not None:
                cached = self._tokens.get(n)
                if cached is not None:
                    base = cached
                    break
                entry = self._by_number.get(n)
                if entry is None:
                    raise StoreError(f"session number {n} is referenced but missing from the store")
                chain.append(entry)
                n = entry.parent
        toks = base if base is not None else np.empty(0, dtype=TOKEN_DTYPE)
        for entry in reversed(chain):
            record = self.backend.get(entry.key)
            prefix = toks[: entry.prefix]
            if prefix.size != entry.prefix:
                raise StoreError(f"session {entry.sid!r} references {entry.prefix} tokens its parent lacks")
            with self._model_lock:
                tail = self._codec_for(entry.codec).decode(record.container, context=prefix, progress=progress)
            toks = np.concatenate([prefix, tail]).astype(TOKEN_DTYPE)
            if toks.size != entry.n_tokens:
                raise StoreError(f"session {entry.sid!r} decoded to {toks.size} tokens, expected {entry.n_tokens}")
            with self._lock:
                self._remember_tokens(entry.number, toks)
        return toks

    def tokens(self, session_id: str) -> np.ndarray:
        """The session's tokens (decoded; no KV rebuilt)."""
        with self._lock:
            entry = self._entry(session_id)
        return self._tokens_of(entry.number).copy()

    # -- get ------------------------------------------------------------------------------

    def get(self, session_id: str, mode: str = "faithful", *, progress: Any = None) -> tuple[np.ndarray, Any]:
        """``(tokens, cache)``: the tokens and a transformers ``DynamicCache`` rebuilt for them.

        ``mode="faithful"``: one prefill (or the kept copy); ``"exact"``: replay the recorded
        schedule and check the recorded per-layer hashes (:class:`NumericsMismatchError` if
        any layer differs).
        """
        from . import hf

        if mode not in ("faithful", "exact"):
            raise InvalidInputError(f"mode must be 'faithful' or 'exact', got {mode!r}")
        with self._lock:
            entry = self._entry(session_id)
            hot = self._hot.get(session_id)
        toks = self._tokens_of(entry.number, progress)
        if mode == "faithful":
            if hot is not None:
                return toks.copy(), hf.clone_cache(self.model, hot)
            with self._model_lock:
                cache, _ = hf.compute_cache(self.model, toks, None)
            return toks.copy(), cache
        if not entry.hashes:
            raise InvalidInputError(f"session {session_id!r} was stored without KV hashes; exact mode needs them")
        with self._model_lock:
            cache, _ = hf.compute_cache(self.model, toks, entry.schedule)
        got = hf.layer_hashes(cache, len(entry.hashes[0]))
        bad = [i for i, (a, b) in enumerate(zip(got, entry.hashes)) if a != b]
        if bad or len(got) != len(entry.hashes):
            from .models import numerics_profile_json

            raise NumericsMismatchError(
                f"exact restore of {session_id!r}: layers {bad} differ from the hashes recorded at put "
                f"(replayed schedule of {len(entry.schedule)} chunks on {numerics_profile_json(self.model)})"
            )
        return toks.copy(), cache

    def drop_caches(self) -> None:
        """Forget decoded tokens and kept KV copies (the next ``get`` decodes from the records)."""
        with self._lock:
            self._tokens.clear()
            self._hot.clear()

    # -- delete ---------------------------------------------------------------------------

    def delete(self, session_id: str) -> bool:
        """Remove a session; ``False`` if absent. A session other sessions reference is kept
        (hidden) until the last of them goes."""
        with self._lock:
            if session_id not in self._sessions:
                return False
            self._delete_locked(session_id)
            return True

    def _delete_locked(self, sid: str) -> None:
        entry = self._sessions.pop(sid)
        self._hot.pop(sid, None)
        if entry.refs > 0:
            hidden_key = f"{_HIDDEN_PREFIX}{entry.number}"
            record = self.backend.get(entry.key)
            meta = dict(record.meta)
            meta["hidden"] = True
            from .backends import SessionRecord

            self.backend.put(hidden_key, SessionRecord(container=record.container, meta=meta))
            self.backend.delete(entry.key)
            entry.key = hidden_key
            entry.hidden = True
            return
        self._drop(entry)

    def _drop(self, entry: _Entry) -> None:
        self.backend.delete(entry.key)
        self._by_number.pop(entry.number, None)
        self._tokens.pop(entry.number, None)
        if entry.pin is not None:
            try:
                self.trie.unpin(entry.pin)
            except Exception:  # pragma: no cover - the pin may already be gone
                pass
        if entry.parent is not None:
            self._release_ref(entry.parent)

    def _release_ref(self, number: int) -> None:
        parent = self._by_number.get(number)
        if parent is None:
            return
        parent.refs -= 1
        if parent.refs <= 0 and parent.hidden:
            self._drop(parent)

    # -- stats ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Sizes and ratios over the stored sessions.

        ``tokens``: token positions of the visible sessions; ``coded_tokens``: tokens actually
        coded in all stored records (hidden ones included); ``dedup_ratio``: tokens /
        coded_tokens; ``bits_per_token``: container bits / tokens (headers included,
        amortized over every position); ``payload_bits_per_token``: coded payload only;
        ``ratio_vs_bf16``: bf16 KV bits of the same positions / container bits.
        """
        from .hf import kv_bits_per_token

        with self._lock:
            visible = list(self._sessions.values())
            records = list(self._by_number.values())
            tokens = sum(e.n_tokens for e in visible)
            coded = sum(e.n_tokens - e.prefix for e in records)
            payload = sum(e.payload_bits for e in records)
            container_bytes = sum(e.container_bytes for e in records)
            record_bytes = sum(e.record_bytes for e in records)
            kv_bits = kv_bits_per_token(self.model) * tokens
            return {
                "sessions": len(visible),
                "hidden_sessions": len(records) - len(visible),
                "tokens": tokens,
                "coded_tokens": coded,
                "referenced_tokens": sum(e.prefix for e in visible),
                "dedup_ratio": tokens / coded if coded else (float("inf") if tokens else 1.0),
                "payload_bits": payload,
                "container_bytes": container_bytes,
                "record_bytes": record_bytes,
                "bits_per_token": 8 * container_bytes / tokens if tokens else 0.0,
                "payload_bits_per_token": payload / tokens if tokens else 0.0,
                "payload_bits_per_coded_token": payload / coded if coded else 0.0,
                "ratio_vs_bf16": kv_bits / (8 * container_bytes) if container_bytes else float("inf"),
                "kept_kv_sessions": len(self._hot),
                "codec": self.codec.name,
                "trie": self.trie.stats(),
            }

    def close(self) -> None:
        """Release pins and close the backend."""
        with self._lock:
            for entry in self._by_number.values():
                if entry.pin is not None:
                    try:
                        self.trie.unpin(entry.pin)
                    except Exception:  # pragma: no cover
                        pass
                    entry.pin = None
            self.backend.close()

    def __enter__(self) -> "SessionStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
