"""Output files written atomically (temp file + rename) and decoded tokens written in chunks,
so that a long stream never becomes one huge string in memory."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np

from ..errors import SeqkvError

__all__ = ["CliError", "open_output", "write_bytes", "write_ids", "write_text", "CHUNK_TOKENS"]

#: Tokens turned into text (or id lines) at a time.
CHUNK_TOKENS = 1 << 16
#: A chunk's text ending in U+FFFD may be a character cut between two tokens: up to this many
#: of its last tokens wait for the next chunk.
_HOLD_BACK = 8


class CliError(SeqkvError):
    """A failure the CLI reports in one line (exit status 1)."""


@contextmanager
def open_output(path: str) -> Iterator[IO[bytes]]:
    """A binary file for ``path`` (``-``: stdout) that appears under its name only when the
    block completes (written to a temporary file beside it, then renamed)."""
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    if target.is_dir():
        raise CliError(f"cannot write {path}: it is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent if str(target.parent) else ".")
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, target)
    except OSError as exc:
        os.unlink(tmp)
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        os.unlink(tmp)
        raise


def write_bytes(path: str, data: bytes) -> None:
    with open_output(path) as f:
        f.write(data)


def write_ids(f: IO[bytes], tokens: np.ndarray) -> None:
    """Token ids, one per line."""
    for start in range(0, tokens.size, CHUNK_TOKENS):
        chunk = tokens[start : start + CHUNK_TOKENS]
        f.write(("\n".join(map(str, chunk.tolist())) + "\n").encode())


def write_text(f: IO[bytes], tokens: np.ndarray, decode: Callable[[Sequence[int]], str]) -> None:
    """The text of ``tokens``, decoded ``CHUNK_TOKENS`` at a time. A character whose bytes are
    split between tokens is never split between chunks: a chunk whose text ends in U+FFFD
    leaves up to ``_HOLD_BACK`` of its last tokens to the next one."""
    carry: list[int] = []
    for start in range(0, tokens.size, CHUNK_TOKENS):
        ids = carry + tokens[start : start + CHUNK_TOKENS].tolist()
        last = start + CHUNK_TOKENS >= tokens.size
        cut = len(ids)
        text = decode(ids)
        while not last and text.endswith("\ufffd") and len(ids) - cut < _HOLD_BACK and cut > 0:
            cut -= 1
            text = decode(ids[:cut])
        if not last and text.endswith("\ufffd"):
            cut, text = len(ids), decode(ids)  # a real U+FFFD (or a longer cut): keep the chunk whole
        carry = ids[cut:]
        f.write(text.encode("utf-8"))
    if carry:
        f.write(decode(carry).encode("utf-8"))
