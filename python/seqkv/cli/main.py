"""The ``seqkv`` command line (also ``python -m seqkv``).

::

    seqkv compress FILE -o OUT.skv [--codec lm|plt|raw] [--verify] [--model PATH] [--engine E] [--device cuda]
    seqkv decompress IN.skv -o FILE [--tokens] [--max-tokens N] [--model PATH] [--engine E] [--device cuda]
    seqkv inspect IN.skv [--json]
    seqkv store put  --db DB SESSION_ID FILE [--codec ...]   (FILE: a .skv stream or text)
    seqkv store get  --db DB SESSION_ID [-o OUT.skv | --text -o FILE] [--max-tokens N] [--model PATH]
    seqkv store ls   --db DB [--json]
    seqkv store rm   --db DB SESSION_ID
    seqkv store stats --db DB [--json]
    seqkv demo [ARGS ...]

``FILE`` may be ``-`` for standard input or output. Text is tokenised with the SmolLM2
tokenizer (its ``tokenizer.json`` is cached under ``$SEQKV_CACHE_DIR``, default
``~/.cache/seqkv``, after the first use), or another transformers model folder's with
``--model PATH``; ``--codec lm`` also needs the model (SmolLM2's engine from the model cache,
once a run has stored it: ``docs/engine.md``). A stream of another model is refused
with the model it needs (``seqkv.cli.models``); ``--engine`` picks how lm logits are computed
(default: what the stream records). Decoding refuses a stream of more than ``--max-tokens``
tokens (default 16,777,216) and writes its output in chunks.
``--db`` takes a SQLite path or a ``redis://`` URL (``$SEQKV_DB`` is the default).

Exit status: 0 on success, 1 on a seqkv error or an unreadable/unwritable file (one line on
stderr, no traceback), 2 on a usage error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import inspect as _inspect
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..codecs.base import describe_schedule
from ..errors import CorruptStreamError, InvalidInputError, SeqkvError
from ..gateway.cli import register as register_gateway_commands
from .models import ENGINES, ModelChoice, codec_for_stream
from .output import CliError, open_output, write_bytes, write_ids, write_text

__all__ = ["main", "build_parser", "DEFAULT_MAX_TOKENS"]

PROG = "seqkv"
MAGIC = b"SQKV"
TEXT_CODECS = ("lm", "plt", "raw", "lm-robust")
#: ``--max-tokens`` unless given: the most tokens a decoded stream may claim.
DEFAULT_MAX_TOKENS = 16_777_216


def _read_bytes(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except IsADirectoryError:
        raise CliError(f"cannot read {path}: it is a directory") from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None


def _decode_text(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"{path} is not UTF-8 text (byte {exc.start}): pass --tokens for a file of token ids") from None


def _parse_ids(text: str, path: str) -> np.ndarray:
    try:
        return np.array([int(x) for x in text.split()], dtype=np.int64)
    except ValueError as exc:
        raise CliError(f"{path} is not a list of integer token ids: {exc}") from None


# -- model, tokenizer and codecs ------------------------------------------------------------


def _choice(args: argparse.Namespace) -> ModelChoice:
    return ModelChoice(path=getattr(args, "model", None), engine=getattr(args, "engine", None),
                       device=getattr(args, "device", None) or "cpu", say=_say)


def tokenize(text: str, choice: ModelChoice = ModelChoice()) -> np.ndarray:
    ids = choice.encode_text(text)
    if choice.decode_text(ids.tolist()) != text:
        raise CliError(
            f"this text does not survive {choice.name} tokenisation unchanged; pass --tokens with token ids instead"
        )
    return ids


def _codec(name: str, choice: ModelChoice, verify: bool = False) -> Any:
    from .. import codecs

    if name in ("lm", "lm-robust"):
        return choice.lm_codec(name, verify=verify)
    return codecs.get(name, vocab_size=choice.text_vocab_size())


# -- progress -------------------------------------------------------------------------------

_QUIET = False


def _say(message: str, *, note: bool = False) -> None:
    """What the command is doing, on stderr: on a terminal only, unless it is a ``note``."""
    if _QUIET:
        return
    if note:
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    elif sys.stderr.isatty():
        print(f"{message} ...", file=sys.stderr, flush=True)


@contextmanager
def _status(message: str) -> Iterator[None]:
    _say(message)
    yield


def _run_with_progress(fn: Any, arg: Any, total: int, desc: str, **kwargs: Any) -> Any:
    """Call ``fn(arg, **kwargs)`` with a tqdm bar on stderr when ``fn`` takes ``progress=``."""
    try:
        takes_progress = "progress" in _inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_progress = False
    if not takes_progress or _QUIET or total < 256:
        return fn(arg, **kwargs)
    try:
        from tqdm import tqdm
    except ImportError:
        return fn(arg, **kwargs)
    with tqdm(total=total, desc=desc, unit="tok", file=sys.stderr, disable=None, leave=False) as bar:
        return fn(arg, progress=bar.update, **kwargs)


# -- container summaries --------------------------------------------------------------------


def _unpack(data: bytes, what: str) -> Any:
    if data[:4] != MAGIC:
        raise CorruptStreamError(f"{what} is not a seqkv stream (no SQKV magic)")
    from ..coding import container

    return container.unpack(data)


def describe(data: bytes, what: str = "stream") -> dict[str, Any]:
    """A JSON-able summary of a container: header, sizes, schedule and blocks."""
    c = _unpack(data, what)
    h = c.header
    tokens = int(h.token_count)
    payload = sum(len(b.payload) for b in c.blocks)
    profile_text = h.numerics_profile or ""
    try:
        profile: Any = json.loads(profile_text) if profile_text else None
    except ValueError:
        profile = profile_text
    fingerprint = bytes(h.model_fingerprint)
    out = {
        "format_version": int(getattr(h, "format_version", int.from_bytes(data[4:6], "little"))),
        "codec": h.codec,
        "quantizer_version": getattr(h, "quantizer_version", None),
        "precision": int(h.precision),
        "tokens": tokens,
        "vocab_size": int(h.vocab_size),
        "model_fingerprint": fingerprint.hex() if fingerprint else None,
        "numerics_profile": profile,
        "schedule": [int(s) for s in h.schedule],
        "params": bytes(getattr(h, "params", b"")).hex(),
        "bytes": len(data),
        "payload_bytes": payload,
        "overhead_bytes": len(data) - payload,
        "bits_per_token": 8 * len(data) / tokens if tokens else None,
        "payload_bits_per_token": 8 * payload / tokens if tokens else None,
        "blocks": [
            {"tokens": int(b.n_tokens), "payload_bytes": len(b.payload), "tokens_crc32c": f"{int(b.tokens_crc32c):08x}"}
            for b in c.blocks
        ],
    }
    return out


def _print_description(d: dict[str, Any], out: Any) -> None:
    bpt = d["bits_per_token"]
    rows = [
        ("format", f"SQKV version {d['format_version']}"),
        ("codec", d["codec"]),
        ("precision", f"{d['precision']} bits"),
        ("quantizer", d["quantizer_version"]),
        ("tokens", f"{d['tokens']:,}"),
        ("vocab size", f"{d['vocab_size']:,}"),
        ("size", f"{d['bytes']:,} bytes ({d['payload_bytes']:,} payload + {d['overhead_bytes']:,} header/framing)"),
        ("bits/token", "-" if bpt is None else f"{bpt:.3f} ({d['payload_bits_per_token']:.3f} payload)"),
        ("fingerprint", d["model_fingerprint"] or "(none: no model)"),
        ("schedule", describe_schedule(d["schedule"])),
        ("params", d["params"] or "(none)"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}", file=out)
    prof = d["numerics_profile"]
    if prof:
        text = json.dumps(prof, sort_keys=True) if not isinstance(prof, str) else prof
        print(f"{'numerics':<{width}}  {text}", file=out)
    print(f"{'blocks':<{width}}  {len(d['blocks'])}", file=out)
    for i, b in enumerate(d["blocks"]):
        print(f"  #{i:<4d} {b['tokens']:>8,} tokens  {b['payload_bytes']:>10,} bytes  crc32c {b['tokens_crc32c']}", file=out)


# -- commands -------------------------------------------------------------------------------


def _tokens_from(args: argparse.Namespace, data: bytes, path: str) -> np.ndarray:
    text = _decode_text(data, path)
    if args.tokens:
        return _parse_ids(text, path)
    with _status("tokenising"):
        return tokenize(text, _choice(args))


def _encode(args: argparse.Namespace, codec_name: str, tokens: np.ndarray, verify: bool) -> bytes:
    codec = _codec(codec_name, _choice(args), verify=verify)
    return bytes(_run_with_progress(codec.encode, tokens, int(tokens.size), f"{codec_name} encode"))


def _check_claim(tokens: int, args: argparse.Namespace) -> None:
    if tokens > args.max_tokens:
        raise CliError(
            f"the stream claims {tokens:,} tokens, more than --max-tokens {args.max_tokens:,}; "
            "pass a larger --max-tokens if you trust it"
        )


def _decode(data: bytes, args: argparse.Namespace, *, text: bool) -> np.ndarray:
    """The stream's tokens, refused before any work when it claims more than ``--max-tokens``
    or needs another model (or, for ``text``, another tokenizer) than the command has."""
    c = _unpack(data, "stream")
    _check_claim(int(c.header.token_count), args)
    choice = _choice(args)
    if text:
        choice.check_text_vocab(int(c.header.vocab_size))
    codec = codec_for_stream(c.header, choice, max_tokens=args.max_tokens)
    return np.asarray(_run_with_progress(codec.decode, data, int(c.header.token_count), f"{c.header.codec} decode"))


def _write_tokens(args: argparse.Namespace, tokens: np.ndarray, *, ids: bool) -> None:
    with open_output(args.output) as f:
        if ids:
            write_ids(f, tokens)
        else:
            write_text(f, tokens, _choice(args).decode_text)


def cmd_compress(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    tokens = _tokens_from(args, _read_bytes(args.file), args.file)
    data = _encode(args, args.codec, tokens, args.verify)
    write_bytes(args.output, data)
    if not _QUIET:
        n = int(tokens.size)
        bpt = f"{8 * len(data) / n:.3f} bits/token" if n else "empty"
        print(
            f"{args.file}: {n:,} tokens -> {len(data):,} bytes ({bpt}, codec {args.codec}) "
            f"in {time.perf_counter() - t0:.2f} s",
            file=sys.stderr,
        )
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:
    tokens = _decode(_read_bytes(args.file), args, text=not args.tokens)
    _write_tokens(args, tokens, ids=args.tokens)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    d = describe(_read_bytes(args.file), args.file)
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        _print_description(d, sys.stdout)
    return 0


def _open_db(args: argparse.Namespace) -> Any:
    from ..backends import open_backend

    db = args.db or os.environ.get("SEQKV_DB")
    if not db:
        raise InvalidInputError("no store given: pass --db PATH_OR_URL or set SEQKV_DB")
    return open_backend(db)


def cmd_store_put(args: argparse.Namespace) -> int:
    from ..backends import SessionRecord

    raw = _read_bytes(args.file)
    if raw[:4] == MAGIC:
        data = raw
    else:
        data = _encode(args, args.codec, _tokens_from(args, raw, args.file), verify=False)
    d = describe(data, args.file)
    meta = {
        "kind": "stream",
        "tokens": d["tokens"],
        "codec": d["codec"],
        "vocab_size": d["vocab_size"],
        "model_fingerprint": d["model_fingerprint"],
        "schedule": d["schedule"],
        "tier": "cold",
        "sizes": {"container": len(data)},
        "source": os.path.basename(args.file) if args.file != "-" else "-",
        "created": time.time(),
    }
    with _open_db(args) as store:
        store.put(args.session_id, SessionRecord(data, meta))
    if not _QUIET:
        print(f"stored {args.session_id!r}: {d['tokens']:,} tokens, {len(data):,} bytes ({d['codec']})", file=sys.stderr)
    return 0


def cmd_store_get(args: argparse.Namespace) -> int:
    from ..store.catalog import read_record

    with _open_db(args) as store:
        record = store.get(args.session_id)
        # put by `seqkv store put`: one self-contained stream
        stream = isinstance(record.meta, dict) and record.meta.get("kind") == "stream"
        session = None if stream else read_record(store, args.session_id)
    if not args.text:
        if args.output == "-" and sys.stdout.isatty():
            raise InvalidInputError("refusing to write a binary stream to a terminal: pass -o FILE (or --text)")
        write_bytes(args.output, record.container if session is None else session[1])
        return 0
    if session is None:
        tokens = _decode(record.container, args, text=True)
    else:
        tokens = _session_tokens(args, session[0].n_tokens)
    _write_tokens(args, tokens, ids=False)
    return 0


def _session_tokens(args: argparse.Namespace, n_tokens: int) -> np.ndarray:
    """All tokens of a SessionStore session, its shared prefix included (the store resolves the
    chain of records it continues)."""
    from ..store import SessionStore

    _check_claim(n_tokens, args)
    choice = _choice(args)
    with _status(f"loading {choice.name} to open the store"):
        model, tokenizer = choice.load()
    choice.check_text_vocab(_model_vocab(model))
    store = SessionStore(model, tokenizer=tokenizer, backend=args.db or os.environ.get("SEQKV_DB"))
    try:
        return store.tokens(args.session_id)
    finally:
        store.close()


def _model_vocab(model: Any) -> int:
    from ..integrations.models import vocab_size

    return vocab_size(model)


def _printable(session_id: str) -> str:
    """A session id with control and other unprintable characters escaped (``\\x1b``)."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in session_id)


def _visible_ids(store: Any) -> list[str]:
    """The backend's ids without the store's internal rows."""
    from ..store.catalog import HIDDEN_PREFIX

    return [sid for sid in store.ids() if not sid.startswith(HIDDEN_PREFIX)]


def _describe(store: Any, session_id: str) -> dict[str, Any]:
    """What ``store ls``/``stats`` show of a row: a ``seqkv store put`` stream's metadata, or a
    SessionStore record's."""
    from ..store.catalog import read_meta

    meta = store.get_meta(session_id)
    row = {"id": session_id, "bytes": store.size(session_id), "tier": None}
    if isinstance(meta, dict) and meta.get("kind") == "stream":
        return row | {"tokens": meta.get("tokens"), "codec": meta.get("codec"), "tier": meta.get("tier")}
    session = read_meta(store, session_id)
    return row | {"tokens": session.n_tokens, "codec": session.codec}


def cmd_store_ls(args: argparse.Namespace) -> int:
    with _open_db(args) as store:
        rows = [_describe(store, sid) for sid in _visible_ids(store)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if rows:
        shown = [_printable(r["id"]) for r in rows]
        width = max(len(sid) for sid in shown)
        print(f"{'SESSION':<{width}}  {'TOKENS':>8}  {'BYTES':>10}  CODEC      TIER")
        for sid, r in zip(shown, rows):
            tokens = "-" if r["tokens"] is None else f"{r['tokens']:,}"
            print(f"{sid:<{width}}  {tokens:>8}  {r['bytes']:>10,}  {str(r['codec'] or '-'):<9}  {r['tier'] or '-'}")
    return 0


def cmd_store_rm(args: argparse.Namespace) -> int:
    from ..errors import SessionNotFoundError
    from ..store.catalog import HIDDEN_PREFIX

    if args.session_id.startswith(HIDDEN_PREFIX):
        raise InvalidInputError(
            f"{_printable(args.session_id)!r} is an internal row of the store (a deleted session others still "
            "reference): it goes when they do"
        )
    with _open_db(args) as store:
        if not store.delete(args.session_id):
            raise SessionNotFoundError(f"no session {_printable(args.session_id)!r} in the store")
    return 0


def cmd_store_stats(args: argparse.Namespace) -> int:
    with _open_db(args) as store:
        stats = store.stats()
        tokens = 0
        by_codec: dict[str, dict[str, int]] = {}
        for sid in store.ids():
            row = _describe(store, sid)
            n = int(row["tokens"] or 0)
            tokens += n
            entry = by_codec.setdefault(str(row["codec"] or "?"), {"sessions": 0, "tokens": 0, "bytes": 0})
            entry["sessions"] += 1
            entry["tokens"] += n
            entry["bytes"] += row["bytes"]
    stats["tokens"] = tokens
    stats["bits_per_token"] = 8 * stats.get("bytes", 0) / tokens if tokens else None
    stats["by_codec"] = by_codec
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    for key, value in stats.items():
        if key == "by_codec":
            for codec, e in value.items():
                bpt = f"{8 * e['bytes'] / e['tokens']:.3f} bits/token" if e["tokens"] else "-"
                print(f"  {codec:<10} {e['sessions']:>6} sessions  {e['tokens']:>10,} tokens  {e['bytes']:>12,} bytes  {bpt}")
        elif key == "bits_per_token":
            print(f"{key}: {'-' if value is None else f'{value:.3f}'}")
        elif isinstance(value, list):
            print(f"{key}: {', '.join(value) or '-'}")
        else:
            print(f"{key}: {value}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    result = demo.main(list(args.demo_args))
    return int(result or 0)


# -- parser and entry point -----------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Store and move transformer KV caches as token sequences.",
        epilog="Exit status: 0 ok, 1 error, 2 usage error.",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries on stderr")
    # -q is accepted after the command too; SUPPRESS keeps a sub-command from resetting it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    models = argparse.ArgumentParser(add_help=False)
    models.add_argument("--model", metavar="PATH", help="a transformers model folder to use instead of SmolLM2")
    models.add_argument(
        "--engine", choices=ENGINES, help="how lm logits are computed (default: what the stream records, else auto)"
    )
    models.add_argument(
        "--device", metavar="DEV", help="where the model runs: cpu (default) or cuda[:N] (lm: the GPU engine, seqkv[cuda])"
    )
    limits = argparse.ArgumentParser(add_help=False)
    limits.add_argument(
        "--max-tokens", type=_positive_int, default=DEFAULT_MAX_TOKENS, metavar="N",
        help=f"refuse a stream claiming more tokens (default {DEFAULT_MAX_TOKENS:,})",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    c = sub.add_parser("compress", parents=[common, models], help="text (or token ids) -> a .skv stream")
    c.add_argument("file", metavar="FILE", help="UTF-8 text file, or - for stdin")
    c.add_argument("-o", "--output", required=True, metavar="OUT", help="output .skv file, or - for stdout")
    c.add_argument("--codec", choices=TEXT_CODECS, default="lm", help="token codec (default: lm)")
    c.add_argument("--tokens", action="store_true", help="FILE holds whitespace-separated token ids, not text")
    c.add_argument("--verify", action="store_true", help="lm: decode right after encoding and compare")
    c.set_defaults(func=cmd_compress)

    d = sub.add_parser("decompress", parents=[common, models, limits], help="a .skv stream -> text (or token ids)")
    d.add_argument("file", metavar="IN", help=".skv file, or - for stdin")
    d.add_argument("-o", "--output", required=True, metavar="FILE", help="output file, or - for stdout")
    d.add_argument("--tokens", action="store_true", help="write token ids, one per line, instead of text")
    d.set_defaults(func=cmd_decompress)

    i = sub.add_parser("inspect", parents=[common], help="show a stream's header, fingerprint, sizes, schedule and blocks")
    i.add_argument("file", metavar="IN", help=".skv file, or - for stdin")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=cmd_inspect)

    s = sub.add_parser("store", help="sessions in a SQLite file or a Redis server")
    ssub = s.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    db_help = "SQLite path or redis:// URL (default: $SEQKV_DB)"

    sp = ssub.add_parser("put", parents=[common, models], help="store FILE (a .skv stream, or text to compress) under SESSION_ID")
    sp.add_argument("session_id", metavar="SESSION_ID")
    sp.add_argument("file", metavar="FILE", help=".skv stream or UTF-8 text, or - for stdin")
    sp.add_argument("--db", help=db_help)
    sp.add_argument("--codec", choices=TEXT_CODECS, default="plt", help="codec for text input (default: plt)")
    sp.add_argument("--tokens", action="store_true", help="text input holds token ids")
    sp.set_defaults(func=cmd_store_put)

    sg = ssub.add_parser("get", parents=[common, models, limits], help="write the stream of SESSION_ID (or its text with --text)")
    sg.add_argument("session_id", metavar="SESSION_ID")
    sg.add_argument("--db", help=db_help)
    sg.add_argument("-o", "--output", default="-", metavar="FILE", help="output file (default: stdout)")
    sg.add_argument("--text", action="store_true", help="decode to text")
    sg.set_defaults(func=cmd_store_get)

    sl = ssub.add_parser("ls", parents=[common], help="list sessions")
    sl.add_argument("--db", help=db_help)
    sl.add_argument("--json", action="store_true")
    sl.set_defaults(func=cmd_store_ls)

    sr = ssub.add_parser("rm", parents=[common], help="delete a session")
    sr.add_argument("session_id", metavar="SESSION_ID")
    sr.add_argument("--db", help=db_help)
    sr.set_defaults(func=cmd_store_rm)

    ss = ssub.add_parser("stats", parents=[common], help="counts, sizes and bits per token of a store")
    ss.add_argument("--db", help=db_help)
    ss.add_argument("--json", action="store_true")
    ss.set_defaults(func=cmd_store_stats)

    dm = sub.add_parser("demo", parents=[common], help="the main job: SmolLM2 sessions stored and restored, one table")
    dm.add_argument("demo_args", nargs=argparse.REMAINDER, metavar="ARGS", help="passed to the demo")
    dm.set_defaults(func=cmd_demo)
    register_gateway_commands(sub, common)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    global _QUIET
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    # Everything after `demo` is the demo's own (argparse's REMAINDER would not take a leading
    # option such as `seqkv demo --json F`).
    cut = words.index("demo") + 1 if "demo" in words else len(words)
    if not all(w.startswith("-") for w in words[: cut - 1]):
        cut = len(words)
    args = parser.parse_args(words[:cut])
    if cut < len(words):
        args.demo_args = words[cut:]
    _QUIET = bool(args.quiet)
    try:
        return int(args.func(args))
    except SeqkvError as exc:
        # str() of a KeyError subclass (SessionNotFoundError) would add quotes: use the argument
        text = str(exc.args[0]) if len(exc.args) == 1 else str(exc)
        message = " ".join(text.split("\n")) or type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `seqkv store ls | head`): not an error worth a traceback
        try:  # point stdout at /dev/null so the interpreter's flush at exit stays quiet
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except OSError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
