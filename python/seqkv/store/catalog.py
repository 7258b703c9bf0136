"""The session catalog: the one record schema (:class:`RecordMeta`) and the sessions a store
knows, by id and by number, with the references between them.

A record's metadata is written by :meth:`RecordMeta.to_dict` and read back by
:meth:`RecordMeta.from_dict` only; ``docs/durability.md`` describes it. Layout 2 packs it as
varints under one key, with the KV source as an index into the store's shared table
(:mod:`seqkv.store.layout`); layout 1 (a JSON key per field) is still read. A record is bound to
its session: a row whose metadata names another session id or number, or whose decoded tokens
fail ``tokens_crc32c``, is corrupt (:class:`~seqkv.errors.CorruptStreamError`).

The catalog is not locked itself: :class:`~seqkv.store.SessionStore` calls it under its
bookkeeping lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import base64
import zlib

import numpy as np

from ..codecs.base import run_lengths
from ..coding.container import CODECS
from ..errors import CorruptStreamError, SessionNotFoundError
from .layout import Reader, SharedTable, Writer

__all__ = ["RecordMeta", "Entry", "Catalog", "RECORD_VERSION", "HIDDEN_PREFIX", "hidden_key", "check_tokens", "allocate_number"]

#: Layout version of the records a store writes (1: JSON keys, full container; 2: packed).
RECORD_VERSION = 2
_CODEC_NAMES = {number: name for name, number in CODECS.items()}
# Layout 2's flag bits.
_HIDDEN, _PARENT, _SCHEDULE = 1, 2, 4
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

    def to_dict(self, table: SharedTable) -> dict[str, Any]:
        """The metadata to store, in this record's layout (``table``: the store's shared table)."""
        if self.layout == 1:
            return self._to_dict_v1()
        flags = (_HIDDEN if self.hidden else 0) | (_PARENT if self.parent is not None else 0)
        one_prefill = self.schedule == ((self.n_tokens,) if self.n_tokens else ())
        flags |= 0 if one_prefill else _SCHEDULE
        out = Writer().raw(bytes([RECORD_VERSION, flags, CODECS[self.codec]]))
        out.uint(self.number).uint(self.n_tokens).uint(self.prefix)
        if self.parent is not None:
            out.uint(self.parent).raw((self.parent_crc32c or 0).to_bytes(4, "little"))
        if not one_prefill:
            runs = run_lengths(self.schedule)
            out.uint(len(runs))
            for size, repeat in runs:
                out.uint(size).uint(repeat)
        out.uint(len(self.hashes))
        if self.hashes:
            out.uint(len(self.hashes[0])).raw(b"".join(self.hashes))
        out.uint(self.payload_bits).uint(self.container_bytes).uint(self.residual_bytes)
        out.uint(table.index("sources", self.kv_source)).raw(self.tokens_crc32c.to_bytes(4, "little"))
        if self.hidden:
            out.raw(self.sid.encode("utf-8", "surrogatepass"))
        else:  # the id itself is the backend's key: a checksum of it binds the record to it
            out.raw(_id_checksum(self.sid).to_bytes(4, "little"))
        return {"m": base64.b85encode(out.getvalue()).decode("ascii")}

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
        if flags & _SCHEDULE:
            schedule = _unrle([[r.uint(), r.uint()] for _ in range(r.uint())])
        else:
            schedule = (n_tokens,) if n_tokens else ()
        count = r.uint()
        digest = r.uint() if count else 0
        hashes = tuple(r.raw(digest) for _ in range(count))
        payload_bits, container_bytes, residual_bytes = r.uint(), r.uint(), r.uint()
        kv_source = table.value("sources", r.uint())
        tokens_crc = int.from_bytes(r.raw(4), "little")
        hidden = bool(flags & _HIDDEN)
        sid = r.rest().decode("utf-8", "surrogatepass") if hidden else key
        if not hidden:
            bound = int.from_bytes(r.raw(4), "little")
            r.end()
            if bound != _id_checksum(key):
                sid = f"<another session: id checksum {bound:#010x}>"  # refused below as a swapped row
        return cls(sid=sid, number=number, n_tokens=n_tokens, prefix=prefix, parent=parent,
                   parent_crc32c=parent_crc, codec=_CODEC_NAMES[codec], schedule=schedule, hashes=hashes,
                   payload_bits=payload_bits, container_bytes=container_bytes, residual_bytes=residual_bytes,
                   kv_source=kv_source, tokens_crc32c=tokens_crc, hidden=hidden, layout=2)

    def _to_dict_v1(self) -> dict[str, Any]:
        return {
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
    def from_dict(cls, meta: Any, key: str, table: SharedTable) -> RecordMeta:
        """The metadata stored under backend id ``key`` (either layout); :class:`CorruptStreamError`
        when it is not a session record or is not bound to ``key``."""
        try:
            if isinstance(meta, dict) and set(meta) == {"m"} and isinstance(meta["m"], str):
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
        )

    def hide(self) -> RecordMeta:
        return replace(self, hidden=True)


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


def read_record(backend: Any, session_id: str) -> tuple[RecordMeta, bytes]:
    """A stored session's metadata and full ``SQKV`` container straight from ``backend``,
    without a model (what ``seqkv store ls``/``get`` show): records written stripped of what a
    store's records share get it back from the store's shared table."""
    from .layout import expand

    record = backend.get(session_id)
    table = SharedTable(backend)
    meta = RecordMeta.from_dict(record.meta, session_id, table)
    if meta.layout == 1:
        return meta, bytes(record.container)
    coded = meta.n_tokens - meta.prefix
    return meta, expand(record.container, table, coded, meta.tokens_crc32c, f"record {session_id!r}")
