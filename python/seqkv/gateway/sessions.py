"""Conversation state: a tree of turns whose tokens are coded with ``plt``.

Every turn (a chat turn, or one Responses API response) is a **node**: its parent node, the
tokens it added after its parent's (coded by the ``plt`` codec conditioned on the parent's
tokens, so a node costs only its new tokens and a branch shares its prefix), its messages (a
role and the span of tokens holding each content: text is derived from the tokens, see
:mod:`seqkv.gateway.record`), the evaluation :class:`~seqkv.gateway.schedule.Schedule` that
produced the slot's KV after it (stored as what it kept of its parent's plus its own segments),
the upstream slot that computed it, the :class:`~seqkv.gateway.schedule.EngineConfig` it ran on
(a reference to one shared record, stored when it differs from its parent's) and the SHA-256 of
that KV. A chat session is a named pointer to its newest node.

``seqkv.SessionStore`` needs a transformers model to open (it computes and hashes KV itself),
and the gateway's KV lives in llama.cpp, so nodes are kept directly in a seqkv backend
(:func:`seqkv.backends.open_backend`: SQLite by default, Redis for gateways sharing one store)
as :class:`~seqkv.backends.SessionRecord` s: the container is the node's binary record, the
JSON metadata what changes later (children, hidden, a corrected lineage).

A node with children cannot be dropped (its children's tokens are coded against it): deleting
it hides it, and it is removed with its last child.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CorruptStreamError, InternalError, InvalidInputError, SessionNotFoundError
from .record import INHERIT, Message, NodeRecord, TokenBlock, decode_record, encode_record, engine_json, engine_ref
from .schedule import EngineConfig, Schedule, Segment

__all__ = ["Node", "Message", "ConversationStore", "NODE_PREFIX", "CHAT_PREFIX"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
NODE_PREFIX = "node:"
_CODEC_BLOB = "gateway-codec"
ENGINE_PREFIX = "engine:"
CHAT_PREFIX = "chat:"
#: Exactness of a node's KV lineage: computed (or certified) bit for bit, or not.
EXACT, FAITHFUL = "exact", "faithful"


@dataclass(frozen=True)
class Node:
    id: str
    parent: str | None
    n_tokens: int
    messages: tuple[Message, ...]
    schedule: Schedule
    engine: EngineConfig | None
    kv_sha256: str | None
    lineage: str
    created: float
    slot: int | None = None
    hidden: bool = False
    children: int = 0


@dataclass(frozen=True)
class _Resolved:
    record: NodeRecord
    schedule: Schedule
    engine: EngineConfig | None


class ConversationStore:
    """Nodes and chat sessions in a seqkv backend; thread-safe.

    ``backend``: a path or URL for :func:`seqkv.backends.open_backend` (or a Backend).
    ``vocab_size``: the upstream model's vocabulary (the ``plt`` codec's alphabet).
    ``codec``: what codes the tokens: ``None`` for ``plt``, or a codec instance over the same
    vocabulary (an ``LMCodec`` of the upstream's model: :func:`lm_codec`). A store keeps the
    identity of the codec that wrote it (``"gateway-codec"`` blob) and refuses another.
    """

    def __init__(self, backend: Any, vocab_size: int, *, codec: Any = None, token_cache: int = 256):
        from .. import codecs
        from ..backends import open_backend
        from ..coding import container

        self.backend = open_backend(backend)
        self.vocab_size = int(vocab_size)
        self.codec = codecs.get("plt", vocab_size=self.vocab_size) if codec is None else codec
        if int(self.codec.vocab_size) != self.vocab_size:
            raise InvalidInputError(f"the codec's vocabulary has {self.codec.vocab_size} ids, the upstream's {self.vocab_size}")
        self._check_codec()
        # every node's container header but its token count and params: rebuilt, not stored
        self._header = container.unpack(self.codec.encode_with_stats(np.zeros(1, np.uint32))[0]).header
        self._lock = threading.RLock()
        self._tokens: OrderedDict[str, np.ndarray] = OrderedDict()
        self._resolved_cache: OrderedDict[str, _Resolved] = OrderedDict()
        self._engines: dict[bytes, EngineConfig] = {}
        self._token_cache = token_cache

    def _check_codec(self) -> None:
        """Record which codec writes this store, or refuse a codec other than the one that did."""
        fingerprint = getattr(self.codec, "fingerprint", b"")
        ident = f"{self.codec.name}:{bytes(fingerprint).hex()}".encode()
        update = self.backend.update_blob(_CODEC_BLOB, lambda old: ident if old is None else None)
        if update.data != ident:
            raise InvalidInputError(
                f"this gateway store was written with codec {update.data.decode(errors='replace')!r}, not "
                f"{ident.decode()!r}: open it with the same codec (and model)")

    # -- nodes ----------------------------------------------------------------------------

    def _resolve(self, node_id: str) -> _Resolved:
        """A node's record with its schedule and engine resolved along its ancestors."""
        pending: list[tuple[str, NodeRecord]] = []
        base: _Resolved | None = None
        at: str | None = node_id
        while at is not None:
            with self._lock:
                base = self._resolved_cache.get(at)
            if base is not None:
                break
            try:
                data = self.backend.get(NODE_PREFIX + at).container
            except SessionNotFoundError:
                raise SessionNotFoundError(f"no response or turn {at!r}") from None
            record = decode_record(data, f"node {at!r}")
            pending.append((at, record))
            at = record.parent
        for nid, record in reversed(pending):
            kept = base.schedule.truncated(record.keep) if base else Schedule()
            if kept.cached != record.keep:
                raise InternalError(f"node {nid!r} keeps {record.keep} tokens of a schedule of {kept.cached}")
            schedule = Schedule(kept.segments + record.segments, kept.clipped or record.clipped)
            engine = (base.engine if base else None) if record.engine is INHERIT else self._engine(record.engine)
            if not record.params:
                record = dataclasses.replace(record, params=bytes(self._header.params))
            base = _Resolved(record, schedule, engine)  # type: ignore[arg-type]
            self._remember(self._resolved_cache, nid, base)
        assert base is not None
        return base

    def _meta(self, key: str) -> dict[str, Any]:
        meta = self.backend.get_meta(key)
        if not isinstance(meta, dict):
            raise CorruptStreamError(f"{key!r} has binary metadata: not a gateway record")
        return meta

    def _engine(self, ref: Any) -> EngineConfig | None:
        if ref is None:
            return None
        with self._lock:
            known = self._engines.get(ref)
        if known is None:
            try:
                data = self.backend.get(ENGINE_PREFIX + ref.hex()).container
            except SessionNotFoundError:
                raise CorruptStreamError(f"engine config {ref.hex()} of a node is missing") from None
            known = EngineConfig.from_json(json.loads(data))
            with self._lock:
                self._engines[ref] = known
        return known

    def _engine_ref(self, engine: EngineConfig) -> bytes:
        """Store ``engine`` once (shared by every node that ran on it); its reference."""
        from ..backends import SessionRecord

        ref = engine_ref(engine)
        with self._lock:
            if ref not in self._engines:
                if not self.backend.contains(ENGINE_PREFIX + ref.hex()):
                    self.backend.put(ENGINE_PREFIX + ref.hex(), SessionRecord(container=engine_json(engine), meta={}))
                self._engines[ref] = engine
        return ref

    def node(self, node_id: str, *, include_hidden: bool = False) -> Node:
        key = NODE_PREFIX + _check_id(node_id)
        try:
            meta = self._meta(key)
        except SessionNotFoundError:
            raise SessionNotFoundError(f"no response or turn {node_id!r}") from None
        hidden = bool(meta.get("hidden", False))
        if hidden and not include_hidden:
            raise SessionNotFoundError(f"no response or turn {node_id!r} (deleted)")
        r = self._resolve(node_id)
        rec = r.record
        return Node(
            id=node_id, parent=rec.parent, n_tokens=rec.n_tokens, messages=rec.messages, schedule=r.schedule,
            engine=r.engine, kv_sha256=meta.get("kv_sha256", rec.kv_sha256), lineage=meta.get("lineage", rec.lineage),
            created=float(rec.created), slot=rec.slot, hidden=hidden, children=int(meta.get("children", 0)),
        )

    def tokens(self, node_id: str) -> np.ndarray:
        """Every token of the conversation up to and including ``node_id``'s output."""
        from ..coding import container

        with self._lock:
            cached = self._tokens.get(node_id)
            if cached is not None:
                self._tokens.move_to_end(node_id)
                return cached
        rec = self._resolve(node_id).record
        prefix = self.tokens(rec.parent) if rec.parent else np.zeros(0, np.uint32)
        blocks = [container.Block(b.n_tokens, b.payload, b.crc32c) for b in rec.blocks]
        header = self._header.replace(token_count=sum(b.n_tokens for b in rec.blocks), params=rec.params)
        data = container.pack(header, blocks)
        with self._lock:
            tail = self.codec.decode(data, context=prefix)
        toks = np.concatenate([prefix, tail]).astype(np.uint32)
        if toks.size != rec.n_tokens:
            raise InvalidInputError(f"node {node_id!r} decodes to {toks.size} tokens, its record says {rec.n_tokens}")
        self._remember(self._tokens, node_id, toks)
        return toks

    def chain(self, node_id: str | None) -> list[Node]:
        """The nodes from the root to ``node_id`` (hidden ancestors included)."""
        out: list[Node] = []
        while node_id is not None:
            node = self.node(node_id, include_hidden=bool(out))
            out.append(node)
            node_id = node.parent
        return out[::-1]

    def messages(self, node_id: str | None) -> list[Message]:
        return [m for node in self.chain(node_id) for m in node.messages]

    def add(self, parent: str | None, tokens: np.ndarray, *, messages: Sequence[Message], schedule: Schedule,
            engine: EngineConfig | None, kv_sha256: str | None, lineage: str, node_id: str | None = None,
            slot: int | None = None) -> Node:
        """Store a new node whose conversation is ``tokens`` (the parent's tokens + the new ones)."""
        from ..backends import SessionRecord
        from ..coding import container

        prefix = self.tokens(parent) if parent else np.zeros(0, np.uint32)
        toks = np.asarray(tokens, dtype=np.uint32)
        if toks.size < prefix.size or not np.array_equal(toks[: prefix.size], prefix):
            raise InvalidInputError("a node's tokens must extend its parent's")
        for m in messages:
            if m.span is not None and not prefix.size <= m.span[0] <= m.span[1] <= toks.size:
                raise InvalidInputError(f"message span {m.span} is not within the node's new tokens")
        if kv_sha256 is not None and not _SHA256.fullmatch(kv_sha256):
            raise InvalidInputError(f"kv_sha256 {kv_sha256!r} is not a hex SHA-256")
        base = self._resolve(parent) if parent else None
        keep, own = _delta(schedule, base.schedule if base else Schedule())
        node_id = node_id or uuid.uuid4().hex
        _check_id(node_id)
        with self._lock:
            data, _ = self.codec.encode_with_stats(toks[prefix.size:], context=prefix)
            coded = container.unpack(data)
            record = NodeRecord(
                parent=parent, n_tokens=int(toks.size), kv_sha256=kv_sha256, lineage=lineage, slot=slot,
                created=int(time.time()),
                keep=keep, segments=own,
                clipped=schedule.clipped and not (base and base.schedule.truncated(keep).clipped),
                engine=(INHERIT if base is not None and engine == base.engine
                        else None if engine is None else self._engine_ref(engine)),
                messages=tuple(messages),
                params=b"" if coded.header.params == self._header.params else bytes(coded.header.params),
                blocks=tuple(TokenBlock(b.n_tokens, b.tokens_crc32c, bytes(b.payload)) for b in coded.blocks),
            )
            if parent:
                meta = self._meta(NODE_PREFIX + parent)
                self.backend.patch_meta(NODE_PREFIX + parent, {"children": int(meta.get("children", 0)) + 1})
            self.backend.put(NODE_PREFIX + node_id, SessionRecord(container=encode_record(record), meta={}))
        self._remember(self._tokens, node_id, toks)
        return self.node(node_id)

    def set_lineage(self, node_id: str, lineage: str, kv_sha256: str | None = None) -> None:
        changes: dict[str, Any] = {"lineage": lineage}
        if kv_sha256 is not None:
            changes["kv_sha256"] = kv_sha256
        self.backend.patch_meta(NODE_PREFIX + node_id, changes)

    def delete(self, node_id: str) -> None:
        """Delete a node (hide it while it has children); :class:`SessionNotFoundError` if absent."""
        with self._lock:
            node = self.node(node_id)
            if node.children:
                self.backend.patch_meta(NODE_PREFIX + node_id, {"hidden": True})
                return
            self._drop(node)

    def _drop(self, node: Node) -> None:
        self.backend.delete(NODE_PREFIX + node.id)
        self._tokens.pop(node.id, None)
        self._resolved_cache.pop(node.id, None)
        if node.parent is None:
            return
        parent = self.node(node.parent, include_hidden=True)
        if parent.hidden and parent.children <= 1:
            self._drop(parent)
        else:
            self.backend.patch_meta(NODE_PREFIX + parent.id, {"children": max(parent.children - 1, 0)})

    def coded_bytes(self, node_id: str) -> int:
        """Bytes stored for the conversation up to ``node_id`` (every node on its chain)."""
        return sum(self.backend.size(NODE_PREFIX + n.id) for n in self.chain(node_id))

    # -- chat sessions: named pointers to their newest node -----------------------------------

    def chat_head(self, session_id: str) -> str | None:
        """The newest node of a chat session; :class:`SessionNotFoundError` if there is none."""
        try:
            meta = self._meta(CHAT_PREFIX + _check_id(session_id))
        except SessionNotFoundError:
            raise SessionNotFoundError(f"no chat session {session_id!r}") from None
        return meta.get("head")

    def chat_exists(self, session_id: str) -> bool:
        return self.backend.contains(CHAT_PREFIX + _check_id(session_id))

    def set_chat_head(self, session_id: str, node_id: str | None) -> None:
        from ..backends import SessionRecord

        self.backend.put(CHAT_PREFIX + _check_id(session_id), SessionRecord(container=b"", meta={"head": node_id}))

    def delete_chat(self, session_id: str) -> None:
        """Delete a chat session and its turns (a turn another branch still extends stays hidden)."""
        head = self.chat_head(session_id)
        with self._lock:
            self.backend.delete(CHAT_PREFIX + session_id)
            chain = self.chain(head)
            for node in chain:
                self.backend.patch_meta(NODE_PREFIX + node.id, {"hidden": True})
            if chain:
                last = self.node(chain[-1].id, include_hidden=True)
                if not last.children:
                    self._drop(last)

    def stats(self) -> dict[str, Any]:
        ids = self.backend.ids()
        return {
            "nodes": sum(1 for i in ids if i.startswith(NODE_PREFIX)),
            "chat_sessions": sum(1 for i in ids if i.startswith(CHAT_PREFIX)),
        }

    def _remember(self, cache: OrderedDict[str, Any], node_id: str, value: Any) -> None:
        with self._lock:
            cache[node_id] = value
            cache.move_to_end(node_id)
            while len(cache) > self._token_cache:
                cache.popitem(last=False)

    def close(self) -> None:
        self.backend.close()


def _check_id(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 200 or any(c in value for c in "\x00/"):
        raise InvalidInputError(f"bad id {value!r}: a non-empty string of at most 200 characters without '/'")
    return value


def _delta(schedule: Schedule, base: Schedule) -> tuple[int, tuple[Segment, ...]]:
    """``(keep, own)``: ``schedule`` is ``base`` truncated to ``keep`` tokens followed by the
    segments ``own`` (the fewest such)."""
    segs = schedule.segments
    for i in range(len(segs), -1, -1):
        keep = segs[i].start if i < len(segs) else schedule.cached
        if base.truncated(keep).segments == segs[:i]:
            return keep, segs[i:]
    raise InternalError("unreachable: every schedule extends the empty truncation")  # i == 0 always matches


def lm_codec(gguf: str, *, weights: str = "q4_1") -> Any:
    """The ``lm`` codec of a Llama-family GGUF for :class:`ConversationStore`: the batch-invariant
    CPU engine on the file's own blocks (:meth:`seqkv.engine.cpu.Engine.from_gguf`), so any
    gateway on any machine decodes what another wrote."""
    from .. import codecs
    from ..codecs.sources import EngineLogitsSource
    from ..engine.cpu import Engine

    return codecs.get("lm", source=EngineLogitsSource(Engine.from_gguf(gguf, weights)), start_token=None)
