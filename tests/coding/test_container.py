"""The SQKV container: round trip, validation, and a corruption sweep."""

from __future__ import annotations


import numpy as np
import pytest

import seqkv
from seqkv.coding import container
from seqkv.coding.container import Block, Header


def sample() -> tuple[Header, list[Block]]:
    tokens = [np.array([5, 9, 5, 1]), np.array([2, 3])]
    header = Header(
        codec="lm",
        precision=24,
        token_count=6,
        vocab_size=49152,
        model_fingerprint=b"\x01\x02fingerprint",
        numerics_profile='{"device": "cpu", "dtype": "float32"}',
        schedule=(4, 1, 1),
        params=b"p",
    )
    blocks = [Block(len(t), bytes([i + 1]) * (3 - i), container.tokens_checksum(t)) for i, t in enumerate(tokens)]
    return header, blocks


def test_round_trip():
    header, blocks = sample()
    data = container.pack(header, blocks)
    assert data[:4] == b"SQKV"
    c = container.unpack(data)
    assert c.header == header
    assert c.blocks == blocks
    assert c.tokens_crc32c == container.tokens_checksum([5, 9, 5, 1, 2, 3])
    assert c.tokens_crc32c == container.combine_checksums(blocks)
    assert isinstance(c.header.schedule, tuple)


def test_defaults_and_empty_container():
    h = Header(codec="raw", precision=16, token_count=0, vocab_size=1)
    c = container.unpack(container.pack(h, []))
    assert c.header == h and c.blocks == [] and c.tokens_crc32c == 0


def test_every_codec_name():
    for name in container.CODECS:
        h = Header(codec=name, precision=8, token_count=1, vocab_size=3)
        assert container.unpack(container.pack(h, [Block(1, b"x", 7)])).header.codec == name


def test_long_schedule_is_run_length_encoded():
    sched = (512,) * 3 + (1,) * 10000
    h = Header(codec="lm", precision=24, token_count=0, vocab_size=10, schedule=sched)
    data = container.pack(h, [])
    assert len(data) < 100
    assert container.unpack(data).header.schedule == sched


def test_corruption_sweep():
    header, blocks = sample()
    data = container.pack(header, blocks)
    original = container.unpack(data)
    for n in range(len(data)):
        with pytest.raises(seqkv.SeqkvError):
            container.unpack(data[:n])
    for i in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            try:
                got = container.unpack(bytes(bad))
            except (seqkv.CorruptStreamError, seqkv.FormatVersionError):
                continue
            assert got == original, f"flip of bit {bit} of byte {i} accepted with a different result"
    with pytest.raises(seqkv.CorruptStreamError):
        container.unpack(data + b"\x00")


def test_version_and_magic_errors():
    header, blocks = sample()
    data = bytearray(container.pack(header, blocks))
    with pytest.raises(seqkv.CorruptStreamError):
        container.unpack(b"XQKV" + bytes(data[4:]))
    data[4] = 2
    with pytest.raises(seqkv.FormatVersionError):
        container.unpack(bytes(data))
    with pytest.raises(seqkv.CorruptStreamError):
        container.unpack(b"SQKV" + b"\x00" * 8)


def test_quantizer_version_is_checked():
    header, blocks = sample()
    with pytest.raises(seqkv.FormatVersionError):
        container.pack(header.replace(quantizer_version=2), blocks)


@pytest.mark.parametrize(
    "change",
    [
        {"codec": "zip"},
        {"precision": 0},
        {"precision": 25},
        {"vocab_size": 0},
        {"token_count": 7},
        {"token_count": -1},
        {"schedule": (4, 0)},
        {"numerics_profile": b"{}"},
        {"model_fingerprint": "abc"},
    ],
)
def test_pack_validates_fields(change):
    header, blocks = sample()
    with pytest.raises(seqkv.InvalidInputError):
        container.pack(header.replace(**change), blocks)


def test_pack_validates_blocks():
    header, _ = sample()
    with pytest.raises(seqkv.InvalidInputError):
        container.pack(header, [Block(6, b"", 2**32)])
    with pytest.raises(seqkv.InvalidInputError):
        container.pack(header, [Block(-6, b"", 0)])
    with pytest.raises(seqkv.InvalidInputError):
        container.pack(header, [(6, b"", 0)])  # type: ignore[list-item]


def test_header_is_frozen():
    header, _ = sample()
    with pytest.raises(AttributeError):  # the Rust Header has no setters
        header.precision = 3  # type: ignore[misc]
