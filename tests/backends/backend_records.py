"""Sample session records for the backend tests; imported by the test modules and by the
child processes they start (so it imports nothing from the tests' shared helpers)."""

from __future__ import annotations

import hashlib

from seqkv.backends import SessionRecord


def make_record(i: int, size: int = 300) -> SessionRecord:
    body = hashlib.sha256(str(i).encode()).digest()
    container = (body * (size // 32 + 1))[:size]
    meta = {
        "tokens": i,
        "prefix": {"parent": f"s{i - 1}" if i else None, "length": i // 2},
        "schedule": {"prefill_chunks": [i, 3], "single_steps": 2},
        "layer_hashes": [body.hex()[:16]] * 3,
        "tier": "cold",
        "sizes": {"container": size},
        "text": "naïve ✓",
    }
    return SessionRecord(container, meta, {"residual": body} if i % 2 else {})
