"""Conversation state: a tree of turns whose tokens are coded with ``plt``.

Every turn (a chat turn, or one Responses API response) is a **node**: its parent node, the
tokens it added after its parent's (coded by the ``plt`` codec conditioned on the parent's
tokens, so a node costs only its new tokens and a branch shares its prefix), the messages it
added, the evaluation :class:`~seqkv.gateway.schedule.Schedule` that produced the slot's KV after
it, the :class:`~seqkv.gateway.schedule.EngineConfig` it ran on and the SHA-256 of that KV.
A chat session is a named pointer to its newest node.

``seqkv.SessionStore`` needs a transformers model to open (it computes and hashes KV itself),
and the gateway's KV lives in llama.cpp, so nodes are kept directly in a seqkv backend
(:func:`seqkv.backends.open_backend`: SQLite by default, Redis for gateways sharing one store)
as :class:`~seqkv.backends.SessionRecord` s: the container is the node's ``plt`` stream, the
metadata the rest.

A node with children cannot be dropped (its children's tokens are coded against it): deleting
it hides it, and it is removed with its last child.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError, SessionNotFoundError
from .schedule import EngineConfig, Schedule

__all__ = ["Node", "ConversationStore", "NODE_PREFIX", "CHAT_PREFIX"]

NODE_PREFIX = "node:"
CHAT_PREFIX = "chat:"
#: Exactness of a node's KV lineage: computed (or certified) bit for bit, or not.
EXACT, FAITHFUL = "exact", "faithful"


@dataclass(frozen=True)
class Node:
    id: str
    parent: str | None
    n_tokens: int
    messages: list[dict[str, Any]]
    output_text: str
    schedule: Schedule
    engine: EngineConfig | None
    kv_sha256: str | None
    lineage: str
    created: float
    hidden: bool = False
    children: int = 0

    def to_meta(self) -> dict[str, Any]:
        return {
            "parent": self.parent, "n_tokens": self.n_tokens, "messages": self.messages,
            "output_text": self.output_text, "schedule": self.schedule.to_json(),
            "engine": self.engine.to_json() if self.engine else None, "kv_sha256": self.kv_sha256,
            "lineage": self.lineage, "created": self.created, "hidden": self.hidden, "children": self.children,
        }

    @classmethod
    def from_meta(cls, node_id: str, meta: Mapping[str, Any]) -> Node:
        return cls(
            id=node_id, parent=meta.get("parent"), n_tokens=int(meta["n_tokens"]),
            messages=list(meta.get("messages", [])), output_text=str(meta.get("output_text", "")),
            schedule=Schedule.from_json(meta.get("schedule", {})),
            engine=EngineConfig.from_json(meta["engine"]) if meta.get("engine") else None,
            kv_sha256=meta.get("kv_sha256"), lineage=str(meta.get("lineage", EXACT)),
            created=float(meta.get("created", 0.0)), hidden=bool(meta.get("hidden", False)),
            children=int(meta.get("children", 0)),
        )


class ConversationStore:
    """Nodes and chat sessions in a seqkv backend; thread-safe.

    ``backend``: a path or URL for :func:`seqkv.backends.open_backend` (or a Backend).
    ``vocab_size``: the upstream model's vocabulary (the ``plt`` codec's alphabet).
    """

    def __init__(self, backend: Any, vocab_size: int, *, token_cache: int = 256):
        from .. import codecs
        from ..backends import open_backend

        self.backend = open_backend(backend)
        self.vocab_size = int(vocab_size)
        self.codec = codecs.get("plt", vocab_size=self.vocab_size)
        self._lock = threading.RLock()
        self._tokens: OrderedDict[str, np.ndarray] = OrderedDict()
        self._token_cache = token_cache

    # -- nodes ----------------------------------------------------------------------------

    def node(self, node_id: str, *, include_hidden: bool = False) -> Node:
        key = NODE_PREFIX + _check_id(node_id)
        try:
            node = Node.from_meta(node_id, self.backend.get_meta(key))
        except SessionNotFoundError:
            raise SessionNotFoundError(f"no response or turn {node_id!r}") from None
        if node.hidden and not include_hidden:
            raise SessionNotFoundError(f"no response or turn {node_id!r} (deleted)")
        return node

    def tokens(self, node_id: str) -> np.ndarray:
        """Every token of the conversation up to and including ``node_id``'s output."""
        with self._lock:
            cached = self._tokens.get(node_id)
            if cached is not None:
                self._tokens.move_to_end(node_id)
                return cached
        node = self.node(node_id, include_hidden=True)
        prefix = self.tokens(node.parent) if node.parent else np.zeros(0, np.uint32)
        record = self.backend.get(NODE_PREFIX + node_id)
        with self._lock:
            tail = self.codec.decode(record.container, context=prefix)
        toks = np.concatenate([prefix, tail]).astype(np.uint32)
        if toks.size != node.n_tokens:
            raise InvalidInputError(f"node {node_id!r} decodes to {toks.size} tokens, its record says {node.n_tokens}")
        self._remember(node_id, toks)
        return toks

    def chain(self, node_id: str | None) -> list[Node]:
        """The nodes from the root to ``node_id`` (hidden ancestors included)."""
        out: list[Node] = []
        while node_id is not None:
            node = self.node(node_id, include_hidden=bool(out))
            out.append(node)
            node_id = node.parent
        return out[::-1]

    def messages(self, node_id: str | None) -> list[dict[str, Any]]:
        return [m for node in self.chain(node_id) for m in node.messages]

    def add(self, parent: str | None, tokens: np.ndarray, *, messages: Sequence[Mapping[str, Any]],
            output_text: str, schedule: Schedule, engine: EngineConfig | None, kv_sha256: str | None,
            lineage: str, node_id: str | None = None) -> Node:
        """Store a new node whose conversation is ``tokens`` (the parent's tokens + the new ones)."""
        from ..backends import SessionRecord

        prefix = self.tokens(parent) if parent else np.zeros(0, np.uint32)
        toks = np.asarray(tokens, dtype=np.uint32)
        if toks.size < prefix.size or not np.array_equal(toks[: prefix.size], prefix):
            raise InvalidInputError("a node's tokens must extend its parent's")
        node = Node(
            id=node_id or uuid.uuid4().hex, parent=parent, n_tokens=int(toks.size),
            messages=[dict(m) for m in messages], output_text=output_text, schedule=schedule, engine=engine,
            kv_sha256=kv_sha256, lineage=lineage, created=time.time(),
        )
        with self._lock:
            data, _ = self.codec.encode_with_stats(toks[prefix.size:], context=prefix)
            if parent:
                meta = self.backend.get_meta(NODE_PREFIX + parent)
                self.backend.patch_meta(NODE_PREFIX + parent, {"children": int(meta.get("children", 0)) + 1})
            self.backend.put(NODE_PREFIX + node.id, SessionRecord(container=data, meta=node.to_meta()))
        self._remember(node.id, toks)
        return node

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
            meta = self.backend.get_meta(CHAT_PREFIX + _check_id(session_id))
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

    def _remember(self, node_id: str, toks: np.ndarray) -> None:
        with self._lock:
            self._tokens[node_id] = toks
            self._tokens.move_to_end(node_id)
            while len(self._tokens) > self._token_cache:
                self._tokens.popitem(last=False)

    def close(self) -> None:
        self.backend.close()


def _check_id(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 200 or any(c in value for c in "\x00/"):
        raise InvalidInputError(f"bad id {value!r}: a non-empty string of at most 200 characters without '/'")
    return value
