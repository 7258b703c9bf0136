"""Hypothesis state machine: seqkv.Trie against a pure-Python radix trie.

The reference mirrors the documented semantics exactly: radix edges split on
divergence (the deeper part keeps the node identity), page alignment, fresh values
from a counter, visit counts (inserts through an edge) and hits (matches ending on an
edge), LRU stamps (one per insert or non-empty match, on the node where it ends;
propagated to the parent when a child is evicted; inherited by the new node of a
split), eviction of whole unpinned leaves in policy order, max_tokens with
all-or-nothing CapacityError, and pins.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from seqkv import CapacityError, InvalidInputError
from seqkv.trie import Trie

ORPHAN = 2**64 - 1


class RNode:
    __slots__ = ("id", "tokens", "values", "children", "parent", "stamp", "visits", "hits", "pins", "dead")

    def __init__(self, nid, tokens=(), values=(), parent=None, stamp=0, visits=0, hits=0):
        self.id = nid
        self.tokens = list(tokens)
        self.values = list(values)
        self.children: list[RNode] = []
        self.parent = parent
        self.stamp = stamp
        self.visits = visits
        self.hits = hits
        self.pins = 0
        self.dead = False


class Reference:
    def __init__(self, page_size: int, max_tokens: int | None):
        self.ps = page_size
        self.max = max_tokens
        self.next_id = 1
        self.next_value = 0
        self.clock = 0
        self.roots = {None: RNode(0)}
        self.size = 0
        self.evicted_queue: list[int] = []

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def new_id(self) -> int:
        i = self.next_id
        self.next_id += 1
        return i

    def align(self, n: int) -> int:
        return n // self.ps * self.ps

    @staticmethod
    def lcp(a, b) -> int:
        n = 0
        for x, y in zip(a, b):
            if x != y:
                break
            n += 1
        return n

    def find_child(self, node, rest):
        for c in node.children:
            if c.tokens[: self.ps] == list(rest[: self.ps]):
                return c
        return None

    def walk(self, root, key):
        """(matched length, values, end node) without side effects."""
        node, end, pos, vals = root, root, 0, []
        while pos < len(key):
            c = self.find_child(node, key[pos:])
            if c is None:
                break
            l = self.align(self.lcp(c.tokens, key[pos:]))
            if l == 0:
                break
            vals += c.values[:l]
            pos += l
            end = c
            if l < len(c.tokens):
                break
            node = c
        return pos, vals, end

    def match(self, key, ns):
        key = list(key[: self.align(len(key))])
        root = self.roots.get(ns)
        if root is None:
            return 0, [], ORPHAN
        pos, vals, end = self.walk(root, key)
        if end is not root:
            end.stamp = self.tick()
            end.hits += 1
        return pos, vals, end.id

    # -- eviction --------------------------------------------------------------------
    def all_nodes(self):
        out = []
        for r in self.roots.values():
            stack = [r]
            while stack:
                n = stack.pop()
                out.append(n)
                stack.extend(n.children)
        return out

    def protected(self, extra=None):
        prot = set()
        for n in self.all_nodes():
            if n.pins > 0 or n is extra:
                m = n
                while m is not None and id(m) not in prot:
                    prot.add(id(m))
                    m = m.parent
        return prot

    def key(self, n, policy):
        if policy == "lru":
            return (0.0, n.stamp, n.id)
        return (float(n.visits + n.hits), n.stamp, n.id)

    def evict(self, n_tokens, policy, extra=None, all_or_nothing=False):
        prot = self.protected(extra)
        nodes = [n for n in self.all_nodes() if n.parent is not None]
        if all_or_nothing:
            evictable = sum(len(n.tokens) for n in nodes if id(n) not in prot)
            if evictable < n_tokens:
                return None
        freed: list[int] = []
        while len(freed) < n_tokens:
            leaves = [n for n in self.all_nodes() if n.parent is not None and not n.children and id(n) not in prot]
            if not leaves:
                break
            v = min(leaves, key=lambda n: self.key(n, policy))
            v.parent.children.remove(v)
            v.parent.stamp = max(v.parent.stamp, v.stamp)
            v.dead = True
            freed += v.values
            self.size -= len(v.tokens)
        return freed

    # -- insert ----------------------------------------------------------------------
    def insert(self, key, ns, policy):
        key = list(key[: self.align(len(key))])
        if not key:
            return 0
        if ns not in self.roots:
            self.roots[ns] = RNode(self.new_id())
        root = self.roots[ns]
        if self.max is not None:
            m, _, deepest = self.walk(root, key)
            need = len(key) - m
            if need > self.max:
                raise CapacityError("never fits")
            if self.size + need > self.max:
                freed = self.evict(self.size + need - self.max, policy, extra=deepest, all_or_nothing=True)
                if not freed:
                    raise CapacityError("all pinned")
                self.evicted_queue += freed
        t = self.tick()
        node, pos, path, stored = root, 0, [], 0
        while pos < len(key):
            rest = key[pos:]
            c = self.find_child(node, rest)
            if c is None:
                vals = list(range(self.next_value, self.next_value + len(rest)))
                self.next_value += len(rest)
                leaf = RNode(self.new_id(), rest, vals, node, stamp=t, visits=1)
                node.children.append(leaf)
                self.size += len(rest)
                stored = len(rest)
                node = leaf
                break
            l = self.align(self.lcp(c.tokens, rest))
            if l == len(c.tokens):
                path.append(c)
                pos += l
                node = c
                continue
            p = RNode(self.new_id(), c.tokens[:l], c.values[:l], node, stamp=c.stamp, visits=c.visits, hits=c.hits)
            node.children[node.children.index(c)] = p
            c.tokens, c.values, c.parent = c.tokens[l:], c.values[l:], p
            p.children = [c]
            path.append(p)
            pos += l
            node = p
        for n in path:
            n.visits += 1
        if node is not root:
            node.stamp = max(node.stamp, t)
        return stored

    def next_counts(self, prefix, ns):
        root = self.roots.get(ns)
        if root is None:
            return [], []
        node, pos, links = root, 0, []
        while pos < len(prefix):
            rest = prefix[pos:]
            best = None
            for c in node.children:  # first maximal common prefix among same-first-token edges
                if c.tokens[0] == rest[0]:
                    l = self.lcp(c.tokens, rest)
                    if best is None or l > best[1]:
                        best = (c, l)
            if best is None:
                break
            c, l = best
            links.append((c, l))
            pos += l
            if l < len(c.tokens):
                break
            node = c
        if pos < len(prefix):
            return [], []
        acc: dict[int, int] = {}
        if links and links[-1][1] < len(links[-1][0].tokens):
            c, l = links[-1]
            if self.ps > 1 and l < self.ps:
                parent = links[-2][0] if len(links) >= 2 else root
                seg = prefix[pos - l : pos]
                for d in parent.children:
                    if len(d.tokens) > len(seg) and d.tokens[: len(seg)] == seg:
                        acc[d.tokens[len(seg)]] = acc.get(d.tokens[len(seg)], 0) + d.visits
            else:
                acc[c.tokens[l]] = c.visits
        else:
            nd = links[-1][0] if links else root
            for d in nd.children:
                acc[d.tokens[0]] = acc.get(d.tokens[0], 0) + d.visits
        return sorted(acc), [acc[k] for k in sorted(acc)]

    def dump(self):
        out = []
        for ns, r in self.roots.items():
            stack = [(r, [], [])]
            while stack:
                n, toks, vals = stack.pop()
                if not n.children:
                    if toks:
                        out.append((ns, toks, vals))
                for c in n.children:
                    stack.append((c, toks + c.tokens, vals + c.values))
        return out

    def node_by_id(self, nid):
        for n in self.all_nodes():
            if n.id == nid:
                return n
        return None


NS = st.sampled_from([None, "a", 7])
KEY = st.lists(st.integers(0, 3), min_size=0, max_size=12)


def ns_bytes(ns):
    if ns is None:
        return None
    return (b"s" + ns.encode()) if isinstance(ns, str) else (b"i" + str(ns).encode())


class TrieMachine(RuleBasedStateMachine):
    @initialize(page_size=st.sampled_from([1, 1, 2]), max_tokens=st.sampled_from([None, 24, 60]), policy=st.sampled_from(["lru", "plt"]))
    def setup(self, page_size, max_tokens, policy):
        self.trie = Trie(page_size=page_size, max_tokens=max_tokens, policy=policy)
        self.ref = Reference(page_size, max_tokens)
        self.policy = policy
        self.handles = []  # (Node, reference node id)
        self.pins = []  # (Pin, reference node id)

    @rule(key=KEY, ns=NS)
    def insert(self, key, ns):
        try:
            want = self.ref.insert(key, ns, self.policy)
        except CapacityError:
            want = CapacityError
        try:
            got = self.trie.insert(np.asarray(key, dtype=np.int64), namespace=ns)
        except CapacityError:
            got = CapacityError
        assert got == want
        assert self.trie.take_evicted().tolist() == self.ref.evicted_queue
        self.ref.evicted_queue = []

    @rule(key=KEY, ns=NS)
    def match(self, key, ns):
        length, vals, nid = self.ref.match(key, ns)
        m = self.trie.match_prefix(key, namespace=ns)
        assert m.length == length
        assert m.values.tolist() == vals
        assert m.node.id == nid
        if nid != ORPHAN:
            self.handles.append((m.node, nid))

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 1000))
    def pin(self, i):
        node, nid = self.handles[i % len(self.handles)]
        rn = self.ref.node_by_id(nid)
        if rn is None or rn.dead:
            try:
                self.trie.pin(node)
            except InvalidInputError:
                return
            raise AssertionError("pin of an evicted node succeeded")
        if nid == 0 or rn.parent is None:
            return  # roots: harmless, not tracked
        self.pins.append((self.trie.pin(node), nid))
        rn.pins += 1

    @precondition(lambda self: self.pins)
    @rule(i=st.integers(0, 1000))
    def unpin(self, i):
        p, nid = self.pins.pop(i % len(self.pins))
        if i % 2:
            with p:
                pass
        else:
            self.trie.unpin(p)
        self.ref.node_by_id(nid).pins -= 1

    @rule(n=st.integers(0, 30), policy=st.sampled_from(["lru", "plt"]))
    def evict(self, n, policy):
        want = self.ref.evict(n, policy) if n > 0 else []
        assert self.trie.evict(n, policy=policy).tolist() == want

    @rule(prefix=KEY, ns=NS)
    def next_counts(self, prefix, ns):
        toks, counts = self.trie.next_counts(prefix, namespace=ns)
        wt, wc = self.ref.next_counts(prefix, ns)
        assert toks.tolist() == wt and counts.tolist() == wc

    @rule()
    def snapshot_roundtrip(self):
        r = Trie.restore(self.trie.snapshot())
        assert len(r) == len(self.trie)
        assert sorted((a or b"", b.tolist(), c.tolist()) for a, b, c in r._dump()) == sorted(
            (a or b"", b.tolist(), c.tolist()) for a, b, c in self.trie._dump()
        )

    @invariant()
    def same_contents(self):
        if not hasattr(self, "trie"):
            return
        assert len(self.trie) == self.ref.size
        got = sorted((ns or b"", t.tolist(), v.tolist()) for ns, t, v in self.trie._dump())
        want = sorted((ns_bytes(ns) or b"", t, v) for ns, t, v in self.ref.dump())
        assert got == want
        if self.ref.max is not None:
            assert len(self.trie) <= self.ref.max
        assert self.trie.stats()["pins"] == len(self.pins)


TrieMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_trie_state_machine = TrieMachine.TestCase
