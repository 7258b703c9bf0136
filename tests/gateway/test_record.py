import pytest

from seqkv.errors import CorruptStreamError
from seqkv.gateway.record import INHERIT, Message, NodeRecord, TokenBlock, decode_record, encode_record
from seqkv.gateway.schedule import PREFILL, STEPS, Segment


def _record(**changes):
    base = dict(
        parent="resp_" + "ab" * 16, n_tokens=70_000, kv_sha256="cd" * 32, lineage="faithful", slot=None,
        created=1_765_000_000, keep=69_000,
        segments=(Segment(PREFILL, 69_000, 69_980), Segment(STEPS, 69_980, 69_999)), clipped=True, engine=INHERIT,
        messages=(Message("user", span=(69_010, 69_900)), Message("critic", text="é ✓ — not on token edges"),
                  Message("assistant", span=(69_980, 70_000))),
        params=b"\x01\x02", blocks=(TokenBlock(1000, 0xDEADBEEF, b"\x00" * 300), TokenBlock(0, 0, b"")),
    )
    return NodeRecord(**{**base, **changes})


@pytest.mark.parametrize("changes", [
    {}, {"parent": None, "kv_sha256": None, "engine": None, "slot": 3, "lineage": "exact"},
    {"parent": "my-own-id", "engine": b"\x09" * 8, "messages": (), "segments": (), "keep": 70_000},
])
def test_a_record_round_trips(changes):
    r = _record(**changes)
    assert decode_record(encode_record(r), "n") == r


def test_a_truncated_or_padded_record_is_corrupt():
    data = encode_record(_record())
    for bad in (data[:-1], data + b"\x00", b"\x02" + data[1:]):
        with pytest.raises(CorruptStreamError):
            decode_record(bad, "n")
