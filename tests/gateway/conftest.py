"""Fixtures for the gateway tests: a real llama-server (tests marked ``llamacpp`` skip, with the
reason, when ``make llama-server`` has not built it) on the SmolLM2 Q4_1 GGUF."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "llamacpp: needs llama-server (make llama-server) and the SmolLM2 GGUF")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from seqkv.gateway.upstream.process import find_llama_server

    if find_llama_server() is not None and _gguf() is not None:
        return
    why = "llama-server is not built (run `make llama-server`)" if find_llama_server() is None else "no SmolLM2 GGUF"
    skip = pytest.mark.skip(reason=why)
    for item in items:
        if "llamacpp" in item.keywords:
            item.add_marker(skip)


def _gguf() -> Path | None:
    try:
        from seqkv.integrations.models import smollm2_folder

        path = Path(smollm2_folder()) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    except Exception:
        return None
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def gguf() -> Path:
    path = _gguf()
    assert path is not None
    return path
