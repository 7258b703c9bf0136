"""End to end against a real llama-server: schedules recorded and replayed, KV hashes checked,
servers killed mid-conversation, a replay whose hash differs served as faithful, two slots in
parallel, a replica removed. Small contexts, short outputs and one thread per server (two
spinning threads on a busy two-core machine are several times slower): well under a minute."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from seqkv.gateway.app import create_app
from seqkv.gateway.cli import export_slot, import_slot
from seqkv.gateway.residency import SlotFiles, SlotPool
from seqkv.gateway.schedule import Schedule
from seqkv.gateway.service import GREEDY, Gateway, Replica, TurnResult
from seqkv.gateway.sessions import ConversationStore
from seqkv.gateway.slots import read_slot_file
from seqkv.gateway.upstream.llamacpp import LlamaCppUpstream
from seqkv.gateway.upstream.process import LlamaServerProcess, ServerOptions

pytestmark = pytest.mark.llamacpp

QUESTIONS = ["What is the capital of France?", "And of Italy?", "Name one river there."]


class Bed:
    """Servers, a gateway over them and an HTTP client, all in one event loop."""

    def __init__(self, tmp: Path, gguf: Path, replicas: int = 1, parallel: int = 1, exact: bool = False,
                 db: str | None = None):
        self.procs = [
            LlamaServerProcess(ServerOptions(model=gguf, slot_dir=tmp / f"r{i}", n_parallel=parallel, n_ctx_slot=1024,
                                            threads=1))
            for i in range(replicas)
        ]
        for p in self.procs:
            p.start()
        self.tmp, self.exact, self.db = tmp, exact, db or str(tmp / "g.sqlite")
        self.store = ConversationStore(self.db, 49152)
        self.gateway = self._gateway(self.store)

    def _gateway(self, store: ConversationStore) -> Gateway:
        reps = [Replica(LlamaCppUpstream(p.url, p.options, name=f"r{i}"), SlotPool(p.options.n_parallel),
                        SlotFiles(p.options.slot_dir, 1 << 34), exact_sessions=self.exact)
                for i, p in enumerate(self.procs)]
        return Gateway(store, reps)

    def restart_gateway(self) -> None:
        self.store.close()
        self.store = ConversationStore(self.db, 49152)
        self.gateway = self._gateway(self.store)

    def another_gateway(self) -> tuple[Gateway, ConversationStore]:
        """A second gateway on the same store and servers (as a second process would be)."""
        store = ConversationStore(self.db, 49152)
        return self._gateway(store), store

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(self.gateway)), base_url="http://gw",
                                 timeout=600)

    def close(self) -> None:
        for p in self.procs:
            p.kill()
        self.store.close()


@pytest.fixture
def bed(tmp_path, gguf):
    beds: list[Bed] = []

    def make(**kw: Any) -> Bed:
        beds.append(Bed(tmp_path / f"bed{len(beds)}", gguf, **kw))
        return beds[-1]

    yield make
    for b in beds:
        b.close()


async def _turn(gw: Gateway, parent: str | None, text: str, n: int = 24) -> TurnResult:
    result = None
    async for item in gw.turn(parent, [{"role": "user", "content": text}], max_tokens=n):
        if isinstance(item, TurnResult):
            result = item
    assert result is not None
    return result


def test_kill_restart_resume_is_exact_by_replay_and_by_slot_file(bed):
    async def run() -> None:
        # uninterrupted reference
        ref = bed()
        ids, outs = [None], []
        for q in QUESTIONS:
            r = await _turn(ref.gateway, ids[-1], q)
            ids.append(r.node.id)
            outs.append(r.completion.tokens)
        ref_hashes = [ref.store.node(i).kv_sha256 for i in ids[1:]]
        ref.close()

        # the same conversation, with llama-server and the gateway killed after each turn
        b = bed()
        parent, answers = None, []
        for k, q in enumerate(QUESTIONS):
            r = await _turn(b.gateway, parent, q)
            answers.append(r.completion.text)
            assert r.completion.tokens == outs[k]  # greedy continuation as uninterrupted
            assert r.node.kv_sha256 == ref_hashes[k]  # the KV after the turn, bit for bit
            expected = "empty" if k == 0 else ("replay" if k == 1 else "slot_file")
            assert r.resume.how == expected and r.resume.exactness == "exact"
            parent = r.node.id
            b.procs[0].kill()
            if k == 0:  # the first resume must replay: no slot file on disk
                for f in b.procs[0].options.slot_dir.glob("*.ggsq"):
                    f.unlink()
            b.procs[0].start()
            b.restart_gateway()
        # the messages come back from the stored tokens (no text is stored where tokens spell it)
        history = await b.gateway.history(parent)
        assert [m["content"] for m in history[0::2]] == QUESTIONS
        assert [m["role"] for m in history[1::2]] == ["assistant"] * 3
        assert all(m.span is not None for n in b.store.chain(parent) for m in n.messages)
        assert [m["content"] for m in history[1::2]] == answers
    asyncio.run(run())


def test_http_chat_and_responses_with_streaming_404_and_503(bed):
    async def run() -> None:
        b = bed()
        async with b.client() as c:
            r = await c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                           "max_tokens": 8})
            assert r.status_code == 200, r.text
            sid = r.json()["session_id"]
            lines = []
            async with c.stream("POST", "/v1/chat/completions",
                                json={"session_id": sid, "stream": True, "max_tokens": 8,
                                      "messages": [{"role": "user", "content": "Again"}]}) as s:
                async for line in s.aiter_lines():
                    if line.startswith("data: "):
                        lines.append(line[6:])
            assert lines[-1] == "[DONE]" and len(lines) >= 3
            info = (await c.get(f"/v1/chat/completions/{sid}")).json()
            assert [m["role"] for m in info["messages"]] == ["user", "assistant", "user", "assistant"]
            assert info["exactness"] == "exact"

            first = (await c.post("/v1/responses", json={"input": "Count to three.", "max_output_tokens": 8})).json()
            a = (await c.post("/v1/responses", json={"input": "Go on.", "previous_response_id": first["id"],
                                                     "max_output_tokens": 8})).json()
            b2 = (await c.post("/v1/responses", json={"input": "Stop.", "previous_response_id": first["id"],
                                                      "max_output_tokens": 8})).json()
            assert a["previous_response_id"] == b2["previous_response_id"] == first["id"]
            assert (await c.get(f"/v1/responses/{a['id']}")).json()["output_text"] == a["output_text"]

            assert (await c.get("/v1/responses/resp_nope")).status_code == 404
            r = await c.post("/v1/responses", json={"input": "x", "previous_response_id": "resp_nope"})
            assert r.status_code == 404 and "error" in r.json()
            assert (await c.post("/v1/chat/completions", json={"session_id": "nope", "messages": [
                {"role": "user", "content": "x"}]})).status_code == 404
            chat_nodes = [n.id for n in b.store.chain(info["head"])]
            slot_dir = b.procs[0].options.slot_dir
            assert all((slot_dir / f"{n}.ggsq").is_file() for n in chat_nodes)
            assert (await c.delete(f"/v1/chat/completions/{sid}")).status_code == 200
            assert (await c.get(f"/v1/chat/completions/{sid}")).status_code == 404
            assert not any((slot_dir / f"{n}.ggsq").exists() for n in chat_nodes)  # nothing can resume them

            nodes = b.store.stats()["nodes"]
            b.procs[0].kill()
            r = await c.post("/v1/responses", json={"input": "Hello?", "previous_response_id": a["id"]})
            assert r.status_code == 503 and r.json()["error"]["type"] == "upstream_unavailable"
            assert b.store.stats()["nodes"] == nodes  # nothing stored
            b.procs[0].start()
            r = await c.post("/v1/responses", json={"input": "Hello?", "previous_response_id": a["id"],
                                                    "max_output_tokens": 8})
            assert r.status_code == 200, r.text
            assert r.json()["seqkv"]["resume"]["exactness"] == "exact"
            metrics = (await c.get("/metrics")).text
            assert "seqkv_gateway_turns_total" in metrics and "seqkv_gateway_upstream_unavailable_total 1" in metrics
    asyncio.run(run())


def test_a_replay_whose_hash_differs_is_served_as_faithful_and_says_so(bed):
    async def run() -> None:
        b = bed()
        async with b.client() as c:
            r = await c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                           "max_tokens": 8})
            sid, node = r.json()["session_id"], r.json()["seqkv"]["node"]
            assert r.json()["seqkv"]["exactness"] == "exact"
            # the KV a replay computes no longer matches the one recorded (as after an engine change)
            b.store.set_lineage(node, "exact", kv_sha256="0" * 64)
            b.procs[0].kill()
            b.procs[0].start()  # the slot is gone; its file's hash does not match the record either
            r = await c.post("/v1/chat/completions", json={"session_id": sid, "max_tokens": 8,
                                                           "messages": [{"role": "user", "content": "Again"}]})
            assert r.status_code == 200, r.text
            info = r.json()["seqkv"]
            assert info["resume"]["how"] == "replay"
            assert info["resume"]["exactness"] == "faithful" and info["exactness"] == "faithful"
            assert info["resume"]["kv_sha256"] != "0" * 64
            assert (await c.get(f"/v1/chat/completions/{sid}")).json()["exactness"] == "faithful"
            assert "seqkv_gateway_replay_faithful_total 1" in (await c.get("/metrics")).text
    asyncio.run(run())


def test_two_slots_in_parallel_and_a_replica_removed(bed):
    async def run() -> None:
        b = bed(replicas=2, parallel=2)
        firsts = await asyncio.gather(*(_turn(b.gateway, None, q) for q in QUESTIONS[:2]))
        seconds = await asyncio.gather(*(_turn(b.gateway, r.node.id, "Thanks. Tell me more.") for r in firsts))
        assert all(r.resume.how == "resident" for r in seconds)
        victim = seconds[0].replica
        b.procs[int(victim[1:])].kill()
        moved = await _turn(b.gateway, seconds[0].node.id, "One more thing.")
        assert moved.replica != victim
        assert moved.resume.how == "replay"
        # the replay's KV is reported exact or faithful, never silently assumed
        assert moved.resume.exactness in ("exact", "faithful")
        assert moved.resume.kv_sha256 is not None
    asyncio.run(run())


PROSE = (
    "The river rises in the hills to the north and runs south through farmland for most of its length. Its "
    "valley was settled early, and the towns along it grew up around mills, bridges and river crossings. In "
    "the last century the mills closed one by one, and the towns turned to trade, schools and small workshops. "
    "Today the valley is known for its orchards, its old stone bridges and a long footpath that follows the "
    "water from its source to the sea, passing through woods, meadows and a dozen villages on the way down. "
)


def test_exact_sessions_on_a_two_slot_server_replay_exactly(bed):
    """Two conversations at once on two slots: with exact_sessions their tokens are never
    evaluated in one batch and each stays on its slot (a KV replays bit for bit only on the slot
    index that computed it), so after a restart (slots and slot files gone) both replay to the
    recorded KV. (Without it, one's prefill shares batches with the other's steps, and such a
    KV does not come back by replay.)"""
    async def chat(i: int) -> str:
        parent = None
        for k in range(3):
            at = (150 * (2 * k + i)) % 300
            parent = (await _turn(b.gateway, parent, PROSE[at: at + 200], 16)).node.id
        return parent

    async def run() -> None:
        heads = await asyncio.gather(chat(0), chat(1))
        b.procs[0].kill()
        for f in b.procs[0].options.slot_dir.glob("*.ggsq"):
            f.unlink()
        b.procs[0].start()
        b.restart_gateway()
        assert {b.store.node(h).slot for h in heads} == {0, 1}
        for head in reversed(heads):  # each continues on the slot that computed it, wherever it is free
            got = (await _turn(b.gateway, head, "Thanks.", 4)).resume
            assert got.how == "replay"
            assert got.kv_sha256 == b.store.node(head).kv_sha256 and got.exactness == "exact"

    b = bed(parallel=2, exact=True)
    asyncio.run(run())


@pytest.mark.redis
def test_a_redis_store_is_shared_by_two_gateways_and_survives_a_restart(bed):
    from seqkv.backends.testing import local_redis_server, redis_server_binary

    if redis_server_binary() is None:
        pytest.skip("no redis-server binary (apt-get install redis-server)")
    pytest.importorskip("redis", reason="redis-py not installed (seqkv[redis])")

    async def run(url: str) -> None:
        b = bed(db=url + "?namespace=gw")
        first = await _turn(b.gateway, None, QUESTIONS[0], 8)
        other, other_store = b.another_gateway()
        try:  # the second gateway continues the first one's conversation
            second = await _turn(other, first.node.id, QUESTIONS[1], 8)
            assert second.resume.exactness == "exact" and second.resume.how in ("slot_file", "replay")
        finally:
            other_store.close()
        b.restart_gateway()  # and the first, restarted, continues the second's
        third = await _turn(b.gateway, second.node.id, QUESTIONS[2], 8)
        assert third.resume.exactness == "exact"
        assert [n.id for n in b.store.chain(third.node.id)] == [first.node.id, second.node.id, third.node.id]
        assert [m["content"] for m in (await b.gateway.history(third.node.id))[0::2]] == QUESTIONS
        assert type(b.store.backend).__name__ == "RedisBackend"

    with local_redis_server() as url:
        asyncio.run(run(url))


def test_slots_import_then_export_by_replay_is_exact(tmp_path, gguf):
    async def run() -> None:
        # a slot file written by llama-server: one prefill, then 5 sampled tokens (4 steps)
        opts = ServerOptions(model=gguf, slot_dir=tmp_path / "src", n_ctx_slot=2048)  # export's settings
        with LlamaServerProcess(opts) as proc:
            up = LlamaCppUpstream(proc.url, opts)
            prompt = await up.tokenize(await up.apply_template([{"role": "user", "content": QUESTIONS[0]}]))
            c = await up.complete(prompt, 0, 5, GREEDY)
            saved = await up.save_slot(0, "a.ggsq")
            await up.aclose()
        schedule = Schedule().after_request(c.n_past, len(prompt), len(c.tokens))
        (tmp_path / "a.skv").write_bytes(import_slot(str(up.slot_path("a.ggsq")), 49152, schedule))
        exactness, digest = await export_slot((tmp_path / "a.skv").read_bytes(), gguf, tmp_path / "b.ggsq")
        assert (exactness, digest) == ("exact", saved.kv_sha256)
        assert read_slot_file(tmp_path / "b.ggsq") == saved
    asyncio.run(run())
