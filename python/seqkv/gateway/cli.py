"""``seqkv gateway`` and ``seqkv slots import|export``: sub-commands registered into the main
parser by :func:`register`.

::

    seqkv gateway --upstream llama-server:MODEL.gguf [--upstream ...] [--db PATH|redis://...]
                  [--host 127.0.0.1] [--port 8000] [--parallel N] [--state-dir DIR] [--exact-sessions]
    seqkv slots import SLOT.ggsq -o OUT.skv [--vocab-size V]
    seqkv slots export IN.skv -o SLOT.ggsq --model MODEL.gguf

``import`` codes a slot file's tokens with ``plt`` and records, in the stream's numerics profile,
the file's KV SHA-256 (its schedule: the one given, else one prefill). ``export`` replays that
schedule on a llama-server it starts and writes the slot file; it prints whether the KV is
``exact`` (same SHA-256) or only ``faithful``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, MissingExtraError
from .schedule import PREFILL, STEPS, Schedule, Segment
from .slots import read_slot_file

__all__ = ["register", "DEFAULT_VOCAB_SIZE"]

#: SmolLM2's vocabulary, the default of ``slots import``.
DEFAULT_VOCAB_SIZE = 49152
_PROFILE_KEY = "llama.cpp-slot"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``gateway`` and ``slots`` sub-commands to the main parser's subparsers."""
    g = sub.add_parser("gateway", parents=[common], help="OpenAI-compatible stateful gateway over llama-server")
    g.add_argument("--upstream", action="append", required=True, metavar="llama-server:GGUF",
                   help="start a llama-server on this model (repeat for replicas)")
    g.add_argument("--db", default=None, help="SQLite path or redis:// URL (default: STATE_DIR/gateway.sqlite)")
    g.add_argument("--state-dir", default="seqkv-gateway", help="slot files and logs (default: ./seqkv-gateway)")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--parallel", type=int, default=2, help="slots per llama-server (default 2)")
    g.add_argument("--ctx", type=int, default=8192, help="context tokens per slot (default 8192)")
    g.add_argument("--threads", type=int, default=usable_cpus(),
                   help="threads per llama-server (default: the CPUs this process may use, here %(default)s)")
    g.add_argument("--exact-sessions", action="store_true",
                   help="one request at a time per llama-server, each conversation on the slot that computed it: "
                        "every session replays bit for bit (default: slots run in parallel, and a replay of KV "
                        "computed alongside another conversation is served as faithful)")
    g.add_argument("--lm", action="store_true",
                   help="code conversations with the lm codec of the first upstream's GGUF (seqkv's engine on its "
                        "own blocks, on this machine's CPU) instead of plt: fewer bytes, more CPU per turn")
    g.add_argument("--slot-file-budget", type=int, default=4 << 30, metavar="BYTES",
                   help="slot files kept per replica (default 4 GiB); older ones are replayed instead")
    g.set_defaults(func=_cmd_gateway)

    s = sub.add_parser("slots", help="llama.cpp slot files (ggsq) <-> .skv streams")
    ssub = s.add_subparsers(dest="slots_command", metavar="ACTION", required=True)
    si = ssub.add_parser("import", parents=[common], help="a slot file -> a .skv stream (tokens + schedule + KV hash)")
    si.add_argument("file", metavar="SLOT")
    si.add_argument("-o", "--output", required=True, metavar="OUT.skv")
    si.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    si.add_argument("--schedule", metavar="JSON", help="the slot's recorded schedule (default: one prefill)")
    si.set_defaults(func=_cmd_import)
    se = ssub.add_parser("export", parents=[common], help="a .skv stream -> a slot file, by replay on llama-server")
    se.add_argument("file", metavar="IN.skv")
    se.add_argument("-o", "--output", required=True, metavar="SLOT")
    se.add_argument("--model", required=True, metavar="GGUF")
    se.set_defaults(func=_cmd_export)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask): what llama-server should use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# -- slots import / export ------------------------------------------------------------------


def chunk_sizes(schedule: Schedule) -> tuple[int, ...]:
    """A contiguous schedule as the container's chunk sizes (a step is a chunk of one)."""
    out: list[int] = []
    for seg in schedule.segments:
        out.extend([seg.end - seg.start] if seg.kind == PREFILL else [1] * (seg.end - seg.start))
    return tuple(out)


def schedule_of_chunks(sizes: tuple[int, ...]) -> Schedule:
    """The inverse of :func:`chunk_sizes` (runs of one-token chunks become one steps segment)."""
    segs: list[Segment] = []
    at = 0
    for size in sizes:
        if size == 1 and segs and segs[-1].kind == STEPS:
            segs[-1] = Segment(STEPS, segs[-1].start, at + 1)
        else:
            segs.append(Segment(PREFILL if size > 1 else STEPS, at, at + size))
        at += size
    return Schedule(tuple(segs))


def import_slot(path: str, vocab_size: int, schedule: Schedule | None = None) -> bytes:
    """A ``.skv`` stream of a slot file's tokens, its schedule and KV SHA-256."""
    from .. import codecs
    from ..coding import container

    slot = read_slot_file(path)
    sched = schedule or (Schedule((Segment(PREFILL, 0, int(slot.tokens.size)),)) if slot.tokens.size else Schedule())
    if sched.cached != slot.tokens.size:
        raise InvalidInputError(f"the schedule covers {sched.cached} tokens, the slot file holds {slot.tokens.size}")
    data, _ = codecs.get("plt", vocab_size=vocab_size).encode_with_stats(slot.tokens)
    c = container.unpack(data)
    profile = json.dumps({_PROFILE_KEY: {"kv_sha256": slot.kv_sha256}}, sort_keys=True)
    h = c.header
    header = container.Header(
        codec=h.codec, precision=h.precision, token_count=h.token_count, vocab_size=h.vocab_size,
        model_fingerprint=h.model_fingerprint, numerics_profile=profile, schedule=chunk_sizes(sched),
        params=h.params, quantizer_version=h.quantizer_version,
    )
    return container.pack(header, c.blocks)


async def export_slot(data: bytes, model: Path, out: Path) -> tuple[str, str]:
    """Replay a ``.skv`` stream's schedule on a fresh llama-server; ``(exactness, kv_sha256)``."""
    from .. import codecs
    from ..coding import container
    from .service import GREEDY
    from .upstream.llamacpp import LlamaCppUpstream
    from .upstream.process import LlamaServerProcess, ServerOptions

    c = container.unpack(data)
    try:
        recorded = json.loads(c.header.numerics_profile or "{}")[_PROFILE_KEY]["kv_sha256"]
    except (ValueError, KeyError, TypeError):
        raise InvalidInputError("this .skv stream was not imported from a slot file (no llama.cpp KV hash)") from None
    tokens = codecs.get("plt", vocab_size=c.header.vocab_size).decode(data).tolist()
    sched = schedule_of_chunks(tuple(c.header.schedule))
    with tempfile.TemporaryDirectory() as tmp:
        options = ServerOptions(model=model, slot_dir=Path(tmp), n_ctx_slot=max(2048, len(tokens) + 64))
        with LlamaServerProcess(options) as proc:
            up = LlamaCppUpstream(proc.url, options)
            try:
                for end in sched.replay_prompts():
                    await up.complete(tokens[:end], 0, 1, GREEDY)
                saved = await up.save_slot(0, "export.ggsq")
            finally:
                await up.aclose()
            shutil.copyfile(up.slot_path("export.ggsq"), out)
    return ("exact" if saved.kv_sha256 == recorded else "faithful"), saved.kv_sha256


def _cmd_import(args: argparse.Namespace) -> int:
    sched = Schedule.from_json(json.loads(args.schedule)) if args.schedule else None
    data = import_slot(args.file, args.vocab_size, sched)
    Path(args.output).write_bytes(data)
    print(f"{args.file}: {os.path.getsize(args.file):,} bytes -> {args.output}: {len(data):,} bytes")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import asyncio

    exactness, digest = asyncio.run(export_slot(Path(args.file).read_bytes(), Path(args.model), Path(args.output)))
    print(f"{args.output}: KV sha256 {digest} ({exactness})")
    return 0 if exactness == "exact" else 3


# -- gateway ----------------------------------------------------------------------------------


def _cmd_gateway(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingExtraError("seqkv gateway needs the gateway extra: pip install 'seqkv[gateway]'") from exc
    from .launch import launch_gateway

    state = Path(args.state_dir)
    models = []
    for spec in args.upstream:
        kind, _, path = spec.partition(":")
        if kind != "llama-server" or not path:
            raise InvalidInputError(f"--upstream {spec!r}: expected llama-server:PATH_TO_GGUF")
        models.append(Path(path))
    app, _ = launch_gateway(models, state, db=args.db, parallel=args.parallel, n_ctx_slot=args.ctx,
                            threads=args.threads, slot_file_budget=args.slot_file_budget,
                            exact_sessions=args.exact_sessions, lm=args.lm)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM (the app's lifespan stops the llama-servers),
    # then raises the signal again under the handlers it found: a requested stop exits with 0
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
