"""A thread-safe tier manager: which session lives in which storage tier, and when to move it.

:class:`Tiers` does the bookkeeping only; the caller (:class:`~seqkv.SessionStore`) holds the
actual objects (KV pages in the hot tier, quantized KV in the warm tier, the container in the
backend for the cold tier) and carries out the moves this manager returns.

Tiers are ordered hottest first, ``("hot", "warm", "cold")`` by default. Every tier but the
last counts against ``capacity_bytes`` (the in-memory budget); the last tier is the floor: it
is the backend, unbounded, and an entry there is never dropped. So a session is never lost by
demotion: the worst that happens is that it goes cold and is rebuilt from its tokens.

The protocol
------------
Each call that can change placement (:meth:`Tiers.add`, :meth:`Tiers.access`,
:meth:`Tiers.resize`, :meth:`Tiers.configure`) returns a list of :class:`Move`
``(session_id, from_tier, to_tier)``: demotions first (in the order they were decided), then
at most one promotion (the accessed entry). The manager's own state **already reflects** the
moves when they are returned; the caller carries them out in order:

* a demotion ``hot → warm``: build the warm form (quantize), then drop the hot pages;
  ``→ cold``: drop the in-memory form (the container is already in the backend);
* a promotion ``cold/warm → hot``: rebuild the KV (restore) and keep it hot.

If a move cannot be carried out (the quantizer is missing, a restore failed), put the entry
where it really is with :meth:`Tiers.place`. When the real size of an entry in its new tier is
known, report it with :meth:`Tiers.resize`, which may return further demotions. Carrying out
every returned move always brings memory use within ``capacity_bytes`` (and within each
per-tier limit), except when pinned entries alone exceed it (:meth:`Tiers.pin` holds an entry in
place while a request uses its KV).

Sizes: ``sizes`` maps tier → bytes the entry takes in that tier. A missing size is estimated
from a known one with ``ratios`` (bytes in that tier per byte in the first tier; default warm =
0.2, about 3 bits per component plus per-vector scales against 16-bit KV). The floor's size is
kept for :meth:`Tiers.stats` only and never counts against capacity.

Policies
--------
``"lru"``: the victim of a demotion is the least recently used unpinned entry in memory (every
entry added, accessed or resized counts as used); it moves one tier down, and the loop repeats
until memory fits.

``"plt"``: GreedyDual-Size-Frequency weighted by the trie's reuse estimate. Each entry has a
priority ``H = L + (1 + score) * hits / MiB`` where ``score`` is the caller's reuse estimate
(e.g. the trie count of the session's prefix node times the tokens it would save, d_T), ``hits``
the accesses so far and ``MiB`` its size in its current tier (at least 1). The victim is the
entry of lowest ``H``; the clock ``L`` then rises to the victim's ``H``, so entries not used
for a long time age out even with a high score.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..errors import InvalidInputError, SessionNotFoundError

__all__ = ["Tiers", "Move", "EntryInfo", "DEFAULT_TIERS", "DEFAULT_RATIOS", "POLICIES"]

DEFAULT_TIERS = ("hot", "warm", "cold")
#: Bytes in a tier per byte in the first tier, used when a size is not given.
DEFAULT_RATIOS: Mapping[str, float] = {"hot": 1.0, "warm": 0.2}
POLICIES = ("lru", "plt")
_MIB = float(1 << 20)


class Move(NamedTuple):
    """Carry ``session_id`` from ``from_tier`` to ``to_tier`` (see the module docstring)."""

    session_id: str
    from_tier: str
    to_tier: str


@dataclass(frozen=True)
class EntryInfo:
    """A snapshot of one entry, as :meth:`Tiers.entries` returns it."""

    session_id: str
    tier: str
    nbytes: int
    sizes: dict[str, int]
    hits: int
    last_access: int
    score: float
    pins: int
    priority: float


@dataclass
class _Entry:
    session_id: str
    tier: str
    sizes: dict[str, int]
    score: float = 0.0
    hits: int = 1
    last_access: int = 0
    pins: int = 0
    priority: float = 0.0
    initial_tier: str | None = field(default=None, repr=False)


class Tiers:
    """Placement of sessions across storage tiers under a byte budget; see the module docstring.

    ``capacity_bytes``: bytes that all tiers but the last may hold together.
    ``policy``: ``"lru"`` or ``"plt"``. ``tiers``: names, hottest first (at least two; the last
    is the unbounded floor). ``limits``: optional per-tier caps for tiers above the floor (e.g.
    ``{"hot": 2 << 30}``). ``ratios``: size estimates per tier relative to the first tier.
    """

    def __init__(
        self,
        capacity_bytes: int,
        policy: str = "lru",
        *,
        tiers: Sequence[str] = DEFAULT_TIERS,
        limits: Mapping[str, int] | None = None,
        ratios: Mapping[str, float] | None = None,
    ) -> None:
        tiers = tuple(tiers)
        if len(tiers) < 2 or len(set(tiers)) != len(tiers) or not all(isinstance(t, str) and t for t in tiers):
            raise InvalidInputError(f"tiers must be two or more distinct names, hottest first; got {tiers!r}")
        self.tiers = tiers
        self.floor = tiers[-1]
        self._rank = {t: i for i, t in enumerate(tiers)}
        merged = {t: r for t, r in DEFAULT_RATIOS.items() if t in self._rank}
        merged[tiers[0]] = 1.0
        for t, r in (ratios or {}).items():
            self._check_tier(t)
            if not (isinstance(r, (int, float)) and r > 0):
                raise InvalidInputError(f"ratio for tier {t!r} must be > 0, not {r!r}")
            merged[t] = float(r)
        self.ratios = merged
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._order: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self._clock = 0
        self._age = 0.0  # the GDSF clock L
        self._promotions = dict.fromkeys(tiers, 0)
        self._demotions = dict.fromkeys(tiers, 0)
        self.capacity_bytes = 0
        self.policy = "lru"
        self.limits: dict[str, int] = {}
        self._configure(capacity_bytes, policy, limits)

    # -- configuration -----------------------------------------------------------------

    def _check_tier(self, tier: str) -> str:
        if tier not in self._rank:
            raise InvalidInputError(f"unknown tier {tier!r}; tiers are {self.tiers}")
        return tier

    def _configure(self, capacity_bytes: int, policy: str, limits: Mapping[str, int] | None) -> None:
        if not isinstance(capacity_bytes, int) or isinstance(capacity_bytes, bool) or capacity_bytes < 0:
            raise InvalidInputError(f"capacity_bytes must be an int >= 0, not {capacity_bytes!r}")
        if policy not in POLICIES:
            raise InvalidInputError(f"policy must be one of {POLICIES}, not {policy!r}")
        checked: dict[str, int] = {}
        for t, cap in (limits or {}).items():
            self._check_tier(t)
            if t == self.floor:
                raise InvalidInputError(f"the floor tier {t!r} is unbounded; it takes no limit")
            if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
                raise InvalidInputError(f"limit for tier {t!r} must be an int >= 0, not {cap!r}")
            checked[t] = cap
        self.capacity_bytes = capacity_bytes
        self.policy = policy
        self.limits = checked

    def configure(
        self, capacity_bytes: int | None = None, policy: str | None = None, limits: Mapping[str, int] | None = None
    ) -> list[Move]:
        """Change the budget, policy or limits; returns the demotions the new budget needs."""
        with self._lock:
            self._configure(
                self.capacity_bytes if capacity_bytes is None else capacity_bytes,
                self.policy if policy is None else policy,
                self.limits if limits is None else limits,
            )
            for e in self._entries.values():
                self._reprioritize(e)
            return self._rebalance(None, [])

    # -- sizes and priorities ----------------------------------------------------------

    def _size(self, e: _Entry, tier: str) -> int | None:
        """Bytes ``e`` takes in ``tier``: given, or estimated through the first tier's size."""
        if tier in e.sizes:
            return e.sizes[tier]
        ratio = self.ratios.get(tier)
        if ratio is None:
            return None
        for known, nbytes in e.sizes.items():
            known_ratio = self.ratios.get(known)
            if known_ratio:
                return int(round(nbytes / known_ratio * ratio))
        return None

    def _mem(self, e: _Entry, tier: str | None = None) -> int:
        tier = e.tier if tier is None else tier
        if tier == self.floor:
            return 0
        return self._size(e, tier) or 0

    def _reprioritize(self, e: _Entry) -> None:
        e.priority = self._age + (1.0 + e.score) * e.hits / max(1.0, self._mem(e) / _MIB)

    def _touch(self, e: _Entry) -> None:
        self._clock += 1
        e.last_access = self._clock
        self._order[e.session_id] = None
        self._order.move_to_end(e.session_id)
        self._reprioritize(e)

    def _usage(self) -> tuple[int, dict[str, int]]:
        per = dict.fromkeys(self.tiers, 0)
        for e in self._entries.values():
            per[e.tier] += self._mem(e)
        return sum(v for t, v in per.items() if t != self.floor), per

    def _fits(self, nbytes: int, tier: str) -> bool:
        return tier == self.floor or (nbytes <= self.capacity_bytes and nbytes <= self.limits.get(tier, nbytes))

    # -- placement ---------------------------------------------------------------------

    def _pick_victim(self, in_tiers: set[str], protect: str | None) -> _Entry | None:
        fallback = None
        best = None
        if self.policy == "lru":
            for sid in self._order:
                e = self._entries[sid]
                if e.tier not in in_tiers or e.pins:
                    continue
                if sid == protect:
                    fallback = e
                    continue
                return e
            return fallback
        for e in self._entries.values():
            if e.tier not in in_tiers or e.pins:
                continue
            if e.session_id == protect:
                fallback = e
                continue
            if best is None or (e.priority, e.last_access, e.session_id) < (
                best.priority,
                best.last_access,
                best.session_id,
            ):
                best = e
        return best or fallback

    def _move(self, e: _Entry, to_tier: str, touched: list[str]) -> None:
        if e.initial_tier is None:
            e.initial_tier = e.tier
            touched.append(e.session_id)
        if self._rank[to_tier] > self._rank[e.tier]:
            self._demotions[e.tier] += 1
        else:
            self._promotions[to_tier] += 1
        e.tier = to_tier
        if self.policy == "plt":
            self._reprioritize(e)

    def _sink(self, e: _Entry, touched: list[str], start: str) -> None:
        """Move ``e`` to the hottest tier from ``start`` down that it fits in on its own."""
        target = start
        while not self._fits(self._mem(e, target), target):
            target = self.tiers[self._rank[target] + 1]
        if target != e.tier:
            self._move(e, target, touched)

    def _demote(self, e: _Entry, touched: list[str]) -> None:
        if self.policy == "plt":
            self._age = max(self._age, e.priority)
        self._sink(e, touched, self.tiers[self._rank[e.tier] + 1])

    def _rebalance(self, protect: str | None, touched: list[str]) -> list[Move]:
        memory_tiers = set(self.tiers[:-1])
        while True:
            total, per = self._usage()
            victim = None
            for tier in self.tiers[:-1]:
                if tier in self.limits and per[tier] > self.limits[tier]:
                    victim = self._pick_victim({tier}, protect)
                    if victim is not None:
                        break
            if victim is None and total > self.capacity_bytes:
                victim = self._pick_victim(memory_tiers, protect)
            if victim is None:
                break
            self._demote(victim, touched)
        return self._collect(touched)

    def _collect(self, touched: list[str]) -> list[Move]:
        demotions: list[Move] = []
        promotions: list[Move] = []
        for sid in touched:
            e = self._entries.get(sid)
            if e is None or e.initial_tier is None:
                continue
            start, e.initial_tier = e.initial_tier, None
            if start == e.tier:
                continue
            move = Move(sid, start, e.tier)
            (promotions if self._rank[e.tier] < self._rank[start] else demotions).append(move)
        return demotions + promotions

    def _get(self, session_id: str) -> _Entry:
        e = self._entries.get(session_id)
        if e is None:
            raise SessionNotFoundError(f"session {session_id!r} is not tracked by the tier manager")
        return e

    def _check_sizes(self, sizes: Mapping[str, int]) -> dict[str, int]:
        out = {}
        for t, n in sizes.items():
            self._check_tier(t)
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise InvalidInputError(f"size of tier {t!r} must be an int >= 0, not {n!r}")
            out[t] = n
        return out

    # -- the public protocol -----------------------------------------------------------

    def add(
        self,
        session_id: str,
        tier: str | None = None,
        *,
        sizes: Mapping[str, int] | None = None,
        nbytes: int | None = None,
        score: float | None = None,
    ) -> list[Move]:
        """Track ``session_id`` as held in ``tier`` (default: the first tier), taking ``nbytes``
        there (or ``sizes`` per tier), counting as an access. Re-adding an entry updates it.
        Returns the moves to carry out; they may demote the new entry itself when it does not
        fit, e.g. ``[Move(id, "hot", "warm")]``."""
        if not isinstance(session_id, str) or not session_id:
            raise InvalidInputError(f"session id must be a non-empty str, not {session_id!r}")
        tier = self._check_tier(tier or self.tiers[0])
        given = self._check_sizes(sizes or {})
        if nbytes is not None:
            given.update(self._check_sizes({tier: nbytes}))
        with self._lock:
            e = self._entries.get(session_id)
            probe = _Entry(session_id, tier, {**(e.sizes if e else {}), **given})
            if tier != self.floor and self._size(probe, tier) is None:
                raise InvalidInputError(f"size of session {session_id!r} in tier {tier!r} is unknown: pass nbytes")
            if e is None:
                e = self._entries[session_id] = probe
            else:
                e.sizes, e.tier = probe.sizes, tier
                e.hits += 1
            if score is not None:
                e.score = float(score)
            e.initial_tier = tier
            self._touch(e)
            touched = [session_id]
            if not e.pins:
                self._sink(e, touched, e.tier)  # too big for its tier on its own: do not flush others
            return self._rebalance(session_id, touched)

    def access(self, session_id: str, *, promote: bool = True) -> list[Move]:
        """Record a use of ``session_id``. With ``promote`` (default) an entry below the first tier
        is promoted to the hottest tier it fits in, demoting others to make room; the promotion
        is the last move returned. :class:`~seqkv.errors.SessionNotFoundError` if not tracked."""
        with self._lock:
            e = self._get(session_id)
            e.hits += 1
            self._touch(e)
            touched: list[str] = []
            if promote and not e.pins and e.tier != self.tiers[0]:
                for tier in self.tiers[: self._rank[e.tier]]:
                    nbytes = self._size(e, tier)
                    if nbytes is not None and self._fits(nbytes, tier):
                        self._move(e, tier, touched)
                        break
            return self._rebalance(session_id, touched)

    def resize(self, session_id: str, nbytes: int, tier: str | None = None) -> list[Move]:
        """Report the real size of ``session_id`` in ``tier`` (default: its current tier);
        returns any demotions the new size makes necessary."""
        with self._lock:
            e = self._get(session_id)
            tier = self._check_tier(tier or e.tier)
            e.sizes.update(self._check_sizes({tier: nbytes}))
            self._reprioritize(e)
            touched: list[str] = []
            if not e.pins:
                self._sink(e, touched, e.tier)
            return self._rebalance(session_id, touched)

    def place(self, session_id: str, tier: str) -> list[Move]:
        """Record that ``session_id`` really is in ``tier`` (e.g. a returned move failed)."""
        with self._lock:
            e = self._get(session_id)
            e.tier = self._check_tier(tier)
            self._reprioritize(e)
            return self._rebalance(session_id, [])

    def set_score(self, session_id: str, score: float) -> None:
        """Update the reuse estimate the ``plt`` policy weighs (no effect under ``lru``)."""
        with self._lock:
            e = self._get(session_id)
            e.score = float(score)
            self._reprioritize(e)

    def remove(self, session_id: str) -> bool:
        """Stop tracking ``session_id`` (the session was deleted); ``True`` if it was tracked."""
        with self._lock:
            self._order.pop(session_id, None)
            return self._entries.pop(session_id, None) is not None

    def pin(self, session_id: str) -> None:
        """Hold the entry in its tier (no demotion, no promotion) until :meth:`unpin`; counted."""
        with self._lock:
            self._get(session_id).pins += 1

    def unpin(self, session_id: str) -> list[Move]:
        """Release one :meth:`pin`; returns demotions that were held back by it."""
        with self._lock:
            e = self._get(session_id)
            if e.pins <= 0:
                raise InvalidInputError(f"session {session_id!r} is not pinned")
            e.pins -= 1
            return self._rebalance(None, [])

    @contextmanager
    def pinned(self, session_id: str) -> Iterator[list[Move]]:
        """``with tiers.pinned(id) as after: ...`` keeps the entry in place inside the block;
        when the block ends, ``after`` holds the demotions that were held back, to carry out."""
        self.pin(session_id)
        after: list[Move] = []
        try:
            yield after
        finally:
            after.extend(self.unpin(session_id))

    # -- queries -----------------------------------------------------------------------

    def tier_of(self, session_id: str) -> str:
        with self._lock:
            return self._get(session_id).tier

    def __contains__(self, session_id: object) -> bool:
        with self._lock:
            return session_id in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def entries(self) -> list[EntryInfo]:
        """Snapshots of every entry, least recently used first."""
        with self._lock:
            return [
                EntryInfo(
                    e.session_id,
                    e.tier,
                    self._mem(e),
                    dict(e.sizes),
                    e.hits,
                    e.last_access,
                    e.score,
                    e.pins,
                    e.priority,
                )
                for e in (self._entries[sid] for sid in self._order)
            ]

    def used_bytes(self) -> int:
        """Bytes held in the tiers above the floor (what counts against ``capacity_bytes``)."""
        with self._lock:
            return self._usage()[0]

    def stats(self) -> dict[str, Any]:
        """Per tier: entries, bytes (the floor's from the sizes given for it), limit, promotions
        into and demotions out of it; plus the budget and its use."""
        with self._lock:
            total, per = self._usage()
            tiers: dict[str, Any] = {}
            for t in self.tiers:
                members = [e for e in self._entries.values() if e.tier == t]
                tiers[t] = {
                    "entries": len(members),
                    "bytes": per[t] if t != self.floor else sum(e.sizes.get(t, 0) for e in members),
                    "limit": None if t == self.floor else self.limits.get(t, self.capacity_bytes),
                    "promotions_in": self._promotions[t],
                    "demotions_out": self._demotions[t],
                }
            pinned = [e for e in self._entries.values() if e.pins]
            return {
                "policy": self.policy,
                "capacity_bytes": self.capacity_bytes,
                "used_bytes": total,
                "entries": len(self._entries),
                "pinned": len(pinned),
                "tiers": tiers,
            }
