//! Introspection: `stats` (sizes and counters) and `dump` (every stored sequence).

use super::node::{Link, Node};
use super::Trie;
use crate::children;
use crate::protocol;
use crossbeam_epoch::{self as epoch};
use std::sync::atomic::Ordering::Relaxed;
use super::{DumpEntry, Stats};

impl Trie {
    // ----- introspection ----------------------------------------------------------------

    /// Sizes and counters.
    pub fn stats(&self) -> Stats {
        let guard = epoch::pin();
        let roots = self.all_roots(&guard);
        let mut s = Stats {
            namespaces: roots.len() as u64 - 1,
            page_size: self.page_size as u64,
            max_tokens: self.max_tokens,
            inserts: self.inserts.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
            evicted_tokens: self.evicted_tokens.load(Relaxed),
            capacity_errors: self.capacity_errors.load(Relaxed),
            pending_evicted: self.evicted_queue.lock().unwrap_or_else(|e| e.into_inner()).len() as u64,
            tokens: self.len(),
            ..Default::default()
        };
        let node_bytes = std::mem::size_of::<Node>();
        let link_bytes = std::mem::size_of::<Link>();
        let mut stack: Vec<&Node> = Vec::new();
        let mut bytes = std::mem::size_of::<Trie>();
        for (k, r) in roots {
            bytes += node_bytes + k.map_or(0, |k| k.len() + 64);
            stack.push(r);
        }
        while let Some(node) = stack.pop() {
            let p = protocol::pins(&node.state);
            if p > 0 {
                s.pinned_nodes += 1;
                s.pins += p;
            }
            bytes += children::heap_bytes(&node.children, &guard);
            let mut has = false;
            children::for_each(&node.children, &guard, |e| {
                has = true;
                // SAFETY: `e` comes from a table loaded under `guard`; links are freed only through the collector
                // (`retire_link`), so the link outlives `guard`.
                let link = unsafe { &*e.link };
                s.nodes += 1;
                let k = link.tokens.len();
                bytes += node_bytes + link_bytes + link.tokens.heap_bytes() + link.values.heap_bytes();
                if link.logprobs.is_some() {
                    bytes += k * 4;
                    s.tokens_with_logprobs += k as u64;
                }
                stack.push(&link.node);
            });
            if !has && !node.parent.load(Relaxed).is_null() {
                s.leaves += 1;
            }
        }
        s.bytes = bytes as u64;
        s
    }

    /// Every stored sequence (root-to-leaf path), by namespace then token order.
    pub fn dump(&self) -> Vec<DumpEntry> {
        let guard = epoch::pin();
        let mut out = Vec::new();
        for (ns, root) in self.all_roots(&guard) {
            let mut stack: Vec<(&Node, Vec<u32>, Vec<u64>)> = vec![(root, Vec::new(), Vec::new())];
            while let Some((node, toks, vals)) = stack.pop() {
                let mut kids: Vec<(&Node, Vec<u32>, Vec<u64>)> = Vec::new();
                children::for_each(&node.children, &guard, |e| {
                    // SAFETY: `e` comes from a table loaded under `guard`; links are freed only through the collector
                    // (`retire_link`), so the link outlives `guard`.
                    let link = unsafe { &*e.link };
                    let mut t = toks.clone();
                    t.extend(link.tokens.iter());
                    let mut v = vals.clone();
                    link.values.extend_all(&mut v);
                    kids.push((&link.node, t, v));
                });
                if kids.is_empty() {
                    if !toks.is_empty() {
                        out.push(DumpEntry { namespace: ns.map(|k| k.to_vec()), tokens: toks, values: vals });
                    }
                } else {
                    kids.sort_by(|a, b| b.1.cmp(&a.1));
                    stack.extend(kids);
                }
            }
        }
        out
    }
}
