import struct

import numpy as np
import pytest

from seqkv.errors import CorruptStreamError, FormatVersionError, InvalidInputError
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


def _state_file(tokens, kv=b"kv", n_media=0, version=1, extra=()):
    words = [-1, version, len(tokens), *tokens, n_media, *extra]
    return struct.pack("<III", SLOT_MAGIC, 3, len(words)) + np.asarray(words, "<i4").tobytes() + kv


def test_llama_server_token_state_is_read_and_written_back_unchanged():
    # the vendored llama-server (llama-cpp-python 0.3.36) writes server_tokens::serialize():
    # [-1, 1, n, tokens..., n_media]; read as a plain list it would be a negative token id
    data = _state_file([60, 9690, 198])
    slot = parse_slot_bytes(data)
    assert slot.server_state and slot.tokens.tolist() == [60, 9690, 198] and slot.kv == b"kv"
    assert slot.to_bytes() == data
    assert slot != SlotFile(slot.tokens, slot.kv)  # the same tokens in the other layout are another file
    assert parse_slot_bytes(_state_file([])).tokens.size == 0


def test_bad_token_states_are_refused():
    with pytest.raises(InvalidInputError):
        parse_slot_bytes(_state_file([1, 2], n_media=1))  # media chunks
    with pytest.raises(FormatVersionError):
        parse_slot_bytes(_state_file([1, 2], version=2))
    with pytest.raises(CorruptStreamError):
        parse_slot_bytes(_state_file([1, 2], extra=(5,)))  # words after the state
    with pytest.raises(CorruptStreamError):
        parse_slot_bytes(struct.pack("<III", SLOT_MAGIC, 3, 4) + np.asarray([-1, 1, 9, 0], "<i4").tobytes())
