"""The session catalog: the one record schema (:class:`RecordMeta`) and the sessions a store
knows, by id and by number, with the references between them.

A record's metadata is written by :meth:`RecordMeta.to_stored` and read back by
:meth:`RecordMeta.from_stored` only; ``docs/durability.md`` describes it. Layout 3 packs it as
varints in binary metadata, with the codec and KV source as an index into the store's shared
table (:mod:`seqkv.store.layout`); layouts 1 (a JSON key per field) and 2 (the varints in base85
under one JSON key) are still read. A record is bound to
its session: a row whose metadata names another session id or number, or whose decoded tokens
fail ``tokens_crc32c``, is corrupt (:class:`~seqkv.errors.CorruptStreamError`).

The catalog is not locked itself: :class:`~seqkv.store.SessionStore` calls it under its
bookkeeping lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import base64
import json
import zlib

import numpy as np

from ..codecs.base import run_lengths
from ..coding.container import CODECS
from ..errors import CorruptStreamError, SessionNotFoundError
from ..kv.hashing import HASH_BYTES
from .layout import Reader, SharedTable, Writer

__all__ = [
    "RecordMeta", "Entry", "Catalog", "RECORD_VERSION", "HIDDEN_PREFIX", "hidden_key", "check_tokens",
    "allocate_number", "read_meta", "read_record",
]

#: Layout version of the records a store writes (1: JSON keys, full container; 2: packed
#: varints in base85 under one JSON key; 3: the packed varints as binary metadata).
RECORD_VERSION = 3
_CODEC_NAMES = {number: name for name, number in CODECS.items()}
# Flag bits (layout 2: a byte of their own; layout 3: the low five bits of the first byte, whose
# top three bits are the layout).
_HIDDEN, _PARENT, _SCHEDULE, _LAYER_HASHES, _COMBINED_HASH = 1, 2, 4, 8, 16
_FLAG_BITS = 5
#: Backend ids of deleted sessions kept because others reference them start with this.
HIDDEN_PREFIX = "__seqkv_hidden__/"


def _id_checksum(session_id: str) -> int:
    return zlib.crc32(session_id.encode("utf-8", "surrogatepass"))


def hidden_key(number: int) -> str:
    """The backend id of a hidden (deleted but referenced) session."""
    return f"{HIDDEN_PREFIX}{number}"


def _unrle(runs: list[list[int]]) -> tuple[int, ...]:
    out: list[int] = []
    for size, repeat in runs:
        out.extend([int(size)] * int(repeat))
    return tuple(out)


@dataclass(frozen=True)
class RecordMeta:
    """What a record says about its session (its metadata, one dict in the backend).

    ``parent``/``parent_crc32c``: the number and token checksum of the session whose first
    ``prefix`` tokens this one takes by reference, so that a reference to a reused or swapped
    number is detected instead of decoding to another session's tokens."""

    sid: str
    number: int
    n_tokens: int
    prefix: int
    parent: int | None
    parent_crc32c: int | None
    codec: str
    schedule: tuple[int, ...]
    hashes: tuple[bytes, ...]
    payload_bits: int
    container_bytes: int
    residual_bytes: int
    kv_source: str
    tokens_crc32c: int
    hidden: bool = False
    layout: int = RECORD_VERSION
    #: ``hashes`` is one :func:`~seqkv.kv.hashing.combined_hash` of the whole cache, not one per layer.
    hashes_combined: bool = False

    def to_stored(self, table: SharedTable, *, binds_ids: bool) -> dict[str, Any] | bytes:
        """The metadata to store, in this record's layout (``table``: the store's shared table;
        ``binds_ids``: the backend's :attr:`~seqkv.backends.Backend.binds_ids`, else the record
        carries a checksum of its id). A layout-2 record is written in layout 3 (same container)."""
        if self.layout == 1:
            return self._to_dict_v1()
        hashes_flag = (_COMBINED_HASH if self.hashes_combined else _LAYER_HASHES) if self.hashes else 0
        flags = (_HIDDEN if self.hidden else 0) | (_PARENT if self.parent is not None else 0) | hashes_flag
        one_prefill = self.schedule == ((self.n_tokens,) if self.n_tokens else ())
        flags |= 0 if one_prefill else _SCHEDULE
        out = Writer().raw(bytes([RECORD_VERSION << _FLAG_BITS | flags]))
        out.uint(table.index("profiles", _profile(self.codec, self.kv_source)))
        out.uint(self.number).uint(self.n_tokens)
        if self.parent is not None:
            out.uint(self.prefix).uint(self.parent).raw((self.parent_crc32c or 0).to_bytes(4, "little"))
        if not one_prefill:
            _write_schedule(out, self.schedule)
        if self.hashes_combined and self.hashes:
            out.raw(self.hashes[0])
        elif self.hashes:
            out.uint(len(self.hashes)).uint(len(self.hashes[0])).raw(b"".join(self.hashes))
        out.uint(self.payload_bits).uint(self.container_bytes).uint(self.residual_bytes)
        out.raw(self.tokens_crc32c.to_bytes(4, "little"))
        if self.hidden:
            out.raw(self.sid.encode("utf-8", "surrogatepass"))
        elif not binds_ids:
            out.raw(_id_checksum(self.sid).to_bytes(4, "little"))
        return out.getvalue()

    @classmethod
    def _from_binary(cls, packed: bytes, key: str, table: SharedTable) -> RecordMeta:
        r = Reader(packed, f"record {key!r}")
        (first,) = r.raw(1)
        version, flags = first >> _FLAG_BITS, first & ((1 << _FLAG_BITS) - 1)
        if version != 3:
            raise ValueError(f"binary layout {version}")
        codec, kv_source = _unprofile(table.value("profiles", r.uint()))
        number, n_tokens = r.uint(), r.uint()
        prefix, parent, parent_crc = 0, None, None
        if flags & _PARENT:
            prefix, parent, parent_crc = r.uint(), r.uint(), int.from_bytes(r.raw(4), "little")
        schedule = _read_schedule(r) if flags & _SCHEDULE else ((n_tokens,) if n_tokens else ())
        hashes: tuple[bytes, ...] = ()
        if flags & _COMBINED_HASH:
            hashes = (r.raw(HASH_BYTES),)
        elif flags & _LAYER_HASHES:
            count, digest = r.uint(), r.uint()
            hashes = tuple(r.raw(digest) for _ in range(count))
        payload_bits, container_bytes, residual_bytes = r.uint(), r.uint(), r.uint()
        tokens_crc = int.from_bytes(r.raw(4), "little")
        hidden = bool(flags & _HIDDEN)
        sid = r.rest().decode("utf-8", "surrogatepass") if hidden else _bound_id(r, key)
        return cls(sid=sid, number=number, n_tokens=n_tokens, prefix=prefix, parent=parent,
                   parent_crc32c=parent_crc, codec=codec, schedule=schedule, hashes=hashes,
                   payload_bits=payload_bits, container_bytes=container_bytes, residual_bytes=residual_bytes,
                   kv_source=kv_source, tokens_crc32c=tokens_crc, hidden=hidden, layout=3,
                   hashes_combined=bool(flags & _COMBINED_HASH))

    @classmethod
    def _from_packed(cls, packed: str, key: str, table: SharedTable) -> RecordMeta:
        r = Reader(base64.b85decode(packed), f"record {key!r}")
        version, flags, codec = r.raw(3)
        if version != 2:
            raise ValueError(f"packed layout {version}")
        number, n_tokens, prefix = r.uint(), r.uint(), r.uint()
        parent = parent_crc = None
        if flags & _PARENT:
            parent, parent_crc = r.uint(), int.from_bytes(r.raw(4), "little")
        schedule = _read_schedule(r) if flags & _SCHEDULE else ((n_tokens,) if n_tokens else ())
        count = r.uint()
        digest = r.uint() if count else 0
        hashes = tuple(r.raw(digest) for _ in range(count))
        payload_bits, container_bytes, residual_bytes = r.uint(), r.uint(), r.uint()
        kv_source = table.value("sources", r.uint())
        tokens_crc = int.from_bytes(r.raw(4), "little")
        hidden = bool(flags & _HIDDEN)
        sid = r.rest().decode("utf-8", "surrogatepass") if hidden else _bound_id(r, key, required=True)
        return cls(sid=sid, number=number, n_tokens=n_tokens, prefix=prefix, parent=parent,
                   parent_crc32c=parent_crc, codec=_CODEC_NAMES[codec], schedule=schedule, hashes=hashes,
                   payload_bits=payload_bits, container_bytes=container_bytes, residual_bytes=residual_bytes,
                   kv_source=kv_source, tokens_crc32c=tokens_crc, hidden=hidden, layout=2)

    def _to_dict_v1(self) -> dict[str, Any]:
        combined = {"hashes_combined": True} if self.hashes_combined else {}
        return combined | {
            "v": 1,
            "sid": self.sid,
            "number": self.number,
            "tokens": self.n_tokens,
            "prefix": self.prefix,
            "parent": self.parent,
            "parent_crc32c": self.parent_crc32c,
            "codec": self.codec,
            "schedule": run_lengths(self.schedule),
            "hashes": [h.hex() for h in self.hashes],
            "payload_bits": self.payload_bits,
            "container_bytes": self.container_bytes,
            "residual_bytes": self.residual_bytes,
            "kv_source": self.kv_source,
            "tokens_crc32c": self.tokens_crc32c,
            "hidden": self.hidden,
        }

    @classmethod
    def from_stored(cls, meta: Any, key: str, table: SharedTable) -> RecordMeta:
        """The metadata stored under backend id ``key`` (any layout); :class:`CorruptStreamError`
        when it is not a session record or is not bound to ``key``."""
        try:
            if isinstance(meta, bytes):
                out = cls._from_binary(meta, key, table)
            elif isinstance(meta, dict) and set(meta) == {"m"} and isinstance(meta["m"], str):
                out = cls._from_packed(meta["m"], key, table)
            else:
                out = cls._from_v1(meta)
        except (KeyError, TypeError, ValueError, IndexError, CorruptStreamError) as exc:
            raise CorruptStreamError(f"record {key!r}: unreadable session metadata ({exc})") from None
        if out.number < 1 or out.n_tokens < 0 or not 0 <= out.prefix <= out.n_tokens or (out.prefix > 0) != (out.parent is not None):
            raise CorruptStreamError(f"record {key!r}: inconsistent session metadata")
        if key != (hidden_key(out.number) if out.hidden else out.sid):
            raise CorruptStreamError(
                f"record {key!r} holds the metadata of session {out.sid!r} (number {out.number}): a swapped row"
            )
        return out

    @classmethod
    def _from_v1(cls, meta: Any) -> RecordMeta:
        if not isinstance(meta, dict) or meta.get("v") != 1:
            raise ValueError("not a session record of a known layout")
        parent = meta["parent"]
        return cls(
            sid=str(meta["sid"]),
            number=int(meta["number"]),
            n_tokens=int(meta["tokens"]),
            prefix=int(meta["prefix"]),
            parent=None if parent is None else int(parent),
            parent_crc32c=None if meta.get("parent_crc32c") is None else int(meta["parent_crc32c"]),
            codec=str(meta["codec"]),
            schedule=_unrle(meta["schedule"]),
            hashes=tuple(bytes.fromhex(h) for h in meta["hashes"]),
            payload_bits=int(meta["payload_bits"]),
            container_bytes=int(meta["container_bytes"]),
            residual_bytes=int(meta["residual_bytes"]),
            kv_source=str(meta["kv_source"]),
            tokens_crc32c=int(meta["tokens_crc32c"]),
            hidden=bool(meta.get("hidden", False)),
            layout=1,
            hashes_combined=meta.get("hashes_combined") is True,
        )

    def hide(self) -> RecordMeta:
        return replace(self, hidden=True, layout=1 if self.layout == 1 else RECORD_VERSION)


def _profile(codec: str, kv_source: str) -> str:
    return json.dumps([codec, kv_source], separators=(",", ":"))


def _unprofile(entry: str) -> tuple[str, str]:
    codec, kv_source = json.loads(entry)
    if codec not in CODECS or not isinstance(kv_source, str):
        raise ValueError(f"bad profile entry {entry!r}")
    return codec, kv_source


def _write_schedule(out: Writer, schedule: tuple[int, ...]) -> None:
    runs = run_lengths(schedule)
    out.uint(len(runs))
    for size, repeat in runs:
        out.uint(size).uint(repeat)


def _read_schedule(r: Reader) -> tuple[int, ...]:
    return _unrle([[r.uint(), r.uint()] for _ in range(r.uint())])


def _bound_id(r: Reader, key: str, *, required: bool = False) -> str:
    """The session id of a visible record read under ``key``: ``key`` itself, unless the record
    carries a checksum of its id that another id has (a swapped row, refused by the caller).
    ``required``: the layout always writes the checksum (layout 2), so its absence is corruption."""
    if not r.rest_len() and not required:
        return key
    bound = int.from_bytes(r.raw(4), "little")
    r.end()
    return key if bound == _id_checksum(key) else f"<another session: id checksum {bound:#010x}>"


@dataclass(eq=False)
class Entry:
    """A session the store knows: its metadata, where its record is (``key``: the session id, or
    its hidden id once deleted while referenced), the record's size, how many stored sessions
    reference it, and the trie pin its own reference holds on its parent's prefix."""

    meta: RecordMeta
    key: str
    record_bytes: int
    refs: int = 0
    pin: Any = None

    @property
    def number(self) -> int:
        return self.meta.number

    @property
    def hidden(self) -> bool:
        return self.meta.hidden


@dataclass
class Catalog:
    """Visible sessions by id, every known record (hidden ones too) by number."""

    by_id: dict[str, Entry] = field(default_factory=dict)
    by_number: dict[int, Entry] = field(default_factory=dict)

    def entry(self, session_id: str) -> Entry:
        entry = self.by_id.get(session_id)
        if entry is None:
            raise SessionNotFoundError(f"no session {session_id!r} in this store")
        return entry

    def add(self, entry: Entry) -> None:
        """Track a record; a visible one replaces the id's previous entry (the caller retires it)."""
        self.by_number[entry.number] = entry
        if not entry.hidden:
            self.by_id[entry.meta.sid] = entry
        parent = self.by_number.get(entry.meta.parent) if entry.meta.parent is not None else None
        if parent is not None:
            parent.refs += 1

    def hide(self, entry: Entry) -> None:
        """The session is deleted but referenced: keep its record under its hidden id."""
        if self.by_id.get(entry.meta.sid) is entry:
            del self.by_id[entry.meta.sid]
        entry.meta = entry.meta.hide()
        entry.key = hidden_key(entry.number)

    def remove(self, entry: Entry) -> list[Entry]:
        """Forget a record. Returns the hidden ancestors its going leaves unreferenced (to be
        removed in turn, by the caller, with their records)."""
        if self.by_id.get(entry.meta.sid) is entry:
            del self.by_id[entry.meta.sid]
        self.by_number.pop(entry.number, None)
        orphans: list[Entry] = []
        parent = self.by_number.get(entry.meta.parent) if entry.meta.parent is not None else None
        if parent is not None:
            parent.refs -= 1
            if parent.refs <= 0 and parent.hidden:
                orphans.append(parent)
        return orphans

    def check_parent(self, entry: Entry) -> Entry | None:
        """The entry's parent, checked against the checksum the entry recorded for it."""
        meta = entry.meta
        if meta.parent is None:
            return None
        parent = self.by_number.get(meta.parent)
        if parent is None:
            raise CorruptStreamError(f"session {meta.sid!r} references session number {meta.parent}, which is missing")
        if meta.parent_crc32c is not None and parent.meta.tokens_crc32c != meta.parent_crc32c:
            raise CorruptStreamError(
                f"session {meta.sid!r} references session number {meta.parent}, but that number now holds "
                f"other tokens (checksum {parent.meta.tokens_crc32c:#010x}, recorded {meta.parent_crc32c:#010x})"
            )
        return parent


def check_tokens(meta: RecordMeta, tokens: np.ndarray) -> None:
    """Raise :class:`CorruptStreamError` unless ``tokens`` are the recorded session's."""
    from ..coding.container import tokens_checksum

    if tokens.size != meta.n_tokens:
        raise CorruptStreamError(f"session {meta.sid!r} decoded to {tokens.size} tokens, its record says {meta.n_tokens}")
    got = tokens_checksum(tokens)
    if got != meta.tokens_crc32c:
        raise CorruptStreamError(
            f"session {meta.sid!r}: decoded tokens fail the recorded checksum ({got:#010x} != {meta.tokens_crc32c:#010x})"
        )



def allocate_number(backend: Any, after: int) -> int:
    """A session number never handed out before by this backend, in any process (its persistent
    ``"session"`` counter, in one backend transaction), and above ``after`` (the largest number of
    the records read at open: stores written before the counter existed)."""
    return int(backend.allocate_number("session", after=after))


def read_meta(backend: Any, session_id: str) -> RecordMeta:
    """A stored session's metadata straight from ``backend``, without a model or its container."""
    return RecordMeta.from_stored(backend.get_meta(session_id), session_id, SharedTable(backend))


def read_record(backend: Any, session_id: str) -> tuple[RecordMeta, bytes]:
    """A stored session's metadata and full ``SQKV`` container straight from ``backend``,
    without a model (what ``seqkv store ls``/``get`` show): records written stripped of what a
    store's records share get it back from the store's shared table."""
    from .layout import expand

    record = backend.get(session_id)
    table = SharedTable(backend)
    meta = RecordMeta.from_stored(record.meta, session_id, table)
    if meta.layout == 1:
        return meta, bytes(record.container)
    coded = meta.n_tokens - meta.prefix
    return meta, expand(record.container, table, coded, meta.tokens_crc32c, f"record {session_id!r}")
