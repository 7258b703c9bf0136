import json

import numpy as np
import pytest

from seqkv import codecs
from seqkv.cli.main import main
from seqkv.coding import container
from seqkv.errors import InvalidInputError
from seqkv.gateway.cli import chunk_sizes, import_slot, schedule_of_chunks
from seqkv.gateway.schedule import Schedule
from seqkv.gateway.slots import SlotFile, write_slot_file


def test_import_codes_the_tokens_and_keeps_the_kv_hash_and_schedule(tmp_path):
    tokens = np.random.default_rng(1).integers(0, 49152, 500).astype(np.uint32)
    slot = SlotFile(tokens, bytes(range(256)) * 400)
    write_slot_file(tmp_path / "a.ggsq", slot)
    sched = Schedule().after_request(0, 490, 11)
    data = import_slot(str(tmp_path / "a.ggsq"), 49152, sched)
    assert len(data) < len(slot.to_bytes()) / 50
    assert codecs.get("plt", vocab_size=49152).decode(data).tolist() == tokens.tolist()
    header = container.unpack(data).header
    assert json.loads(header.numerics_profile)["llama.cpp-slot"]["kv_sha256"] == slot.kv_sha256
    assert schedule_of_chunks(tuple(header.schedule)) == sched
    assert chunk_sizes(sched) == (490,) + (1,) * 10
    with pytest.raises(InvalidInputError):
        import_slot(str(tmp_path / "a.ggsq"), 49152, Schedule().after_request(0, 10, 1))


def test_slots_import_command(tmp_path, capsys):
    write_slot_file(tmp_path / "a.ggsq", SlotFile(np.arange(40, dtype=np.uint32), b"kv" * 1000))
    assert main(["slots", "import", str(tmp_path / "a.ggsq"), "-o", str(tmp_path / "a.skv")]) == 0
    assert (tmp_path / "a.skv").stat().st_size < 200
    assert main(["slots", "import", str(tmp_path / "missing.ggsq"), "-o", str(tmp_path / "b.skv")]) == 1
