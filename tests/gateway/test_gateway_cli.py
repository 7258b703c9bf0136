"""The ``seqkv gateway`` command line: defaults, and what the rest of the CLI pays for it."""

import os
import subprocess
import sys

import pytest


def _run(code: str, **kw) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, **kw).stdout


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_threads_default_to_the_cpus_the_gateway_may_use():
    one_cpu = min(os.sched_getaffinity(0))
    code = ("from seqkv.cli.main import build_parser;"
            "print(build_parser().parse_args(['gateway', '--upstream', 'llama-server:m.gguf']).threads)")
    assert _run(code, preexec_fn=lambda: os.sched_setaffinity(0, {one_cpu})).strip() == "1"
    assert _run(code).strip() == str(len(os.sched_getaffinity(0)))


def test_the_cli_does_not_import_the_gateway_server_stack():
    code = ("import sys, seqkv.cli.main;"
            "print(sorted(m for m in ('asyncio', 'httpx', 'starlette', 'uvicorn') if m in sys.modules))")
    assert _run(code).strip() == "[]"
