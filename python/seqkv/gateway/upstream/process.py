"""Starting and stopping a local ``llama-server`` (the binary ``make llama-server`` builds)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from ...integrations.model_cache import cache_root
from ..errors import UpstreamUnavailableError
from ...errors import InvalidInputError

__all__ = ["LLAMA_CPP_VERSION", "ServerOptions", "LlamaServerProcess", "find_llama_server", "default_build_dir",
           "default_source_dir", "wait_healthy"]

#: The llama-cpp-python sdist whose vendored llama.cpp tree ``make llama-server`` builds.
LLAMA_CPP_VERSION = "0.3.36"


def default_build_dir() -> Path:
    """``<cache>/llama.cpp-VERSION/build`` (``<cache>``: the model cache's root, ``$SEQKV_CACHE_DIR``)."""
    return cache_root() / f"llama.cpp-{LLAMA_CPP_VERSION}" / "build"


def default_source_dir() -> Path:
    """``<cache>/src``: where the sdist is downloaded and unpacked."""
    return cache_root() / "src"


def find_llama_server() -> Path | None:
    """``$SEQKV_LLAMA_SERVER``, else the cached build, else ``llama-server`` on the PATH."""
    env = os.environ.get("SEQKV_LLAMA_SERVER")
    if env:
        return Path(env) if Path(env).is_file() else None
    built = default_build_dir() / "bin" / "llama-server"
    if built.is_file():
        return built
    found = shutil.which("llama-server")
    return Path(found) if found else None


@dataclass(frozen=True)
class ServerOptions:
    """The settings a started server gets (and a recorded schedule depends on)."""

    model: Path
    slot_dir: Path
    n_parallel: int = 1
    n_ctx_slot: int = 8192
    n_batch: int = 2048
    n_ubatch: int = 512
    threads: int = 2
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: str = "off"
    seed: int = 0

    def argv(self, binary: Path, port: int) -> list[str]:
        return [
            str(binary), "-m", str(self.model), "--host", "127.0.0.1", "--port", str(port),
            "--slot-save-path", str(self.slot_dir) + os.sep,
            "-np", str(self.n_parallel), "-c", str(self.n_ctx_slot * self.n_parallel),
            "-b", str(self.n_batch), "-ub", str(self.n_ubatch),
            "-t", str(self.threads), "-tb", str(self.threads),
            "-ctk", self.cache_type_k, "-ctv", self.cache_type_v, "-fa", self.flash_attn,
            "--seed", str(self.seed), "--no-warmup", "--cache-ram", "0", "--ctx-checkpoints", "0",
            "--no-webui",
        ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServerProcess:
    """A ``llama-server`` child process on 127.0.0.1 (a free port unless one is given)."""

    def __init__(self, options: ServerOptions, *, binary: Path | None = None, port: int | None = None,
                 log_path: Path | None = None):
        found = binary or find_llama_server()
        if found is None:
            raise InvalidInputError("llama-server is not built: run `make llama-server` or set $SEQKV_LLAMA_SERVER")
        if not options.model.is_file():
            raise InvalidInputError(f"model file {options.model} does not exist")
        self.binary = found
        self.options = options
        self.port = port or _free_port()
        self.log_path = log_path or options.slot_dir / f"llama-server-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 120.0) -> LlamaServerProcess:
        self.options.slot_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self._proc = subprocess.Popen(
                self.options.argv(self.binary, self.port), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            log.close()
        try:
            wait_healthy(self.url, self._proc, timeout_s, what=f"llama-server (log: {self.log_path})")
        except UpstreamUnavailableError:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        """Stop the server at once (SIGKILL: what a crash looks like to the gateway)."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._proc = None

    def __enter__(self) -> LlamaServerProcess:
        return self.start() if not self.running else self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout_s: float, *, what: str = "the server") -> None:
    """Poll ``url``'s ``/health`` until it answers 200; :class:`UpstreamUnavailableError` when
    ``proc`` (the server's process, if known) exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise UpstreamUnavailableError(f"{what} exited with {proc.returncode} at start-up")
        try:
            if httpx.get(url + "/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise UpstreamUnavailableError(f"{what} did not become healthy within {timeout_s:.0f} s")
