"""``seqkv gateway`` itself, as a process: it starts its llama-server, serves over HTTP, restarts
the llama-server when it is killed (the conversation resumes from its slot file), and stops
cleanly on SIGTERM, taking its llama-server with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from seqkv.backends.testing import free_port
from seqkv.gateway.upstream.process import wait_healthy

pytestmark = pytest.mark.llamacpp


def _children(pid: int) -> list[int]:
    """The llama-server processes whose parent is ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and argv0.endswith(b"llama-server"):
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_seqkv_gateway_command_restarts_a_killed_upstream_and_stops_cleanly(tmp_path, gguf):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    gateway = subprocess.Popen(
        [sys.executable, "-m", "seqkv", "gateway", "--upstream", f"llama-server:{gguf}", "--port", str(port),
         "--state-dir", str(tmp_path), "--parallel", "1", "--ctx", "1024", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        wait_healthy(url, gateway, 120, what="seqkv gateway")
        (upstream,) = _children(gateway.pid)
        with httpx.Client(base_url=url, timeout=120) as c:
            r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
            assert r.status_code == 200, r.text
            sid, first = r.json()["session_id"], r.json()["seqkv"]

            os.kill(upstream, signal.SIGKILL)  # the upstream dies mid-conversation
            deadline = time.monotonic() + 120
            while not (_children(gateway.pid) and _children(gateway.pid) != [upstream]):
                assert time.monotonic() < deadline, "the supervisor did not restart llama-server"
                time.sleep(0.2)
            (restarted,) = _children(gateway.pid)
            wait_healthy(_upstream_url(tmp_path), None, 120, what="the restarted llama-server")

            r = c.post("/v1/chat/completions", json={"session_id": sid, "max_tokens": 8,
                                                     "messages": [{"role": "user", "content": "Again"}]})
            assert r.status_code == 200, r.text
            info = r.json()["seqkv"]
            assert info["resume"]["how"] == "slot_file" and info["resume"]["kv_sha256"] == first["kv_sha256"]
            assert info["exactness"] == "exact"
            assert [m["role"] for m in c.get(f"/v1/chat/completions/{sid}").json()["messages"]] == [
                "user", "assistant", "user", "assistant"]

        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=60) == 0
        assert not _alive(restarted)  # its llama-server went with it
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()


def _upstream_url(state_dir: Path) -> str:
    (log,) = (state_dir / "replica0").glob("llama-server-*.log")
    return "http://127.0.0.1:" + log.stem.rsplit("-", 1)[1]
