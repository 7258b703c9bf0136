"""The tier manager: capacity kept, nothing lost, LRU order respected, moves consistent."""

from __future__ import annotations

import pytest
from helpers import run_threads
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from seqkv import InvalidInputError, SessionNotFoundError
from seqkv.store.tiers import Move, Tiers

IDS = [f"s{i}" for i in range(12)]


def test_lru_basic():
    t = Tiers(1000)
    assert t.add("a", nbytes=400) == [] and t.add("b", nbytes=400) == []
    # c does not fit: the least recently used (a) goes warm (estimated 0.2 x 400 = 80 bytes)
    assert t.add("c", nbytes=400) == [Move("a", "hot", "warm")]
    assert t.used_bytes() == 880
    # accessing a promotes it; b is now the oldest and makes room
    assert t.access("a") == [Move("b", "hot", "warm"), Move("a", "warm", "hot")]
    st_ = t.stats()
    assert st_["tiers"]["hot"]["entries"] == 2 and st_["tiers"]["warm"]["bytes"] == 80
    assert st_["tiers"]["hot"]["demotions_out"] == 2 and st_["tiers"]["hot"]["promotions_in"] == 1


def test_too_big_for_memory_goes_to_the_floor():
    t = Tiers(100, tiers=("hot", "cold"))
    assert t.add("big", nbytes=500, sizes={"cold": 40}) == [Move("big", "hot", "cold")]
    assert t.tier_of("big") == "cold" and t.used_bytes() == 0
    assert t.access("big") == []  # it cannot fit: stays cold
    assert t.stats()["tiers"]["cold"]["bytes"] == 40


def test_skips_a_tier_the_entry_does_not_fit():
    t = Tiers(1000, limits={"warm": 10})
    assert t.add("a", nbytes=600) == []
    # b forces a out of hot; its warm form (120) exceeds warm's limit (10): straight to cold
    assert t.add("b", nbytes=600) == [Move("a", "hot", "cold")]


def test_promotion_to_warm_when_hot_cannot_hold_it():
    t = Tiers(1000, limits={"hot": 300})
    assert t.add("a", "cold", sizes={"hot": 400, "warm": 50, "cold": 9}) == []
    assert t.access("a") == [Move("a", "cold", "warm")]


def test_pins_hold_entries():
    t = Tiers(1000)
    t.add("a", nbytes=600)
    with t.pinned("a") as after:
        assert t.add("b", nbytes=600) == [Move("b", "hot", "warm")]  # a is pinned: b yields
        t.resize("a", 1200)  # pinned entries alone may exceed the budget
        assert t.tier_of("a") == "hot"
    assert after == [Move("a", "hot", "warm")]
    assert t.used_bytes() <= 1000
    with pytest.raises(InvalidInputError, match="not pinned"):
        t.unpin("a")


def test_configure_shrinks_budget():
    t = Tiers(10_000)
    for i in range(5):
        t.add(f"s{i}", nbytes=1000)
    moves = t.configure(capacity_bytes=2000)
    assert {m.session_id for m in moves} == {"s0", "s1", "s2"}  # oldest first
    assert t.used_bytes() <= 2000 and len(t) == 5


def test_plt_prefers_high_reuse_scores():
    t = Tiers(1000, policy="plt")
    t.add("popular", nbytes=400, score=50.0)
    t.add("once", nbytes=400, score=0.0)
    # the low-score entry goes first although the popular one is older
    assert t.add("new", nbytes=400, score=1.0) == [Move("once", "hot", "warm")]


def test_plt_ages_out_idle_entries():
    t = Tiers(1000, policy="plt")
    t.add("old", nbytes=400, score=3.0)
    for i in range(40):
        t.add(f"n{i}", nbytes=400, score=0.0)
        t.access(f"n{i}")
        t.access(f"n{i}")
    assert t.tier_of("old") != "hot"  # a high score does not pin an idle entry forever


def test_errors():
    with pytest.raises(InvalidInputError):
        Tiers(-1)
    with pytest.raises(InvalidInputError, match="policy"):
        Tiers(10, policy="fifo")
    with pytest.raises(InvalidInputError, match="tiers"):
        Tiers(10, tiers=("hot",))
    with pytest.raises(InvalidInputError, match="unbounded"):
        Tiers(10, limits={"cold": 5})
    t = Tiers(10)
    with pytest.raises(InvalidInputError, match="unknown tier"):
        t.add("a", "lukewarm", nbytes=1)
    with pytest.raises(InvalidInputError, match="unknown"):
        t.add("a", "hot")  # no size
    assert "a" not in t  # the failed add left nothing behind
    with pytest.raises(SessionNotFoundError):
        t.access("zzz")
    assert t.remove("zzz") is False


def test_threads_keep_invariants():
    t = Tiers(50_000)

    def work(k: int) -> None:
        for i in range(300):
            sid = f"{k}-{i % 40}"
            if sid in t:
                t.access(sid)
            else:
                t.add(sid, nbytes=1000 + 37 * (i % 13))
            if i % 7 == 0:
                t.resize(sid, 500 + i)
            assert t.used_bytes() <= 50_000

    run_threads(work, [(k,) for k in range(8)])
    assert len(t) == 8 * 40 and t.used_bytes() <= 50_000


class TierMachine(RuleBasedStateMachine):
    """Drives a Tiers like a store would, applying every returned move to its own view."""

    @initialize(
        capacity=st.integers(0, 5000),
        policy=st.sampled_from(["lru", "plt"]),
        three=st.booleans(),
        hot_limit=st.none() | st.integers(0, 4000),
    )
    def setup(self, capacity, policy, three, hot_limit):
        tiers = ("hot", "warm", "cold") if three else ("hot", "cold")
        self.t = Tiers(capacity, policy, tiers=tiers, limits={"hot": hot_limit} if hot_limit is not None else None)
        self.limited = hot_limit is not None
        self.view: dict[str, str] = {}  # what the caller believes: session -> tier
        self.pins: dict[str, int] = {}

    def apply(self, moves: list[Move], protect: str | None) -> None:
        before = {e.session_id: e for e in self.t.entries()}
        for m in moves:
            assert self.view[m.session_id] == m.from_tier, m  # moves are relative to the caller's view
            self.view[m.session_id] = m.to_tier
        assert len({m.session_id for m in moves}) == len(moves)  # coalesced: one move per entry
        promotions = [m for m in moves if self.t.tiers.index(m.to_tier) < self.t.tiers.index(m.from_tier)]
        assert all(m.session_id == protect for m in promotions)
        assert moves[len(moves) - len(promotions) :] == promotions  # promotion comes last
        if self.t.policy == "lru" and not self.limited:
            # every entry demoted (other than the protected one) is older than every entry
            # that stayed in memory untouched and unpinned
            moved = {m.session_id for m in moves}
            stayed = [
                e for sid, e in before.items()
                if sid not in moved and sid != protect and e.tier != self.t.floor and not e.pins
            ]
            for m in moves:
                if m.session_id == protect or m in promotions:
                    continue
                for e in stayed:
                    assert before[m.session_id].last_access < e.last_access, (m, e)

    @rule(sid=st.sampled_from(IDS), nbytes=st.integers(0, 3000), cold=st.integers(0, 100), score=st.floats(0, 100))
    def add(self, sid, nbytes, cold, score):
        self.view[sid] = "hot"
        self.apply(self.t.add(sid, "hot", sizes={"hot": nbytes, "cold": cold}, score=score), sid)

    @rule(sid=st.sampled_from(IDS), nbytes=st.integers(0, 3000))
    def add_cold(self, sid, nbytes):
        self.view[sid] = "cold"
        self.apply(self.t.add(sid, "cold", sizes={"hot": nbytes}), sid)

    @precondition(lambda self: self.view)
    @rule(data=st.data(), promote=st.booleans())
    def access(self, data, promote):
        sid = data.draw(st.sampled_from(sorted(self.view)))
        self.apply(self.t.access(sid, promote=promote), sid)

    @precondition(lambda self: self.view)
    @rule(data=st.data(), nbytes=st.integers(0, 3000))
    def resize(self, data, nbytes):
        sid = data.draw(st.sampled_from(sorted(self.view)))
        self.apply(self.t.resize(sid, nbytes), sid)

    @precondition(lambda self: self.view)
    @rule(data=st.data())
    def remove(self, data):
        sid = data.draw(st.sampled_from(sorted(self.view)))
        assume(not self.pins.get(sid))
        assert self.t.remove(sid)
        del self.view[sid]

    @precondition(lambda self: self.view)
    @rule(data=st.data())
    def pin(self, data):
        sid = data.draw(st.sampled_from(sorted(self.view)))
        self.t.pin(sid)
        self.pins[sid] = self.pins.get(sid, 0) + 1

    @precondition(lambda self: any(self.pins.values()))
    @rule(data=st.data())
    def unpin(self, data):
        sid = data.draw(st.sampled_from(sorted(k for k, v in self.pins.items() if v)))
        self.pins[sid] -= 1
        self.apply(self.t.unpin(sid), None)

    @rule(capacity=st.integers(0, 5000))
    def configure(self, capacity):
        self.apply(self.t.configure(capacity_bytes=capacity), None)

    @invariant()
    def nothing_lost_and_views_agree(self):
        if not hasattr(self, "t"):
            return
        assert {e.session_id: e.tier for e in self.t.entries()} == self.view
        assert len(self.t) == len(self.view)

    @invariant()
    def capacity_kept(self):
        if not hasattr(self, "t"):
            return
        entries = self.t.entries()
        pinned = sum(e.nbytes for e in entries if e.pins and e.tier != self.t.floor)
        used = self.t.used_bytes()
        assert used == sum(e.nbytes for e in entries if e.tier != self.t.floor)
        if pinned <= self.t.capacity_bytes:
            # only pinned entries may keep memory above the budget
            assert used <= max(self.t.capacity_bytes, pinned)
        stats = self.t.stats()
        assert stats["used_bytes"] == used
        assert sum(v["entries"] for v in stats["tiers"].values()) == len(self.view)
        if self.limited:
            hot_pinned = sum(e.nbytes for e in entries if e.pins and e.tier == "hot")
            hot = stats["tiers"]["hot"]["bytes"]
            assert hot <= max(self.t.limits["hot"], hot_pinned)


TierMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestTierMachine = TierMachine.TestCase


@given(
    sizes=st.lists(st.integers(1, 1000), min_size=1, max_size=30),
    capacity=st.integers(0, 3000),
)
@settings(max_examples=200, deadline=None)
def test_lru_demotes_in_insertion_order(sizes, capacity):
    """Adding entries without accesses: the ones that leave the hot tier are always the oldest."""
    t = Tiers(capacity, tiers=("hot", "cold"))
    for i, n in enumerate(sizes):
        t.add(f"s{i:03d}", nbytes=n)
    fits = {f"s{i:03d}" for i, n in enumerate(sizes) if n <= capacity}
    hot = [e.session_id for e in t.entries() if e.tier == "hot"]
    cold = [e.session_id for e in t.entries() if e.tier == "cold" and e.session_id in fits]
    assert t.used_bytes() <= capacity
    assert all(e.tier == "cold" for e in t.entries() if e.session_id not in fits)
    # among entries that fit on their own, every cold one is older than every hot one
    if hot and cold:
        assert max(cold) < min(hot)
