//! What `snapshot.rs` needs to serialise and rebuild a trie.

use super::node::{Entry, Link, Node, NodeArc};
use super::Trie;
use crate::children;
use crate::tokens::EdgeTokens;
use crate::values::EdgeValues;
use crossbeam_epoch::{self as epoch, Guard};
use std::sync::atomic::Ordering::AcqRel;

impl Trie {
    // ----- used by snapshot.rs ----------------------------------------------------------

    pub(crate) fn with_roots<R>(&self, f: impl FnOnce(&[(Option<&[u8]>, &Node)], &Guard) -> R) -> R {
        let guard = epoch::pin();
        let roots = self.all_roots(&guard);
        f(&roots, &guard)
    }

    pub(crate) fn restore_root<'g>(&'g self, ns: Option<&[u8]>, guard: &'g Guard) -> &'g Node {
        self.root_or_create(ns, guard)
    }

    /// Attaches a restored child under `parent` (single-threaded restore). Returns the
    /// new node, or None if an edge with the same first page already exists.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn restore_child<'g>(
        &self,
        parent: &'g Node,
        tokens: &[u32],
        values: &[u64],
        logprobs: Option<Box<[f32]>>,
        visits: u64,
        hits: u64,
        guard: &'g Guard,
    ) -> Option<&'g Node> {
        let first = tokens[0];
        let probe = &tokens[..self.page_size.min(tokens.len())];
        let entries = children::candidates(&parent.children, first, guard);
        // SAFETY: `e` comes from a table loaded under `guard`; links are freed only through the collector
        // (`retire_link`), so the link outlives `guard`.
        if entries.iter().any(|e| e.first == first && (self.page_size == 1 || unsafe { (*e.link).tokens.starts_with(probe) })) {
            return None;
        }
        let k = tokens.len() as u64;
        let mut lk = parent.lock();
        let child = NodeArc::new(Node::new(self, parent, first, 0, visits, hits, 0));
        let link = Box::into_raw(Box::new(Link {
            tokens: EdgeTokens::from_slice(tokens),
            values: EdgeValues::from_slice(values),
            logprobs,
            node: child,
        }));
        // SAFETY: `parent`'s lock is held (`lk`) and `guard` is pinned, as `children::insert` requires.
        unsafe { children::insert(&parent.children, Entry { first, link }, guard) };
        *lk += 1;
        self.stored.fetch_add(k, AcqRel);
        self.used.fetch_add(k, AcqRel);
        // SAFETY: `link` was just allocated and published in `parent`'s table; links are freed only
        // through the collector, which `guard` pins.
        Some(unsafe { &(*link).node })
    }
}
