"""Corruption sweep over the containers of every codec (raw, plt, lm, lm-robust) and the KV
residual stream: every single-bit flip (one per byte, every byte) and every truncation must
either raise a :class:`seqkv.SeqkvError` subclass or decode to exactly the original output;
never another exception, a crash or a hang (each test runs under a pytest-timeout bound)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import seqkv
from seqkv import codecs
from seqkv.errors import SeqkvError


def mutations(data: bytes):
    """(label, bytes): one bit flipped in every byte (bit i % 8 of byte i, plus the top bit of
    the first and last 8 bytes), then every truncation (including the empty stream)."""
    n = len(data)
    for i in range(n):
        for bit in {i % 8, 7} if (i < 8 or i >= n - 8) else {i % 8}:
            b = bytearray(data)
            b[i] ^= 1 << bit
            yield f"flip byte {i} bit {bit}", bytes(b)
    for k in range(n):
        yield f"truncate to {k}", data[:k]
    yield "one extra byte", data + b"\0"


def sweep(data: bytes, decode, same) -> dict[str, int]:
    """Runs every mutation through ``decode``; returns counts of errors, identical decodes and
    (only counted, not failed, when ``same`` is None) decodes that were not compared."""
    out = {"error": 0, "identical": 0, "unchecked": 0}
    for label, bad in mutations(data):
        try:
            got = decode(bad)
        except SeqkvError:
            out["error"] += 1
            continue
        except Exception as e:  # pragma: no cover - this is the failure the test looks for
            pytest.fail(f"{label}: {type(e).__name__} is not a SeqkvError: {e}")
        if same is None:
            out["unchecked"] += 1
            continue
        assert same(got), f"{label}: decoded to a different output without an error"
        out["identical"] += 1
    assert out["error"] > 0
    return out


def same_tokens(expected: np.ndarray):
    return lambda got: np.array_equal(np.asarray(got), expected)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["raw", "plt"])
def test_model_free_codecs(name, rng):
    codec = codecs.get(name, vocab_size=1000)
    # Two blocks, so the sweep covers the block table and the cross-block checksum.
    codec_small = codecs.get(name, vocab_size=1000, block_tokens=40)
    toks = np.concatenate([rng.integers(0, 1000, 30), np.tile([5, 6, 7, 8], 10)]).astype(np.uint32)
    for c in (codec, codec_small):
        data = c.encode(toks)
        assert np.array_equal(c.decode(data), toks)
        counts = sweep(data, c.decode, same_tokens(toks))
        assert counts["error"] >= len(data)  # every truncation fails at least


@pytest.mark.timeout(60)
def test_plt_with_context(rng):
    """A primed plt stream: the primer fields of the params are covered too."""
    codec = codecs.get("plt", vocab_size=300)
    ctx = rng.integers(0, 300, 50).astype(np.uint32)
    toks = np.concatenate([ctx[:20], rng.integers(0, 300, 10)]).astype(np.uint32)
    data = codec.encode(toks, context=ctx)
    assert np.array_equal(codec.decode(data, context=ctx), toks)
    sweep(data, lambda b: codec.decode(b, context=ctx), same_tokens(toks))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["lm", "lm-robust"])
def test_lm_codecs(name, tiny_llama, rng):
    codec = codecs.get(name, model=tiny_llama, start_token=0)
    toks = rng.integers(1, 512, 12).astype(np.uint32)
    data = codec.encode(toks)
    assert np.array_equal(codec.decode(data), toks)
    sweep(data, codec.decode, same_tokens(toks))


@pytest.mark.timeout(60)
def test_container_unpack_alone(rng):
    """The container parser by itself (every bit of every byte), below any codec."""
    from seqkv.coding import container

    data = codecs.get("raw", vocab_size=70_000, block_tokens=8).encode(rng.integers(0, 70_000, 20))
    ref = container.unpack(data)
    for i in range(len(data)):
        for bit in range(8):
            b = bytearray(data)
            b[i] ^= 1 << bit
            try:
                c = container.unpack(bytes(b))
            except SeqkvError:
                continue
            assert c == ref, f"flip {i}:{bit} unpacked to a different container"


def _residual_case(rng):
    from seqkv.kv import residual as R

    orig = [rng.standard_normal(64).astype(np.float16) for _ in range(2)]
    recomp = [(o.astype(np.float32) + rng.standard_normal(64).astype(np.float32) * 1e-3).astype(np.float16) for o in orig]
    data = R.encode(list(zip(orig, recomp)))
    back = R.decode(data, recomp)
    assert all(np.array_equal(a.view(np.uint16), b.view(np.uint16)) for a, b in zip(back, orig))

    def same(got):
        return all(np.array_equal(np.asarray(a).view(np.uint16), b.view(np.uint16)) for a, b in zip(got, orig))

    return data, (lambda b: R.decode(b, recomp)), same


@pytest.mark.timeout(60)
def test_residual_stream_never_crashes(rng):
    """Every mutation of a residual stream raises a SeqkvError or decodes (no other exception)."""
    data, decode, _ = _residual_case(rng)
    sweep(data, decode, None)


@pytest.mark.timeout(60)
def test_residual_stream_detects_every_flip(rng):
    data, decode, same = _residual_case(rng)
    sweep(data, decode, same)


FUZZ = Path(__file__).resolve().parents[2] / "fuzz"


@pytest.mark.timeout(60)
def test_container_fuzz_inputs():
    """The container fuzz corpus and every kept crash (fuzz/corpus/container, fuzz/regressions/
    container) through the Python API: a SeqkvError, or a container that packs back to bytes
    that unpack to the same container."""
    from seqkv.coding import container

    paths = sorted(p for d in ("corpus", "regressions") for p in (FUZZ / d / "container").glob("*") if p.is_file())
    assert paths, "no container fuzz inputs kept"
    for p in paths:
        try:
            c = container.unpack(p.read_bytes())
        except SeqkvError:
            continue
        assert container.unpack(container.pack(c.header, c.blocks)) == c, p.name


def test_seqkv_error_is_the_base():
    assert issubclass(seqkv.CorruptStreamError, SeqkvError)
