"""Wiring a gateway: llama-server processes it starts itself, their clients, the store, the app,
and a supervisor that restarts a server that died (same port and slot folder: its slot files
stay usable)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from .app import create_app
from .residency import SlotFiles, SlotPool
from .service import Gateway, Replica
from .sessions import ConversationStore, lm_codec
from .upstream.llamacpp import LlamaCppUpstream
from .upstream.process import LlamaServerProcess, ServerOptions

__all__ = ["launch_gateway", "supervise"]


async def supervise(processes: Sequence[LlamaServerProcess], every_s: float = 1.0) -> None:
    """Restart any managed llama-server that is no longer running."""
    while True:
        await asyncio.sleep(every_s)
        for proc in processes:
            if not proc.running:
                with contextlib.suppress(Exception):  # reported by the next request's 503
                    await asyncio.to_thread(proc.start)


def launch_gateway(models: Sequence[Path], state_dir: Path, *, db: str | None = None, parallel: int = 2,
                   n_ctx_slot: int = 8192, threads: int = 2, slot_file_budget: int = 4 << 30,
                   vocab_size: int | None = None, exact_sessions: bool = False, lm: bool = False
                   ) -> tuple[Any, list[LlamaServerProcess]]:
    """Start one llama-server per model path (replicas) and return ``(app, processes)``; the
    app's lifespan supervises the servers and stops them at shutdown. ``lm``: the store codes
    tokens with the ``lm`` codec of the first model (:func:`~seqkv.gateway.sessions.lm_codec`)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    processes: list[LlamaServerProcess] = []
    for i, model in enumerate(models):
        options = ServerOptions(model=model, slot_dir=state_dir / f"replica{i}", n_parallel=parallel,
                                n_ctx_slot=n_ctx_slot, threads=threads)
        processes.append(LlamaServerProcess(options).start())
    replicas = [
        Replica(LlamaCppUpstream(p.url, p.options, name=f"replica{i}"), SlotPool(parallel),
                SlotFiles(p.options.slot_dir, slot_file_budget), exact_sessions=exact_sessions)
        for i, p in enumerate(processes)
    ]
    store = ConversationStore(db or str(state_dir / "gateway.sqlite"), vocab_size or _vocab_size(processes[0]),
                              codec=lm_codec(str(models[0])) if lm else None)
    gateway = Gateway(store, replicas)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        task = asyncio.create_task(supervise(processes))
        try:
            yield
        finally:
            task.cancel()
            for r in replicas:
                await r.upstream.aclose()
            for p in processes:
                p.kill()
            store.close()

    return create_app(gateway, lifespan=lifespan), processes


def _vocab_size(proc: LlamaServerProcess) -> int:
    import httpx

    meta = httpx.get(proc.url + "/v1/models", timeout=10).json()["data"][0]["meta"]
    return int(meta["n_vocab"])
