"""Every script under examples/ runs to completion (they are documentation that must not rot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str, timeout: float = 600) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_shared_prefix_threads():
    out = run_example("shared_prefix_threads.py")
    assert "tokens stored once" in out


@pytest.mark.model
def test_compress_file():
    out = run_example("compress_file.py", "/usr/share/common-licenses/BSD", "--tokens", "24")
    assert out.count("round trip ok") == 3


@pytest.mark.model
def test_chat_session():
    out = run_example("chat_session.py")
    assert "same continuation: True" in out
