"""``seqkv gateway``: stateful OpenAI-compatible sessions over llama.cpp's ``llama-server``.

Conversations are kept as tokens (``plt``-coded, in a seqkv backend) plus the schedule that
evaluated them, so a slot's KV can be rebuilt bit for bit after the server restarts and the
rebuild certified by a SHA-256 of the KV. See ``docs/gateway.md``.

Needs the ``gateway`` extra (``pip install seqkv[gateway]``: starlette, uvicorn, httpx).
"""

from __future__ import annotations

from .schedule import EngineConfig, Schedule, Segment
from .slots import SlotFile, kv_sha256, read_slot_file, write_slot_file

__all__ = ["EngineConfig", "Schedule", "Segment", "SlotFile", "kv_sha256", "read_slot_file", "write_slot_file"]
