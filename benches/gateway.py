"""Gateway bench (issue 21): what a stored chat costs, how fast it comes back, and what the gateway
costs per request, on llama-server (``make llama-server``) with SmolLM2-135M-Instruct Q4_1.

1. Sessions of about 1k and 4k tokens, built turn by turn through the gateway (user turns: English
   text from /usr/share/common-licenses; MAX_TOKENS greedy tokens per answer): bytes stored per
   session (the seqkv record: ``plt``-coded tokens + metadata; llama.cpp's slot file; ``zstd -19``
   of the transcript, the chat-templated text), and resume latency from an emptied slot by
   slot-file restore, by schedule replay and by a plain re-prefill of the same tokens (median of
   2 runs), with whether the re-prefill reproduced the recorded KV SHA-256.
2. Exact-restore rate: every schedule replay of the bench compared with the recorded KV hash
   (those of 1., and one per short session built two at a time on a two-slot server, replayed on
   the slot that computed it after the server was restarted and its slot files deleted); the
   short sessions again with ``exact_sessions`` (one evaluation at a time per server), counted
   apart.
3. Load: 1/4/16 concurrent clients, each a TURNS-turn chat, against llama-server directly
   (``/v1/chat/completions`` with the whole history, ``cache_prompt``) and through ``seqkv
   gateway`` (a session id, only the new message; and with ``--exact-sessions``); all with
   N_PARALLEL slots: requests/s and p50/p99 latency of a whole (non-streamed) answer.

Writes benches/results/gateway.json (gateway-quick.json with --quick, or --out PATH).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from _summary import GatewayBench, machine, write_summary  # noqa: E402

from seqkv.gateway.record import decode_record  # noqa: E402
from seqkv.gateway.residency import SlotFiles, SlotPool  # noqa: E402
from seqkv.gateway.service import GREEDY, Gateway, Replica, TurnResult  # noqa: E402
from seqkv.gateway.sessions import NODE_PREFIX, ConversationStore  # noqa: E402
from seqkv.gateway.upstream.llamacpp import LlamaCppUpstream  # noqa: E402
from seqkv.gateway.upstream.process import LlamaServerProcess, ServerOptions, find_llama_server, wait_healthy  # noqa: E402
from seqkv.integrations.models import SMOLLM2_GGUF, smollm2_folder  # noqa: E402

LICENSES = Path("/usr/share/common-licenses")
MAX_TOKENS = 16
THREADS = 1  # one thread per server: two spinning threads on the shared 2-core machine are several times slower
N_PARALLEL = 4
VOCAB = 49152


class English:
    """The license texts as one whitespace-normalised string, handed out in consecutive pieces."""

    def __init__(self, offset: int = 0):
        files = sorted(p for p in LICENSES.iterdir() if p.is_file() and not p.is_symlink())
        self.text = " ".join(" ".join(p.read_text(errors="replace").split()) for p in files)
        self.at = offset % len(self.text)

    def take(self, n_chars: int) -> str:
        if self.at + n_chars > len(self.text):
            self.at = 0
        out = self.text[self.at: self.at + n_chars]
        self.at += n_chars
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gateway(proc: LlamaServerProcess, store: ConversationStore, exact: bool = False) -> tuple[Gateway, Replica]:
    o = proc.options
    rep = Replica(LlamaCppUpstream(proc.url, o, name="r0"), SlotPool(o.n_parallel), SlotFiles(o.slot_dir, 1 << 40),
                  exact_sessions=exact)
    return Gateway(store, [rep]), rep


async def _turn(gw: Gateway, parent: str | None, text: str) -> TurnResult:
    result = None
    async for item in gw.turn(parent, [{"role": "user", "content": text}], max_tokens=MAX_TOKENS):
        if isinstance(item, TurnResult):
            result = item
    assert result is not None
    return result


def _zstd(data: bytes) -> int:
    return len(subprocess.run(["zstd", "-19", "-q", "-c"], input=data, capture_output=True, check=True).stdout)


# -- 1. sessions: bytes and resume latency -----------------------------------------------------------


async def session_row(gw: Gateway, rep: Replica, text: English, target: int, turns: int, reps: int,
                      replays: list[bool]) -> dict:
    parent, n_turns = None, 0
    while True:  # about `turns` user turns of ~4 characters per token
        r = await _turn(gw, parent, text.take(4 * target // turns))
        parent, n_turns = r.node.id, n_turns + 1
        if r.node.n_tokens >= target:
            break
    store, up = gw.store, rep.upstream
    node = store.node(parent)
    chain = store.chain(parent)
    tokens_bytes = sum(len(b.payload) for n in chain
                       for b in decode_record(store.backend.get(NODE_PREFIX + n.id).container, n.id).blocks)
    record_bytes = store.coded_bytes(parent)
    transcript = (await up.detokenize(store.tokens(parent).tolist())).encode()
    slot_file = up.slot_path(rep.files.filename(parent))
    slot_bytes = slot_file.stat().st_size

    slot = rep.pool.slots[0]
    times: dict[str, list[float]] = {"slot_file": [], "replay": [], "prefill": []}
    requests, prefill_exact = 0, []
    cached = store.tokens(parent)[: node.schedule.cached].tolist()
    for _ in range(reps):
        rep.pool.forget_all()
        await up.erase_slot(slot.index)
        got = await gw.resume(rep, slot, parent)
        assert got.how == "slot_file", got
        times["slot_file"].append(got.seconds)

        rep.pool.forget_all()
        rep.files.remove(parent)
        got = await gw.resume(rep, slot, parent)  # erases the slot, replays, saves the file again
        assert got.how == "replay", got
        times["replay"].append(got.seconds)
        replays.append(got.kv_sha256 == node.kv_sha256)
        requests = got.requests

        rep.pool.forget_all()
        await up.erase_slot(slot.index)
        t0 = time.perf_counter()
        await up.complete(cached, slot.index, 1, GREEDY)
        times["prefill"].append(time.perf_counter() - t0)
        saved = await up.save_slot(slot.index, "prefill.ggsq")
        prefill_exact.append(saved.kv_sha256 == node.kv_sha256)
        up.remove_slot_file("prefill.ggsq")
    rep.pool.forget_all()
    row = {
        "target_tokens": target, "tokens": node.n_tokens, "cached_tokens": node.schedule.cached, "turns": n_turns,
        "transcript_bytes": len(transcript), "seqkv_record_bytes": record_bytes, "seqkv_tokens_bytes": tokens_bytes,
        "seqkv_metadata_bytes": record_bytes - tokens_bytes, "slot_file_bytes": slot_bytes,
        "zstd_transcript_bytes": _zstd(transcript),
        "resume_slot_file_s": statistics.median(times["slot_file"]),
        "resume_replay_s": statistics.median(times["replay"]),
        "resume_prefill_s": statistics.median(times["prefill"]),
        "replay_requests": requests, "reps": reps, "prefill_reproduces_kv": all(prefill_exact),
    }
    print(f"session {target}: {row}", flush=True)
    return row


async def sessions_part(model: Path, tmp: Path, targets: list[int], reps: int) -> tuple[list[dict], list[bool], str]:
    opts = ServerOptions(model=model, slot_dir=tmp / "sessions", n_parallel=1, n_ctx_slot=2 * max(targets),
                         threads=THREADS)
    replays: list[bool] = []
    rows = []
    with LlamaServerProcess(opts) as proc:
        store = ConversationStore(str(tmp / "sessions.sqlite"), VOCAB)
        gw, rep = _gateway(proc, store)
        build = (await rep.upstream.engine_config()).build
        for i, target in enumerate(targets):
            turns = 4 if target <= 1024 else 8
            rows.append(await session_row(gw, rep, English(offset=37_000 * i), target, turns, reps, replays))
        await rep.upstream.aclose()
        store.close()
    return rows, replays, build


# -- 2. exact-restore rate of short sessions built two at a time ---------------------------------------


async def short_sessions_replayed(model: Path, tmp: Path, n: int, exact: bool) -> list[bool]:
    name = "short-exact" if exact else "short"
    opts = ServerOptions(model=model, slot_dir=tmp / name, n_parallel=2, n_ctx_slot=1024, threads=THREADS)
    proc = LlamaServerProcess(opts).start()
    try:
        store = ConversationStore(str(tmp / f"{name}.sqlite"), VOCAB)
        gw, rep = _gateway(proc, store, exact)

        async def chat(i: int) -> str:
            text, parent = English(offset=5_000 * i + 101), None
            for _ in range(3):
                parent = (await _turn(gw, parent, text.take(300))).node.id
            return parent

        heads = await asyncio.gather(*(chat(i) for i in range(n)))
        await rep.upstream.aclose()
        proc.kill()
        for f in opts.slot_dir.glob("*.ggsq"):
            f.unlink()
        proc.start()
        gw, rep = _gateway(proc, store, exact)
        out = []
        for head in heads:  # on the slot that computed it (a KV replays exactly only there)
            got = await gw.resume(rep, rep.pool.slots[store.node(head).slot], head)
            assert got.how == "replay", got
            out.append(got.kv_sha256 == store.node(head).kv_sha256)
        await rep.upstream.aclose()
        store.close()
    finally:
        proc.kill()
    print(f"short sessions (exact_sessions={exact}) replayed: {sum(out)}/{len(out)} exact", flush=True)
    return out


# -- 3. load: direct vs through the gateway -------------------------------------------------------------


async def _direct_client(client: httpx.AsyncClient, i: int, turns: int, lat: list[float]) -> None:
    text, history = English(offset=9_000 * i), []
    for _ in range(turns):
        history.append({"role": "user", "content": text.take(240)})
        t0 = time.perf_counter()
        r = await client.post("/v1/chat/completions", json={"messages": history, "max_tokens": MAX_TOKENS,
                                                            "temperature": 0, "cache_prompt": True})
        r.raise_for_status()
        lat.append(time.perf_counter() - t0)
        history.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]})


async def _gateway_client(client: httpx.AsyncClient, i: int, turns: int, lat: list[float]) -> None:
    text, session = English(offset=9_000 * i), None
    for _ in range(turns):
        body: dict = {"messages": [{"role": "user", "content": text.take(240)}], "max_tokens": MAX_TOKENS}
        if session:
            body["session_id"] = session
        t0 = time.perf_counter()
        r = await client.post("/v1/chat/completions", json=body)
        r.raise_for_status()
        lat.append(time.perf_counter() - t0)
        session = r.json()["session_id"]


async def _load(url: str, clients: int, turns: int, client_fn) -> dict:
    lat: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=64)) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_fn(c, i, turns, lat) for i in range(clients)))
        wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(lat), "seconds": wall, "requests_per_s": len(lat) / wall,
            "p50_s": float(np.percentile(lat, 50)), "p99_s": float(np.percentile(lat, 99))}


def load_part(model: Path, tmp: Path, clients: list[int], turns: int) -> list[dict]:
    rows = []
    for n in clients:  # a fresh server per run: no run starts with another's cached prompts
        opts = ServerOptions(model=model, slot_dir=tmp / f"direct{n}", n_parallel=N_PARALLEL, n_ctx_slot=2048,
                             threads=THREADS)
        with LlamaServerProcess(opts) as proc:
            rows.append({"mode": "direct", **asyncio.run(_load(proc.url, n, turns, _direct_client))})
        print(rows[-1], flush=True)
        for mode in ("gateway", "gateway_exact"):
            port = _free_port()
            gw = subprocess.Popen(
                [str(Path(sys.executable).parent / "seqkv"), "gateway", "--upstream", f"llama-server:{model}",
                 "--port", str(port), "--parallel", str(N_PARALLEL), "--ctx", "2048", "--threads", str(THREADS),
                 "--state-dir", str(tmp / f"{mode}{n}"), *(["--exact-sessions"] if mode == "gateway_exact" else [])],
                stdin=subprocess.DEVNULL, start_new_session=True)
            url = f"http://127.0.0.1:{port}"
            try:
                wait_healthy(url, gw, 180, what="seqkv gateway")
                rows.append({"mode": mode, **asyncio.run(_load(url, n, turns, _gateway_client))})
            finally:
                os.killpg(gw.pid, signal.SIGTERM)  # uvicorn's shutdown stops the llama-server it started
                try:
                    gw.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(gw.pid, signal.SIGKILL)
                    gw.wait()
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256/1k-token sessions, 1 rep, 1 and 4 clients")
    ap.add_argument("--out", default=None, help="default benches/results/gateway.json (gateway-quick.json with --quick)")
    args = ap.parse_args()
    if find_llama_server() is None:
        raise SystemExit("llama-server is not built: run `make llama-server`")
    q = args.quick
    model = Path(smollm2_folder()) / SMOLLM2_GGUF
    info = machine()
    targets, reps, short, clients, turns = ([256, 1024], 1, 2, [1, 4], 2) if q else ([1024, 4096], 2, 6, [1, 4, 16], 3)
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        sessions, replays, build = asyncio.run(sessions_part(model, tmp, targets, reps))
        replays += asyncio.run(short_sessions_replayed(model, tmp, short, exact=False))
        exact_replays = asyncio.run(short_sessions_replayed(model, tmp, short, exact=True))
        load = load_part(model, tmp, clients, turns)
    out = Path(args.out) if args.out else ROOT / "benches" / "results" / ("gateway-quick.json" if q else "gateway.json")
    write_summary(out, GatewayBench, {
        "machine": info, "quick": q,
        "upstream": {"llama_server_build": build, "model": model.name, "model_bytes": model.stat().st_size,
                     "threads": THREADS, "n_batch": ServerOptions.n_batch, "n_ubatch": ServerOptions.n_ubatch,
                     "cache_type": ServerOptions.cache_type_k},
        "max_tokens": MAX_TOKENS, "sessions": sessions,
        "replays": len(replays), "exact_replays": sum(replays), "exact_restore_rate": sum(replays) / len(replays),
        "exact_sessions_replays": len(exact_replays), "exact_sessions_exact_replays": sum(exact_replays),
        "load_turns_per_client": turns, "load_n_parallel": N_PARALLEL, "load": load,
    }, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
