//! Insert: capacity reservation, the insert walk, edge splits and log-prob upgrades
//! (writers lock one node, then possibly one child).

use super::node::{now, Children, Entry, Link, Node, NodeArc};
use super::{capacity_err, retire_link, wait_unlinked, Restart, Trie};
use crate::children;
use crate::protocol;
use crate::tokens::EdgeTokens;
use crate::values::EdgeValues;
use crate::TrieError;
use crossbeam_epoch::{self as epoch, Guard, Owned};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

impl Trie {
    // ----- insert -----------------------------------------------------------------------

    /// Stores `tokens` (cut to whole pages) with one value per token (fresh unique values
    /// when `values` is `None`) and optional natural-log probabilities. Returns the number
    /// of tokens newly stored: they are the last ones of the key, so `values[..len - n]`
    /// were duplicates the caller may free. Fails with `Capacity` (storing nothing) when
    /// `max_tokens` would be exceeded and not enough unpinned tokens can be evicted.
    pub fn insert(
        &self,
        tokens: &[u32],
        values: Option<&[u64]>,
        logprobs: Option<&[f32]>,
        ns: Option<&[u8]>,
    ) -> Result<usize, TrieError> {
        if let Some(v) = values {
            if v.len() != tokens.len() {
                return Err(TrieError::InvalidInput(format!(
                    "values has {} entries for {} tokens",
                    v.len(),
                    tokens.len()
                )));
            }
        }
        if let Some(lp) = logprobs {
            if lp.len() != tokens.len() {
                return Err(TrieError::InvalidInput(format!(
                    "logprobs has {} entries for {} tokens",
                    lp.len(),
                    tokens.len()
                )));
            }
            if let Some(i) = lp.iter().position(|x| x.is_nan() || *x > 0.0) {
                return Err(TrieError::InvalidInput(format!(
                    "logprobs[{i}] = {} is not a log-probability (must be <= 0, not NaN)",
                    lp[i]
                )));
            }
        }
        let n = self.aligned(tokens.len());
        let tokens = &tokens[..n];
        let values = values.map(|v| &v[..n]);
        let logprobs = logprobs.map(|v| &v[..n]);
        if n == 0 {
            return Ok(0);
        }
        let guard = epoch::pin();
        let root = self.root_or_create(ns, &guard);
        self.inserts.fetch_add(1, Relaxed);
        let Some(max) = self.max_tokens else {
            loop {
                if let Ok(k) = self.insert_walk(root, tokens, values, logprobs, false, &guard) {
                    return Ok(k);
                }
            }
        };
        loop {
            // Dry walk: how much is already there, and which node ends it.
            let mut scratch = Vec::new();
            let (m, deepest) = self.match_from(root, tokens, &mut scratch, &guard);
            let need = (n - m) as u64;
            if need > max {
                self.capacity_errors.fetch_add(1, Relaxed);
                return Err(capacity_err(format!(
                    "{need} new tokens can never fit in max_tokens={max}"
                )));
            }
            // Pin the matched path so that eviction cannot take it from under us.
            if protocol::try_pin(&deepest.state).is_err() {
                wait_unlinked(deepest);
                continue;
            }
            let reserved = match self.reserve(need, max, &guard) {
                Ok(()) => need,
                Err(e) => {
                    let _ = protocol::unpin(&deepest.state);
                    self.capacity_errors.fetch_add(1, Relaxed);
                    return Err(e);
                }
            };
            let r = self.insert_walk(root, tokens, values, logprobs, true, &guard);
            let _ = protocol::unpin(&deepest.state);
            match r {
                Ok(k) => {
                    debug_assert!(k as u64 <= reserved);
                    self.used.fetch_sub(reserved - k as u64, AcqRel);
                    return Ok(k);
                }
                Err(Restart) => {
                    self.used.fetch_sub(reserved, AcqRel);
                }
            }
        }
    }

    /// Reserves `need` tokens of capacity, evicting unpinned leaves if required.
    fn reserve(&self, need: u64, max: u64, guard: &Guard) -> Result<(), TrieError> {
        loop {
            let u = self.used.load(Acquire);
            if u + need <= max {
                if self.used.compare_exchange_weak(u, u + need, AcqRel, Acquire).is_ok() {
                    return Ok(());
                }
                continue;
            }
            let deficit = u + need - max;
            let limit = self.evicted_queue_limit;
            if limit > 0 && self.evicted_queue.lock().unwrap_or_else(|e| e.into_inner()).len() >= limit {
                return Err(capacity_err(format!(
                    "max_tokens={max} reached and {limit} evicted values wait undrained: call take_evicted() \
                     (or build the trie with evicted_queue=0 to not keep them)"
                )));
            }
            let freed = self.evict_inner(deficit, self.policy, true, guard)?;
            if freed.is_empty() {
                return Err(capacity_err(format!(
                    "max_tokens={max} reached and nothing can be evicted (all pinned)"
                )));
            }
            if limit > 0 {
                self.evicted_queue.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&freed);
            }
        }
    }

    fn insert_walk<'g>(
        &self,
        root: &'g Node,
        tokens: &[u32],
        values: Option<&[u64]>,
        logprobs: Option<&[f32]>,
        reserved: bool,
        guard: &'g Guard,
    ) -> Result<usize, Restart> {
        let n = tokens.len();
        let t = now();
        let mut node: &'g Node = root;
        let mut pos = 0usize;
        let mut stored = 0usize;
        let mut path: Vec<&'g Node> = Vec::new();
        while pos < n {
            let rest = &tokens[pos..];
            match self.find_child(node, rest, guard) {
                None => {
                    let mut lk = node.lock();
                    if node.is_dead() {
                        return Err(Restart);
                    }
                    if self.find_child(node, rest, guard).is_some() {
                        continue;
                    }
                    let k = rest.len();
                    let vals = match values {
                        Some(v) => EdgeValues::from_slice(&v[pos..]),
                        None => EdgeValues::Run { first: self.next_value.fetch_add(k as u64, Relaxed), len: k },
                    };
                    let child = NodeArc::new(Node::new(self, node, rest[0], t, 1, 0, 0));
                    let link = Box::into_raw(Box::new(Link {
                        tokens: EdgeTokens::from_slice(rest),
                        values: vals,
                        logprobs: logprobs.map(|l| l[pos..].into()),
                        node: child,
                    }));
                    // SAFETY: `node`'s lock is held (`lk`, checked alive) and `guard` is pinned, as `children::insert`
                    // requires.
                    unsafe { children::insert(&node.children, Entry { first: rest[0], link }, guard) };
                    *lk += 1;
                    drop(lk);
                    self.stored.fetch_add(k as u64, AcqRel);
                    if !reserved {
                        self.used.fetch_add(k as u64, AcqRel);
                    }
                    stored = k;
                    pos = n;
                    // SAFETY: `link` was just allocated and published in `node`'s table; links are freed only through
                    // the collector, which `guard` pins.
                    node = unsafe { &(*link).node };
                }
                Some(lp) => {
                    // SAFETY: `lp` was found in a table loaded under `guard`; links are freed only through the collector.
                    let link = unsafe { &*lp };
                    let l = self.aligned(link.tokens.lcp(rest));
                    debug_assert!(l > 0);
                    if l == link.tokens.len() {
                        if let (Some(given), None) = (logprobs, &link.logprobs) {
                            if self.upgrade_logprobs(node, lp, &given[pos..pos + l], guard).is_err() {
                                return Err(Restart);
                            }
                        }
                        path.push(&link.node);
                        pos += l;
                        node = &link.node;
                    } else {
                        let lk = node.lock();
                        if node.is_dead() {
                            return Err(Restart);
                        }
                        if self.find_child(node, rest, guard) != Some(lp) {
                            continue;
                        }
                        let given = logprobs.map(|g| &g[pos..pos + l]);
                        // SAFETY: `node`'s lock is held (`lk`), it is alive, and `lp` is still its child (re-checked under
                        // the lock) reached under `guard`: `split`'s contract.
                        let p = unsafe { self.split(node, lp, l, given, guard) };
                        drop(lk);
                        path.push(p);
                        pos += l;
                        node = p;
                    }
                }
            }
        }
        for p in path {
            p.visits.fetch_add(1, Relaxed);
        }
        if !std::ptr::eq(node, root) {
            node.touch(t);
        }
        Ok(stored)
    }

    /// Splits the edge `lp` (a child of `g`) after `l` tokens. Caller holds `g`'s lock.
    unsafe fn split<'g>(&self, g: &Node, lp: *mut Link, l: usize, given: Option<&[f32]>, guard: &'g Guard) -> &'g Node {
        // SAFETY: the caller holds `g`'s lock and `lp` is a child link of `g` reached under `guard`, so it
        // stays valid until `retire_link` below (after it is unlinked, once); `prefix` and `suffix` come
        // from `Box::into_raw` just above; `children::replace` runs under `g`'s lock with `guard` pinned.
        unsafe {
            let old = &*lp;
            let n = &old.node;
            let p = NodeArc::new(Node::new(
                self,
                g,
                old.tokens.at(0),
                n.stamp.load(Relaxed),
                n.visits.load(Relaxed),
                n.hits.load(Relaxed),
                1,
            ));
            let suffix = Box::into_raw(Box::new(Link {
                tokens: old.tokens.slice(l, old.tokens.len()),
                values: old.values.slice(l, old.values.len()),
                logprobs: old.logprobs.as_ref().map(|x| x[l..].into()),
                node: n.clone(),
            }));
            p.children.store(Owned::new(Children::Small(vec![Entry { first: old.tokens.at(l), link: suffix }].into_boxed_slice())), Release);
            let prefix_lp: Option<Box<[f32]>> = match (&old.logprobs, given) {
                (Some(x), _) => Some(x[..l].into()),
                (None, Some(g)) => Some(g.into()),
                (None, None) => None,
            };
            let prefix = Box::into_raw(Box::new(Link {
                tokens: old.tokens.slice(0, l),
                values: old.values.slice(0, l),
                logprobs: prefix_lp,
                node: p,
            }));
            // Hold P's lock (parent before child: g, then P) from the moment P becomes
            // reachable until N is re-parented. Without it a second split could find P
            // lock-free, take only P's lock, split P -> N into P -> Q -> N and set
            // N.parent = Q, and then our late `N.parent = P` would overwrite it: N linked
            // under Q but pointing at P, so its evictor would lock the wrong node.
            let p_lock = (*prefix).node.lock();
            let ok = children::replace(&g.children, old.tokens.at(0), lp, Some(Entry { first: old.tokens.at(0), link: prefix }), guard);
            debug_assert!(ok);
            // Re-parent N under P while holding g's and P's locks (evictors and splitters of
            // N lock its parent).
            n.first.store(old.tokens.at(l), Release);
            n.parent.store(NodeArc::as_ptr(&(*prefix).node) as *mut Node, Release);
            drop(p_lock);
            retire_link(lp, guard);
            &(*prefix).node
        }
    }

    /// Replaces link `lp` of `g` by a copy carrying `logprobs`. Err if `g` died.
    fn upgrade_logprobs(&self, g: &Node, lp: *mut Link, logprobs: &[f32], guard: &Guard) -> Result<(), ()> {
        let _lk = g.lock();
        if g.is_dead() {
            return Err(());
        }
        // SAFETY: `lp` was reached under `guard`; links are freed only through the collector.
        let old = unsafe { &*lp };
        let first = old.tokens.at(0);
        let new = Box::into_raw(Box::new(Link {
            tokens: old.tokens.clone(),
            values: old.values.clone(),
            logprobs: Some(logprobs.into()),
            node: old.node.clone(),
        }));
        // SAFETY: `g`'s lock is held (`_lk`) and `guard` is pinned, as `children::replace` requires.
        if unsafe { children::replace(&g.children, first, lp, Some(Entry { first, link: new }), guard) } {
            // SAFETY: `lp` was just unlinked from `g`'s table under `g`'s lock, so no new reader reaches it;
            // this is its only retirement.
            unsafe { retire_link(lp, guard) };
        } else {
            // Someone replaced it first (split or upgrade): keep theirs.
            // SAFETY: `new` came from `Box::into_raw` above and was never published.
            drop(unsafe { Box::from_raw(new) });
        }
        Ok(())
    }
}
