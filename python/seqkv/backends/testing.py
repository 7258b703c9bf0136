"""A throwaway local ``redis-server`` for tests, benchmarks and examples.

``with local_redis_server() as url: ...`` starts Debian's ``redis-server`` (or ``valkey-server``)
on 127.0.0.1 on a free port with persistence off, waits until it answers, yields its
``redis://`` URL and stops it afterwards. :func:`redis_server_binary` says whether one is installed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import StoreError

__all__ = ["local_redis_server", "redis_server_binary", "free_port"]


def redis_server_binary() -> str | None:
    """Path of ``redis-server`` or ``valkey-server``, or ``None`` when neither is installed."""
    return shutil.which("redis-server") or shutil.which("valkey-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def local_redis_server(startup_timeout_s: float = 10.0) -> Iterator[str]:
    binary = redis_server_binary()
    if binary is None:
        raise StoreError("no redis-server or valkey-server binary on PATH (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="seqkv-redis-") as workdir:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", workdir, "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + startup_timeout_s
            while True:
                if proc.poll() is not None:
                    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                    raise StoreError(f"{binary} exited at start-up with status {proc.returncode}: {out.strip()}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                        s.sendall(b"PING\r\n")
                        if s.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise StoreError(f"{binary} did not answer on port {port} within {startup_timeout_s:g} s")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()
