"""The stored form of a conversation node: one compact binary record.

A node's text is not stored where its tokens can give it back: a message is its role and the
span of tokens that detokenizes to its content (the text itself only where the content does not
fall on token boundaries). Its schedule is stored as the number of its parent's cached tokens it
kept plus its own segments as run lengths, its engine settings only when they differ from its
parent's (and then as a reference to a record of the store shared by every node that ran on it:
:func:`engine_ref`), and its tokens as the ``plt`` container's block payloads (the container header, the
same for every node, is rebuilt from the store's codec). Everything is immutable once written;
what changes later (children, hidden, a corrected lineage) is the record's JSON metadata.

Layout (version 1), integers as LEB128 varints unless said otherwise::

    u8 version | parent | n_tokens | u8 has_hash [32 bytes SHA-256] | u8 lineage | slot + 1 | created (s)
    | keep | n_runs | runs (2n - 2: a prefill of n tokens; 2n - 1: n one-token steps) | u8 clipped
    | u8 engine (0 inherit, 1 none, 2 and 8 bytes: a reference) | n_messages | messages
    | codec params (bytes; empty: the store's) | n_blocks | blocks (n_tokens, u32 crc32c, payload bytes)

A string or bytes is a varint length and the bytes; ``parent`` is u8 0 (none), 1 and the 16
bytes of a ``resp_`` + 32 hex id, or 2 and a string. A message is u8 role code (0: a role
string follows) and u8 kind: 0 and two varints (the span's start after the previous span's
end; for the first, the node's token count minus its start), and its length; or 1 and the text.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass

from ..errors import CorruptStreamError
from .schedule import PREFILL, STEPS, EngineConfig, Segment

__all__ = ["Message", "NodeRecord", "TokenBlock", "encode_record", "decode_record", "engine_json", "engine_ref",
           "INHERIT"]

VERSION = 1
ROLES = ("", "user", "assistant", "system", "developer", "tool")
LINEAGES = ("exact", "faithful")
_RESP_ID = re.compile(r"resp_[0-9a-f]{32}")


class _Inherit:
    def __repr__(self) -> str:
        return "INHERIT"


#: The engine setting of a node that ran on its parent's engine.
INHERIT = _Inherit()


@dataclass(frozen=True)
class Message:
    """A message of a turn: its ``role`` and either the ``span`` [start, end) of the
    conversation's tokens that detokenizes to its content, or its ``text``."""

    role: str
    span: tuple[int, int] | None = None
    text: str | None = None


@dataclass(frozen=True)
class TokenBlock:
    n_tokens: int
    crc32c: int
    payload: bytes


@dataclass(frozen=True)
class NodeRecord:
    parent: str | None
    n_tokens: int
    kv_sha256: str | None
    lineage: str
    slot: int | None  # the upstream slot that computed the node's KV
    created: int
    keep: int
    segments: tuple[Segment, ...]
    clipped: bool
    engine: bytes | None | _Inherit  # an engine_ref
    messages: tuple[Message, ...]
    params: bytes
    blocks: tuple[TokenBlock, ...]


def engine_json(engine: EngineConfig) -> bytes:
    return json.dumps(engine.to_json(), separators=(",", ":"), sort_keys=True).encode()


def engine_ref(engine: EngineConfig) -> bytes:
    """The 8-byte reference of an engine config (the start of its JSON's SHA-256)."""
    return hashlib.sha256(engine_json(engine)).digest()[:8]


def encode_record(r: NodeRecord) -> bytes:
    out = bytearray([VERSION])
    if r.parent is None:
        out.append(0)
    elif _RESP_ID.fullmatch(r.parent):
        out.append(1)
        out += bytes.fromhex(r.parent[5:])
    else:
        out.append(2)
        _bytes(out, r.parent.encode())
    _uint(out, r.n_tokens)
    if r.kv_sha256 is None:
        out.append(0)
    else:
        out.append(1)
        out += bytes.fromhex(r.kv_sha256)
    out.append(LINEAGES.index(r.lineage))
    _uint(out, 0 if r.slot is None else r.slot + 1)
    _uint(out, r.created)
    _uint(out, r.keep)
    _uint(out, len(r.segments))
    for seg in r.segments:
        n = seg.end - seg.start
        _uint(out, 2 * n - 2 if seg.kind == PREFILL else 2 * n - 1)
    out.append(int(r.clipped))
    if isinstance(r.engine, _Inherit):
        out.append(0)
    elif r.engine is None:
        out.append(1)
    else:
        out.append(2)
        out += r.engine
    _uint(out, len(r.messages))
    prev: int | None = None
    for m in r.messages:
        code = ROLES.index(m.role) if m.role in ROLES[1:] else 0
        out.append(code)
        if code == 0:
            _bytes(out, m.role.encode())
        if m.span is not None:
            start, end = m.span
            out.append(0)
            _uint(out, r.n_tokens - start if prev is None else start - prev)
            _uint(out, end - start)
            prev = end
        else:
            out.append(1)
            _bytes(out, (m.text or "").encode())
    _bytes(out, r.params)
    _uint(out, len(r.blocks))
    for b in r.blocks:
        _uint(out, b.n_tokens)
        out += struct.pack("<I", b.crc32c)
        _bytes(out, b.payload)
    return bytes(out)


def decode_record(data: bytes, where: str) -> NodeRecord:
    """Parse a record; :class:`CorruptStreamError` (naming ``where``) when it is not one."""
    rd = _Reader(data, where)
    version = rd.byte()
    if version != VERSION:
        raise CorruptStreamError(f"{where}: not a gateway node record of version {VERSION} (got {version})")
    kind = rd.byte()
    parent = None if kind == 0 else "resp_" + rd.take(16).hex() if kind == 1 else rd.string()
    n_tokens = rd.uint()
    kv = rd.take(32).hex() if rd.byte() else None
    lineage = LINEAGES[rd.index(len(LINEAGES))]
    slot = rd.uint() - 1
    created = rd.uint()
    keep = rd.uint()
    segments = []
    at = keep
    for _ in range(rd.uint()):
        z = rd.uint()
        n = z // 2 + 1
        segments.append(Segment(STEPS if z & 1 else PREFILL, at, at + n))
        at += n
    clipped = bool(rd.byte())
    engine_kind = rd.index(3)
    engine: bytes | None | _Inherit = INHERIT if engine_kind == 0 else None if engine_kind == 1 else rd.take(8)
    messages = []
    prev: int | None = None
    for _ in range(rd.uint()):
        code = rd.index(len(ROLES))
        role = ROLES[code] if code else rd.string()
        if rd.byte() == 0:
            d = rd.uint()
            start = n_tokens - d if prev is None else prev + d
            end = start + rd.uint()
            messages.append(Message(role, span=(start, end)))
            prev = end
        else:
            messages.append(Message(role, text=rd.string()))
    params = rd.take(rd.uint())
    blocks = []
    for _ in range(rd.uint()):
        n = rd.uint()
        (crc,) = struct.unpack("<I", rd.take(4))
        blocks.append(TokenBlock(n, crc, rd.take(rd.uint())))
    if not rd.done():
        raise CorruptStreamError(f"{where}: trailing bytes after the node record")
    return NodeRecord(parent, n_tokens, kv, lineage, None if slot < 0 else slot, created, keep, tuple(segments),
                      clipped, engine,
                      tuple(messages), params, tuple(blocks))


class _Reader:
    def __init__(self, data: bytes, where: str):
        self.data, self.at, self.where = memoryview(data), 0, where

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise CorruptStreamError(f"{self.where}: the node record is truncated")
        out = bytes(self.data[self.at: self.at + n])
        self.at += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def index(self, n: int) -> int:
        value = self.byte()
        if value >= n:
            raise CorruptStreamError(f"{self.where}: a node record field is out of range ({value})")
        return value

    def uint(self) -> int:
        value = shift = 0
        while True:
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    def string(self) -> str:
        raw = self.take(self.uint())
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise CorruptStreamError(f"{self.where}: a node record string is not UTF-8") from None

    def done(self) -> bool:
        return self.at == len(self.data)


def _uint(out: bytearray, value: int) -> None:
    if value < 0:
        raise ValueError(f"negative varint {value}")
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _bytes(out: bytearray, data: bytes) -> None:
    _uint(out, len(data))
    out += data
