import struct

import numpy as np
import pytest

from seqkv.errors import CorruptStreamError, FormatVersionError
from seqkv.gateway.slots import SLOT_MAGIC, SlotFile, kv_sha256, parse_slot_bytes, read_slot_file, write_slot_file


def _file(tokens, kv=b"\x01\x02kv-state", version=3):
    return struct.pack("<III", SLOT_MAGIC, version, len(tokens)) + np.asarray(tokens, "<i4").tobytes() + kv


def test_parse_reads_the_llama_cpp_layout(tmp_path):
    data = _file([5, 7, 49151])
    assert data[:4] == b"qsgg"  # 'ggsq' as a little-endian u32
    slot = parse_slot_bytes(data)
    assert slot.tokens.tolist() == [5, 7, 49151] and slot.tokens.dtype == np.uint32
    assert slot.kv == b"\x01\x02kv-state"
    path = tmp_path / "s.ggsq"
    write_slot_file(path, slot)
    assert path.read_bytes() == data
    assert read_slot_file(path) == slot
    assert kv_sha256(path) == slot.kv_sha256


def test_the_hash_covers_the_kv_only():
    a, b = parse_slot_bytes(_file([1, 2], b"same")), parse_slot_bytes(_file([3], b"same"))
    assert a.kv_sha256 == b.kv_sha256
    assert parse_slot_bytes(_file([1, 2], b"samf")).kv_sha256 != a.kv_sha256


def test_bad_files_are_refused():
    with pytest.raises(CorruptStreamError):
        parse_slot_bytes(b"ggsq")
    with pytest.raises(CorruptStreamError):
        parse_slot_bytes(struct.pack("<III", 0x67677366, 3, 0))  # a session file (ggsn-like)
    with pytest.raises(FormatVersionError):
        parse_slot_bytes(_file([1], version=2))
    with pytest.raises(CorruptStreamError):
        parse_slot_bytes(_file([1, 2, 3])[:16])  # claims 3 tokens, holds fewer
    with pytest.raises(CorruptStreamError):
        parse_slot_bytes(_file([-1]))


def test_slot_file_to_bytes_round_trip():
    slot = SlotFile(np.array([9, 8], np.uint32), b"kv")
    assert parse_slot_bytes(slot.to_bytes()) == slot
