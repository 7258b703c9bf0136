//! Eviction: a scan of the trie, then unpinned leaves in policy order (LRU or PLT).

use super::node::{Node, NodeArc};
use super::{capacity_err, retire_link, Trie};
use crate::children;
use crate::protocol;
use crate::{EvictPolicy, TrieError};
use crossbeam_epoch::{self as epoch, Guard};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::collections::BinaryHeap;
use std::cmp::Reverse;

/// One node seen by an eviction scan.
struct Scanned<'g> {
    node: &'g Node,
    parent: usize,
    len: usize,
    children_left: usize,
    protected: bool,
    lp_sum: f64,
    depth: usize,
    lp_ok: bool,
}

const NO_PARENT: usize = usize::MAX;

/// Eviction order: (policy score bits, stamp, node id), smallest first.
type EvictKey = (u64, u64, u64);

impl Trie {
    // ----- eviction ---------------------------------------------------------------------

    /// Evicts unpinned leaves (whole edges) until at least `n_tokens` are freed or nothing
    /// evictable is left; returns the freed values.
    pub fn evict(&self, n_tokens: u64, policy: EvictPolicy) -> Vec<u64> {
        if n_tokens == 0 {
            return Vec::new();
        }
        let guard = epoch::pin();
        self.evict_inner(n_tokens, policy, false, &guard).unwrap_or_default()
    }

    /// Values freed by evictions that inserts triggered (max_tokens), since the last call.
    pub fn take_evicted(&self) -> Vec<u64> {
        std::mem::take(&mut *self.evicted_queue.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn scan<'g>(&'g self, guard: &'g Guard) -> Vec<Scanned<'g>> {
        let mut out: Vec<Scanned<'g>> = Vec::new();
        let mut stack: Vec<(usize, &'g Node, f64, usize, bool, usize)> = Vec::new();
        for (_, r) in self.all_roots(guard) {
            stack.push((NO_PARENT, r, 0.0, 0, true, 0));
            while let Some((parent, node, lp_sum, depth, lp_ok, len)) = stack.pop() {
                let idx = out.len();
                out.push(Scanned {
                    node,
                    parent,
                    len,
                    children_left: 0,
                    protected: parent == NO_PARENT || protocol::pins(&node.state) > 0,
                    lp_sum,
                    depth,
                    lp_ok,
                });
                let mut count = 0;
                children::for_each(&node.children, guard, |e| {
                    // SAFETY: `e` comes from a table loaded under `guard`; links are freed only through the collector
                    // (`retire_link`), so the link outlives `guard`.
                    let link = unsafe { &*e.link };
                    let (s, ok) = match &link.logprobs {
                        Some(lp) => (lp_sum + lp.iter().map(|&x| x as f64).sum::<f64>(), lp_ok),
                        None => (lp_sum, false),
                    };
                    stack.push((idx, &link.node, s, depth + link.tokens.len(), ok, link.tokens.len()));
                    count += 1;
                });
                out[idx].children_left = count;
            }
        }
        // Anything on the path to a pinned node is protected.
        for i in (0..out.len()).rev() {
            if out[i].protected && out[i].parent != NO_PARENT {
                let p = out[i].parent;
                out[p].protected = true;
            }
        }
        out
    }

    fn evict_key(s: &Scanned<'_>, policy: EvictPolicy) -> EvictKey {
        let stamp = s.node.stamp.load(Relaxed);
        match policy {
            EvictPolicy::Lru => (0, stamp, s.node.id),
            EvictPolicy::Plt => {
                let counts = (s.node.visits.load(Relaxed) + s.node.hits.load(Relaxed)) as f64;
                let prior = if s.lp_ok && s.depth > 0 { (s.lp_sum / s.depth as f64).exp() } else { 0.0 };
                ((counts + prior).to_bits(), stamp, s.node.id)
            }
        }
    }

    pub(super) fn evict_inner(&self, n_tokens: u64, policy: EvictPolicy, all_or_nothing: bool, guard: &Guard) -> Result<Vec<u64>, TrieError> {
        let mut nodes = self.scan(guard);
        if all_or_nothing {
            let evictable: u64 = nodes.iter().filter(|s| !s.protected).map(|s| s.len as u64).sum();
            if evictable < n_tokens {
                return Err(capacity_err(format!(
                    "need {n_tokens} tokens of room but only {evictable} are evictable (the rest is pinned)"
                )));
            }
        }
        let mut heap: BinaryHeap<Reverse<(EvictKey, usize)>> = nodes
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.protected && s.children_left == 0)
            .map(|(i, s)| Reverse((Self::evict_key(s, policy), i)))
            .collect();
        let mut freed: Vec<u64> = Vec::new();
        while (freed.len() as u64) < n_tokens {
            let Some(Reverse((_, i))) = heap.pop() else { break };
            if !self.try_evict_leaf(nodes[i].node, &mut freed, guard) {
                continue;
            }
            let p = nodes[i].parent;
            if p != NO_PARENT {
                nodes[p].children_left -= 1;
                if nodes[p].children_left == 0 && !nodes[p].protected {
                    heap.push(Reverse((Self::evict_key(&nodes[p], policy), p)));
                }
            }
        }
        Ok(freed)
    }

    /// Evicts `n` if it is still an unpinned, childless, live non-root node.
    fn try_evict_leaf(&self, n: &Node, out: &mut Vec<u64>, guard: &Guard) -> bool {
        loop {
            if n.is_dead() {
                return false;
            }
            let pp = n.parent.load(Acquire);
            if pp.is_null() {
                return false;
            }
            // SAFETY: n was reached under `guard` while linked; its parent is unlinked
            // only after n, so it is not reclaimed before `guard` is dropped.
            let p = unsafe { &*pp };
            let mut plk = p.lock();
            if n.parent.load(Acquire) != pp {
                continue; // a split moved n under a new parent
            }
            let nlk = n.lock();
            if *nlk != 0 || n.is_dead() {
                return false;
            }
            // Find the entry before killing: a node must never be dead and still linked
            // (matches reaching it could not pin it and would retry).
            let first = n.first.load(Acquire);
            let entries = children::candidates(&p.children, first, guard);
            // SAFETY: `e` comes from a table loaded under `guard`; links are freed only through the collector
            // (`retire_link`), so the link outlives `guard`.
            let Some(e) = entries.iter().find(|e| std::ptr::eq(unsafe { NodeArc::as_ptr(&(*e.link).node) }, n)) else {
                debug_assert!(false, "live node missing from its parent's table");
                return false;
            };
            let lp = e.link;
            if !protocol::try_kill(&n.state) {
                return false; // pinned
            }
            // SAFETY: `p`'s lock is held (`plk`) and `guard` is pinned, as `children::replace` requires.
            let ok = unsafe { children::replace(&p.children, first, lp, None, guard) };
            debug_assert!(ok);
            *plk -= 1;
            drop(nlk);
            drop(plk);
            // SAFETY: `lp` was reached under `guard` and is retired only below, through the collector.
            let link = unsafe { &*lp };
            let k = link.values.len() as u64;
            link.values.extend_all(out);
            p.stamp.fetch_max(n.stamp.load(Relaxed), Relaxed);
            self.stored.fetch_sub(k, AcqRel);
            self.used.fetch_sub(k, AcqRel);
            self.evictions.fetch_add(1, Relaxed);
            self.evicted_tokens.fetch_add(k, Relaxed);
            // SAFETY: `lp` was unlinked from `p`'s table above, under `p`'s lock; this is its only retirement.
            unsafe { retire_link(lp, guard) };
            return true;
        }
    }
}
