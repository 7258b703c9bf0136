"""The evaluation schedule of a llama.cpp slot: which batches computed its KV, in which order.

llama-server computes a slot's KV request by request: the prompt tokens the slot did not already
hold as one prefill (the server splits it into ``n_batch``/``n_ubatch`` chunks itself; when the
whole prompt is cached it still re-evaluates the last prompt token alone), then one-token steps
for each generated token but the last (the last sampled token is returned, never evaluated).
The KV's bits depend on that order, so a session is stored as its tokens **and** this schedule,
plus the engine settings the numerics depend on (:class:`EngineConfig`).

:meth:`Schedule.replay_prompts` turns a schedule back into the sequence of ``/completion``
prompt lengths that makes a fresh slot evaluate the same batches in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInputError

__all__ = ["EngineConfig", "Segment", "Schedule", "PREFILL", "STEPS"]

#: One prefill request over [start, end) (the server chunks it by ``n_batch``).
PREFILL = "prefill"
#: One-token steps over [start, end): one batch per token.
STEPS = "steps"
_KINDS = (PREFILL, STEPS)


@dataclass(frozen=True)
class EngineConfig:
    """The upstream settings a slot's KV bits depend on; a replay on an engine whose config
    differs is not expected to be exact (see :meth:`mismatches`)."""

    build: str
    model: str
    n_batch: int
    n_ubatch: int
    threads: int
    threads_batch: int
    cache_type_k: str
    cache_type_v: str
    flash_attn: str
    n_ctx_slot: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineConfig:
        try:
            return cls(**{name: data[name] for name in cls.__dataclass_fields__})
        except (KeyError, TypeError) as exc:
            raise InvalidInputError(f"engine config {dict(data)!r} is incomplete: {exc}") from exc

    def mismatches(self, other: EngineConfig) -> list[str]:
        """Names of the settings that differ (the slot's context size does not change the bits)."""
        return [k for k in self.__dataclass_fields__ if k != "n_ctx_slot" and getattr(self, k) != getattr(other, k)]


@dataclass(frozen=True)
class Segment:
    kind: str
    start: int
    end: int

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InvalidInputError(f"segment kind {self.kind!r} is not one of {_KINDS}")
        if not 0 <= self.start < self.end:
            raise InvalidInputError(f"segment [{self.start}, {self.end}) is empty or negative")


@dataclass(frozen=True)
class Schedule:
    """The segments that produced a slot's KV, oldest first. ``cached`` is the number of tokens
    the slot holds afterwards; ``clipped`` is set once a prefill was cut short by a later request
    (its KV came from a batch whose tail is gone, which a replay cannot re-create)."""

    segments: tuple[Segment, ...] = ()
    clipped: bool = False

    @property
    def cached(self) -> int:
        return self.segments[-1].end if self.segments else 0

    def after_request(self, n_past: int, n_prompt: int, n_generated: int) -> Schedule:
        """The schedule after one ``/completion`` that reused ``n_past`` cached tokens (the
        server's ``timings.cache_n``), ended its prompt at ``n_prompt`` and sampled
        ``n_generated`` tokens."""
        if not 0 <= n_past < n_prompt or n_generated < 0:
            raise InvalidInputError(f"request n_past={n_past}, n_prompt={n_prompt}, n_generated={n_generated}")
        if n_past > self.cached:
            raise InvalidInputError(f"the server reused {n_past} tokens but the slot held {self.cached}")
        kept, clipped = _clip(self.segments, n_past)
        segs = [*kept, Segment(PREFILL, n_past, n_prompt)]
        if n_generated > 1:
            segs.append(Segment(STEPS, n_prompt, n_prompt + n_generated - 1))
        return Schedule(tuple(segs), self.clipped or clipped)

    def truncated(self, n_tokens: int) -> Schedule:
        """The schedule of the first ``n_tokens`` cached tokens."""
        kept, clipped = _clip(self.segments, n_tokens)
        return Schedule(tuple(kept), self.clipped or clipped)

    def replay_prompts(self) -> Iterator[int]:
        """Prompt lengths to send, in order, to a slot holding nothing (each request generating
        at most one token, which is never evaluated), so that it evaluates these segments."""
        held = 0
        for seg in self.segments:
            if seg.start != held:
                raise InvalidInputError(f"segment [{seg.start}, {seg.end}) does not follow {held} cached tokens")
            if seg.kind == PREFILL:
                yield seg.end
            else:
                yield from range(seg.start + 1, seg.end + 1)
            held = seg.end

    @property
    def n_requests(self) -> int:
        return sum(1 if s.kind == PREFILL else s.end - s.start for s in self.segments)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"segments": [[s.kind, s.start, s.end] for s in self.segments]}
        if self.clipped:
            out["clipped"] = True
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Schedule:
        try:
            segs = tuple(Segment(str(k), int(a), int(b)) for k, a, b in data.get("segments", ()))
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"schedule segments are malformed: {exc}") from exc
        return cls(segs, bool(data.get("clipped", False)))


def _clip(segments: Sequence[Segment], n: int) -> tuple[list[Segment], bool]:
    """Segments covering the first ``n`` positions. One-token steps cut anywhere stay exact; a
    prefill cut short does not (its batch included tokens that are gone)."""
    kept: list[Segment] = []
    clipped = False
    for seg in segments:
        if seg.end <= n:
            kept.append(seg)
        elif seg.start < n:
            kept.append(Segment(seg.kind, seg.start, n))
            clipped = clipped or seg.kind == PREFILL
    return kept, clipped
