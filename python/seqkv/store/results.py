"""What :meth:`SessionStore.put` and :meth:`SessionStore.stats` return. Both are dataclasses that
can also be read like the dicts they replace (``result["tier"]``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["PutResult", "StoreStats"]


class _ReadAsMapping:
    def __getitem__(self, key: str) -> Any:
        if key not in {f.name for f in fields(self)}:  # type: ignore[arg-type]
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)]  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class PutResult(_ReadAsMapping):
    """One stored session: its token count, the tokens taken by reference (``prefix_tokens``)
    and coded (``coded_tokens``), the coded sizes, and the tier it was placed in."""

    session_id: str
    number: int
    tokens: int
    prefix_tokens: int
    coded_tokens: int
    payload_bits: int
    container_bytes: int
    record_bytes: int
    residual_bytes: int
    cross_entropy_bits: float | None
    tier: str
    seconds: float


@dataclass(frozen=True)
class StoreStats(_ReadAsMapping):
    """Sizes and ratios over a store's sessions and its tiers (see :meth:`SessionStore.stats`).

    ``payload_bytes`` are the coded token payloads of every record; ``overhead_bytes`` the rest
    of the records (container headers, metadata, residuals)."""

    sessions: int
    hidden_sessions: int
    tokens: int
    coded_tokens: int
    referenced_tokens: int
    dedup_ratio: float
    payload_bits: int
    payload_bytes: int
    overhead_bytes: int
    container_bytes: int
    record_bytes: int
    residual_bytes: int
    bits_per_token: float
    payload_bits_per_token: float
    payload_bits_per_coded_token: float
    ratio_vs_bf16: float
    kept_kv_sessions: int
    codec: str
    kv_source: str
    trie: dict[str, Any]
    quarantined: list[str]
    hot_index: dict[str, Any] | None
    tiers: dict[str, Any]
    capacity_bytes: int | None
    limits: dict[str, int]
    used_bytes: int
    policy: str
