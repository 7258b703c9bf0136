"""The gateway's core: one turn of a conversation on an upstream slot, and resuming a
conversation on a slot that does not hold it.

A turn (:meth:`Gateway.turn`) tokenizes only the new text, makes the chosen slot hold the
parent turn's KV, runs the completion, and stores the new node only once the upstream's answer
is complete (an upstream failure stores nothing and raises
:class:`~seqkv.gateway.errors.UpstreamUnavailableError`). Making a slot hold a node
(:meth:`Gateway.resume`) is, in order of preference: nothing (the slot still holds it), a slot
file restore (the file's KV hash checked first), or a replay of the node's schedule, whose KV
hash is compared with the one recorded: ``exact`` when equal, ``faithful`` (and said so) when not.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InternalError, InvalidInputError, SessionNotFoundError
from .errors import UpstreamError, UpstreamUnavailableError
from .residency import SlotFiles, SlotPool, SlotState
from .routing import Router
from .schedule import Schedule
from .record import Message
from .sessions import EXACT, FAITHFUL, ConversationStore, Node
from .slots import read_slot_file
from .upstream.llamacpp import Completion, LlamaCppUpstream

__all__ = ["Gateway", "Replica", "TurnResult", "ResumeReport", "Prompt", "message_spans", "GREEDY"]

#: Nodes whose message texts are kept in memory (the store derives them from the tokens).
TEXT_CACHE = 1024
#: Sampling for deterministic continuations (and the only sampling a replay uses).
GREEDY: Mapping[str, Any] = {"temperature": 0.0, "top_k": 1, "seed": 0}


@dataclass
class Replica:
    """One upstream with its slots and slot files. ``exact_sessions``: evaluate one request at a
    time (llama-server batches the tokens of every busy slot together, and a KV computed
    alongside another conversation's tokens is not reproduced by replaying the session's own
    schedule); off, its slots run in parallel and a replay of such a KV is served ``faithful``."""

    upstream: LlamaCppUpstream
    pool: SlotPool
    files: SlotFiles
    exact_sessions: bool = False
    _evaluating: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    def evaluation(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Held while a turn evaluates on this replica: exclusive under ``exact_sessions``."""
        return self._evaluating if self.exact_sessions else contextlib.nullcontext()

    @property
    def name(self) -> str:
        return self.upstream.name

    def busy(self) -> int:
        return sum(1 for s in self.pool.slots if s.lock.locked())


@dataclass(frozen=True)
class ResumeReport:
    """How a slot came to hold a node: ``resident``, ``slot_file``, ``replay`` or ``empty``;
    ``exactness`` is ``exact`` or ``faithful``; ``mismatches`` lists engine settings that
    differ from the recorded ones."""

    how: str
    exactness: str
    seconds: float
    requests: int = 0
    kv_sha256: str | None = None
    mismatches: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prompt:
    """A turn's prompt: the conversation's tokens, and the new messages as token spans where
    their content falls on token boundaries."""

    tokens: np.ndarray
    messages: tuple[Message, ...]
    retokenized: bool


def message_spans(text: str, pieces: Sequence[bytes], messages: Sequence[Mapping[str, Any]],
                  base: int) -> tuple[Message, ...]:
    """Each message of ``messages`` as the span of ``text``'s tokens (whose bytes are
    ``pieces``; token positions offset by ``base``) that spells its content exactly, or as its
    text where no run of whole tokens does (a template that rewrites it, a token across its
    edge)."""
    raw = text.encode()
    if b"".join(pieces) != raw:
        return tuple(Message(str(m["role"]), text=str(m["content"])) for m in messages)
    bounds = {0: 0}
    at = 0
    for i, piece in enumerate(pieces, 1):
        at += len(piece)
        bounds[at] = i
    out = []
    cursor = 0
    for m in messages:
        content = str(m["content"]).encode()
        found = raw.find(content, cursor)
        while found >= 0 and not (found in bounds and found + len(content) in bounds):
            found = raw.find(content, found + 1)
        if found < 0:
            out.append(Message(str(m["role"]), text=str(m["content"])))
            continue
        cursor = found + len(content)
        out.append(Message(str(m["role"]), span=(base + bounds[found], base + bounds[cursor])))
    return tuple(out)


@dataclass(frozen=True)
class TurnResult:
    node: Node
    completion: Completion
    resume: ResumeReport
    replica: str
    prompt_tokens: int
    retokenized: bool


@dataclass
class Metrics:
    counters: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)

    def observe(self, name: str, seconds: float) -> None:
        self.counters[name + "_count"] += 1
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds


class Gateway:
    """Conversations in ``store`` served by ``replicas`` (one or more llama-servers of one model)."""

    def __init__(self, store: ConversationStore, replicas: Sequence[Replica]):
        if not replicas:
            raise InvalidInputError("a gateway needs at least one upstream")
        self.store = store
        self.replicas = {r.name: r for r in replicas}
        self.router = Router(list(self.replicas), self._cached_tokens)
        for r in replicas:
            self._adopt_files(r)
        self.metrics = Metrics()
        self._texts: OrderedDict[str, list[dict[str, str]]] = OrderedDict()
        self._session_locks: dict[str, asyncio.Lock] = {}

    def _cached_tokens(self, node: str) -> np.ndarray:
        n = self.store.node(node, include_hidden=True)
        return self.store.tokens(node)[: n.schedule.cached]

    def session_lock(self, key: str) -> asyncio.Lock:
        return self._session_locks.setdefault(key, asyncio.Lock())

    def _live(self, node_id: str) -> bool:
        try:
            self.store.node(node_id)
        except SessionNotFoundError:
            return False
        return True

    def _adopt_files(self, replica: Replica) -> None:
        """Route by the slot files on a replica's disk whose nodes are live in the store (a file
        of a node deleted elsewhere is left to the files' budget)."""
        for node in replica.files.nodes():
            if self._live(node):
                self.router.add(replica.name, node)

    # -- deleting: the store's nodes, then the slot files nothing can resume any more --------

    def delete_response(self, node_id: str) -> None:
        chain = [n.id for n in self.store.chain(node_id)]
        self.store.delete(node_id)
        self._drop_files(chain)

    def delete_chat(self, session_id: str) -> None:
        head = self.store.chat_head(session_id)
        chain = [n.id for n in self.store.chain(head)] if head else []
        self.store.delete_chat(session_id)
        self._drop_files(chain)

    def _drop_files(self, nodes: Sequence[str]) -> None:
        for node in nodes:
            if self._live(node):
                continue
            for r in self.replicas.values():
                r.files.remove(node)
                self.router.discard(r.name, node)

    # -- prompts: the only tokenization of text ----------------------------------------------

    async def build_prompt(self, upstream: LlamaCppUpstream, parent: str | None,
                           new_messages: Sequence[Mapping[str, Any]]) -> Prompt:
        """The parent's tokens followed by the new turn's, tokenizing only the text the chat
        template adds after the parent's tokens. ``retokenized`` says the template did not
        extend the parent's text and the whole prompt had to be tokenized again (the parent's KV
        is then reused only up to the first token that differs)."""
        history = await self.history(parent, upstream) if parent else []
        rendered = await upstream.apply_template([*history, *new_messages])
        prefix = self.store.tokens(parent) if parent else np.zeros(0, np.uint32)
        text, retokenized = rendered, False
        if parent is not None:
            prefix_text = await upstream.detokenize(prefix.tolist())
            if rendered.startswith(prefix_text):
                text = rendered[len(prefix_text):]
            else:
                self.metrics.counters["retokenized_prompts"] += 1
                prefix, retokenized = np.zeros(0, np.uint32), True
        pieces = await upstream.tokenize_pieces(text)
        tokens = np.concatenate([prefix, np.asarray([t for t, _ in pieces], np.uint32)])
        return Prompt(tokens, message_spans(text, [p for _, p in pieces], new_messages, int(prefix.size)), retokenized)

    # -- text, derived from the tokens ----------------------------------------------------------

    async def history(self, node_id: str | None, upstream: LlamaCppUpstream | None = None) -> list[dict[str, str]]:
        """The messages up to ``node_id`` as ``{"role", "content"}``, their text detokenized
        from the stored tokens (by ``upstream``, else any healthy replica) and kept in memory."""
        out: list[dict[str, str]] = []
        for node in self.store.chain(node_id):
            out.extend(await self.node_messages(node, upstream))
        return out

    async def node_messages(self, node: Node, upstream: LlamaCppUpstream | None = None) -> list[dict[str, str]]:
        texts = self._texts.get(node.id)
        if texts is None:
            tokens = self.store.tokens(node.id)
            texts = []
            for m in node.messages:
                if m.span is None:
                    texts.append({"role": m.role, "content": m.text or ""})
                else:
                    up = upstream or self._any_upstream()
                    content = await up.detokenize(tokens[m.span[0]: m.span[1]].tolist())
                    texts.append({"role": m.role, "content": content})
            self._remember_texts(node.id, texts)
        else:
            self._texts.move_to_end(node.id)
        return texts

    async def output_text(self, node: Node) -> str:
        """The text of ``node``'s answer."""
        return next((m["content"] for m in reversed(await self.node_messages(node)) if m["role"] == "assistant"), "")

    def _any_upstream(self) -> LlamaCppUpstream:
        for name, ok in self.router.healthy.items():
            if ok:
                return self.replicas[name].upstream
        raise UpstreamUnavailableError("no upstream is up to detokenize the stored messages")

    def _remember_texts(self, node_id: str, texts: list[dict[str, str]]) -> None:
        self._texts[node_id] = texts
        self._texts.move_to_end(node_id)
        while len(self._texts) > TEXT_CACHE:
            self._texts.popitem(last=False)

    # -- slots -----------------------------------------------------------------------------------

    async def _remember_slot(self, replica: Replica, slot: SlotState, node: str | None, cached: int) -> None:
        slot.node, slot.cached = node, cached
        slot.id_task = (await replica.upstream.slot_info(slot.index)).get("id_task")

    async def _slot_intact(self, replica: Replica, slot: SlotState) -> bool:
        if slot.node is None:
            return False
        info = await replica.upstream.slot_info(slot.index)
        return info.get("id_task") == slot.id_task and int(info.get("n_prompt_tokens", -1)) == slot.cached

    async def resume(self, replica: Replica, slot: SlotState, node_id: str | None) -> ResumeReport:
        """Make ``slot`` hold ``node_id``'s KV (nothing for ``None``)."""
        t0 = time.perf_counter()
        up = replica.upstream
        if node_id is None:
            await up.erase_slot(slot.index)
            await self._remember_slot(replica, slot, None, 0)
            slot.node = None
            return ResumeReport("empty", EXACT, time.perf_counter() - t0)
        node = self.store.node(node_id, include_hidden=True)
        if slot.node == node_id and await self._slot_intact(replica, slot):
            return ResumeReport("resident", node.lineage, time.perf_counter() - t0, kv_sha256=node.kv_sha256)
        slot.forget()
        config = await up.engine_config()
        mismatches = tuple(node.engine.mismatches(config)) if node.engine else ()
        filename = replica.files.filename(node_id)
        if replica.files.has(node_id) and read_slot_file(up.slot_path(filename)).kv_sha256 == node.kv_sha256:
            n = await up.restore_slot(slot.index, filename)
            if n != node.schedule.cached:
                raise UpstreamError(f"slot file of {node_id} restored {n} tokens, expected {node.schedule.cached}")
            await self._remember_slot(replica, slot, node_id, n)
            self.metrics.observe("resume_slot_file", time.perf_counter() - t0)
            return ResumeReport("slot_file", node.lineage, time.perf_counter() - t0, 1, node.kv_sha256, mismatches)
        requests, digest = await self._replay(replica, slot, node)
        exact = digest == node.kv_sha256 and node.lineage == EXACT
        self.metrics.counters["replay_exact" if digest == node.kv_sha256 else "replay_faithful"] += 1
        self.metrics.observe("resume_replay", time.perf_counter() - t0)
        return ResumeReport("replay", EXACT if exact else FAITHFUL, time.perf_counter() - t0, requests, digest,
                            mismatches)

    async def _replay(self, replica: Replica, slot: SlotState, node: Node) -> tuple[int, str]:
        """Evaluate ``node``'s schedule on an emptied slot; ``(requests, KV SHA-256)``."""
        up = replica.upstream
        tokens = self.store.tokens(node.id)[: node.schedule.cached].tolist()
        await up.erase_slot(slot.index)
        held = requests = 0
        for end in node.schedule.replay_prompts():
            c = await up.complete(tokens[:end], slot.index, 1, GREEDY)
            requests += 1
            if c.n_past != held:
                raise UpstreamError(f"replay of {node.id}: the slot reused {c.n_past} tokens, expected {held}")
            held = end
        saved = await up.save_slot(slot.index, replica.files.filename(node.id))
        if saved.tokens.tolist() != tokens:
            raise UpstreamError(f"replay of {node.id}: the slot holds other tokens than the schedule's")
        self._files_added(replica, node.id)
        await self._remember_slot(replica, slot, node.id, len(tokens))
        return requests, saved.kv_sha256

    def _files_added(self, replica: Replica, node_id: str) -> None:
        for gone in replica.files.added(node_id):
            self.router.discard(replica.name, gone)
        self.router.add(replica.name, node_id)

    # -- turns -------------------------------------------------------------------------------------

    async def _probe_down_replicas(self) -> None:
        """A replica marked down is used again once its ``/health`` answers (a restarted server);
        its slots start unknown, its slot files are still on disk."""
        for name, ok in list(self.router.healthy.items()):
            if not ok and await self.replicas[name].upstream.healthy():
                self.router.mark_up(name)
                self._adopt_files(self.replicas[name])

    def _choose(self, parent: str | None) -> Replica:
        tokens = self._cached_tokens(parent) if parent else np.zeros(0, np.uint32)
        return self.replicas[self.router.choose(tokens, lambda n: self.replicas[n].busy())]

    async def turn(self, parent: str | None, new_messages: Sequence[Mapping[str, Any]], *, max_tokens: int,
                   sampling: Mapping[str, Any] | None = None, node_id: str | None = None
                   ) -> AsyncIterator[str | TurnResult]:
        """Run one turn after ``parent``: text pieces as they come, then the :class:`TurnResult`.
        Retries on another replica when the chosen one is down before anything was streamed."""
        if max_tokens < 1:
            raise InvalidInputError(f"max_tokens must be >= 1, not {max_tokens}")
        if parent is not None:
            self.store.node(parent)  # 404 before any upstream work
        while True:
            await self._probe_down_replicas()
            replica = self._choose(parent)
            streamed = False
            try:
                async for item in self._turn_on(replica, parent, new_messages, max_tokens, sampling, node_id):
                    streamed = streamed or isinstance(item, str)
                    yield item
                return
            except UpstreamUnavailableError:
                self.metrics.counters["upstream_unavailable"] += 1
                replica.pool.forget_all()
                self.router.mark_down(replica.name)
                if streamed or not any(self.router.healthy.values()):
                    raise

    async def _turn_on(self, replica: Replica, parent: str | None, new_messages: Sequence[Mapping[str, Any]],
                       max_tokens: int, sampling: Mapping[str, Any] | None, node_id: str | None
                       ) -> AsyncIterator[str | TurnResult]:
        up = replica.upstream
        t0 = time.perf_counter()
        built = await self.build_prompt(up, parent, new_messages)
        prompt = built.tokens
        slot = await replica.pool.acquire(parent, self._home_slot(replica, parent),
                                          wait_for_home=replica.exact_sessions)
        try:
            async with replica.evaluation():
                report = await self.resume(replica, slot, parent)
                before = self.store.node(parent, include_hidden=True).schedule if parent else Schedule()
                completion: Completion | None = None
                async for item in up.stream(prompt.tolist(), slot.index, max_tokens, {**GREEDY, **(sampling or {})}):
                    if isinstance(item, Completion):
                        completion = item
                    else:
                        yield item
                if completion is None:
                    raise UpstreamUnavailableError(f"{up.name}: no final answer")
                slot.forget()
                node = await self._record(replica, slot, parent, built, completion, before, new_messages, report,
                                          node_id)
        finally:
            await replica.pool.release(slot)
        self.metrics.counters["turns"] += 1
        self.metrics.counters["prompt_tokens"] += int(prompt.size)
        self.metrics.counters["cached_prompt_tokens"] += completion.n_past
        self.metrics.counters["generated_tokens"] += len(completion.tokens)
        self.metrics.observe("turn", time.perf_counter() - t0)
        yield TurnResult(node, completion, report, replica.name, int(prompt.size), built.retokenized)

    def _home_slot(self, replica: Replica, parent: str | None) -> int | None:
        """The slot that computed ``parent``'s KV: a KV replays bit for bit only on the slot
        index that computed it, so a conversation continues there when it is free (and, under
        ``exact_sessions``, waits for it)."""
        if parent is None:
            return None
        slot = self.store.node(parent, include_hidden=True).slot
        return slot if slot is not None and slot < len(replica.pool.slots) else None

    async def _record(self, replica: Replica, slot: SlotState, parent: str | None, built: Prompt,
                      completion: Completion, before: Schedule, new_messages: Sequence[Mapping[str, Any]],
                      report: ResumeReport, node_id: str | None) -> Node:
        up = replica.upstream
        prompt = built.tokens
        tokens = np.concatenate([prompt, np.asarray(completion.tokens, np.uint32)])
        if completion.n_past > before.cached:
            # the slot reused more than the parent's state: it held something we did not put there
            raise InternalError(f"slot {slot.index} reused {completion.n_past} tokens, its state had {before.cached}")
        schedule = before.after_request(completion.n_past, int(prompt.size), len(completion.tokens))
        new_id = node_id or "resp_" + uuid.uuid4().hex
        saved = await up.save_slot(slot.index, replica.files.filename(new_id))
        if saved.tokens.tolist() != tokens[: schedule.cached].tolist():
            raise UpstreamError(
                f"slot {slot.index} holds {saved.tokens.size} tokens after the turn, the schedule says {schedule.cached}"
            )
        lineage = report.exactness if parent else EXACT
        answer = await self._answer_message(up, int(prompt.size), completion)
        node = self.store.add(parent, tokens, messages=[*built.messages, answer], schedule=schedule,
                              engine=await up.engine_config(), kv_sha256=saved.kv_sha256, lineage=lineage,
                              node_id=new_id, slot=slot.index)
        self._remember_texts(new_id, [*({"role": str(m["role"]), "content": str(m["content"])} for m in new_messages),
                                      {"role": "assistant", "content": completion.text}])
        self._files_added(replica, new_id)
        await self._remember_slot(replica, slot, new_id, schedule.cached)
        return node

    @staticmethod
    async def _answer_message(up: LlamaCppUpstream, start: int, completion: Completion) -> Message:
        """The answer as the span of its sampled tokens that detokenizes to its text (all of
        them, or all but an end-of-generation token whose text is not part of the answer)."""
        n = len(completion.tokens)
        for k in (n - 1, n) if completion.stop_type == "eos" else (n, n - 1):
            if k >= 0 and await up.detokenize(completion.tokens[:k]) == completion.text:
                return Message("assistant", span=(start, start + k))
        return Message("assistant", text=completion.text)
