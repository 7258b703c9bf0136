"""Fast start: SmolLM2's ``lm`` codecs come from the model cache's engine (no torch, no
transformers) once it holds one, and write the same bytes as the codec of the loaded model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import seqkv.engine.cpu as engine_cpu
from seqkv.cli import main
from seqkv.cli.models import ModelChoice, smollm2_tokenizer

TEXT = Path("/usr/share/common-licenses/Apache-2.0")

pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(not TEXT.is_file(), reason="no /usr/share/common-licenses/Apache-2.0"),
]


@pytest.fixture(scope="module")
def warm_cache(smollm2):
    """The model cache holds SmolLM2's bf16 engine (the slow path stores it) and the
    tokenizer's json."""
    engine_cpu.Engine.for_model(smollm2[0], "bf16")
    smollm2_tokenizer()
    assert engine_cpu.smollm2_engine("bf16") is not None


@pytest.fixture
def excerpt(tmp_path) -> Path:
    """Real text, short enough to decode by single steps in a few seconds."""
    src = tmp_path / "apache.txt"
    src.write_text(TEXT.read_text()[:700])
    return src


def _run(capsys, *argv: str) -> str:
    rc = main(list(argv))
    err = capsys.readouterr().err
    assert rc == 0, err
    return err


def _no_model_load(self):
    raise AssertionError("the fast path loaded the model through transformers")


@pytest.mark.parametrize("codec", ["lm", "lm-robust"])
def test_fast_and_slow_paths_write_the_same_bytes(capsys, monkeypatch, tmp_path, warm_cache, excerpt, codec):
    fast, slow = tmp_path / "fast.skv", tmp_path / "slow.skv"
    with monkeypatch.context() as m:
        m.setattr(ModelChoice, "load", _no_model_load)
        _run(capsys, "compress", str(excerpt), "-o", str(fast), "--codec", codec)
        _run(capsys, "decompress", str(fast), "-o", str(tmp_path / "fast.txt"))
    with monkeypatch.context() as m:  # a cold cache: the model is loaded, and stderr says so
        m.setattr(engine_cpu, "smollm2_engine", lambda dtype="bf16": None)
        err = _run(capsys, "compress", str(excerpt), "-o", str(slow), "--codec", codec)
        assert "no seqkv engine" in err and "fills the cache" in err
        _run(capsys, "-q", "decompress", str(fast), "-o", str(tmp_path / "slow.txt"))
    assert fast.read_bytes() == slow.read_bytes()
    assert (tmp_path / "fast.txt").read_bytes() == excerpt.read_bytes()
    assert (tmp_path / "slow.txt").read_bytes() == excerpt.read_bytes()


def test_cli_with_a_warm_cache_imports_neither_torch_nor_transformers(tmp_path, warm_cache, excerpt):
    script = "\n".join([
        "import sys",
        "from seqkv.cli.main import main",
        f"src, d = {str(excerpt)!r}, {str(tmp_path)!r}",
        "for codec in ('lm', 'lm-robust', 'plt', 'raw'):",
        "    assert main(['-q', 'compress', src, '-o', f'{d}/{codec}.skv', '--codec', codec]) == 0",
        "    assert main(['-q', 'decompress', f'{d}/{codec}.skv', '-o', f'{d}/{codec}.txt']) == 0",
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))",
    ])
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
    for codec in ("lm", "lm-robust", "plt", "raw"):
        assert (tmp_path / f"{codec}.txt").read_bytes() == excerpt.read_bytes()
