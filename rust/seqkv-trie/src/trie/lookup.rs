//! Edge matching: the lock-free walk down the trie that `match_prefix`, `match_and_pin`
//! and the insert path share.

use super::node::{prefetch_for_write, Link, Node, NodeArc, NodeRef};
use super::{wait_unlinked, Match, Trie};
use crate::children;
use crate::protocol;
use crossbeam_epoch::{self as epoch, Guard};
use std::sync::atomic::Ordering::Acquire;

impl Trie {
    // ----- lookup -----------------------------------------------------------------------

    /// The child link of `node` whose edge starts the remaining key `rest`
    /// (`rest.len() >= page_size`, a multiple of it).
    #[inline]
    pub(super) fn find_child(&self, node: &Node, rest: &[u32], guard: &Guard) -> Option<*mut Link> {
        let first = rest[0];
        let entries = children::candidates(&node.children, first, guard);
        let mut i = children::lower_bound(entries, first);
        while i < entries.len() && entries[i].first == first {
            let link = entries[i].link;
            if self.page_size == 1 {
                return Some(link);
            }
            let ps = self.page_size;
            // SAFETY: reached under `guard`.
            if unsafe { (*link).tokens.starts_with(&rest[..ps]) } {
                return Some(link);
            }
            i += 1;
        }
        None
    }

    /// Longest stored prefix of `tokens` (cut to whole pages) in namespace `ns`; its
    /// values are appended to `values`. Takes no lock.
    pub fn match_prefix(&self, tokens: &[u32], ns: Option<&[u8]>, values: &mut Vec<u64>) -> Match {
        let guard = epoch::pin();
        let (length, node) = self.match_in(tokens, ns, values, &guard, true);
        Match { length, node: NodeRef(node) }
    }

    /// [`Trie::match_prefix`] and a pin on the returned node, atomically: if the node is
    /// evicted between the two, the match is repeated. The caller must `unpin` it.
    pub fn match_and_pin(&self, tokens: &[u32], ns: Option<&[u8]>, values: &mut Vec<u64>) -> Match {
        let start = values.len();
        loop {
            let m = self.match_prefix(tokens, ns, values);
            match protocol::try_pin(&m.node.0.state) {
                Ok(()) => return m,
                Err(_) => {
                    values.truncate(start);
                    wait_unlinked(&m.node.0);
                }
            }
        }
    }

    fn match_in(
        &self,
        tokens: &[u32],
        ns: Option<&[u8]>,
        values: &mut Vec<u64>,
        guard: &Guard,
        touch: bool,
    ) -> (usize, NodeArc) {
        let Some(root) = self.root_for(ns, guard) else {
            // Unknown namespace: hand back a detached, never-linked root (pinning it is
            // harmless and touches no tenant's data).
            return (0, self.orphan.clone());
        };
        let tokens = &tokens[..self.aligned(tokens.len())];
        let (pos, end) = self.walk(root, tokens, values, guard);
        match end {
            None => (0, self.root_arc(ns, guard)),
            Some(e) => {
                if touch {
                    e.record_hit();
                }
                (pos, e.clone())
            }
        }
    }

    /// Benchmark probe (the controls of `seqkv.Trie._read_bench`): the walk of
    /// [`match_prefix`](Self::match_prefix) in the default namespace alone, with the end
    /// node's LRU stamp and hit count updated (`touch`) or not, and no handle cloned.
    #[doc(hidden)]
    pub fn walk_probe(&self, tokens: &[u32], values: &mut Vec<u64>, touch: bool) -> usize {
        let guard = epoch::pin();
        let Some(root) = self.root_for(None, &guard) else { return 0 };
        let (pos, end) = self.walk(root, &tokens[..self.aligned(tokens.len())], values, &guard);
        if let (true, Some(e)) = (touch, end) {
            e.record_hit();
        }
        pos
    }

    fn root_arc(&self, ns: Option<&[u8]>, guard: &Guard) -> NodeArc {
        match ns {
            None => self.default_root.clone(),
            Some(k) => {
                // SAFETY: the namespace table is never null while the trie lives and is retired only through the
                // collector; `guard` pins the epoch.
                let t = unsafe { self.namespaces.load(Acquire, guard).deref() };
                t.map.get(k).cloned().unwrap_or_else(|| self.orphan.clone())
            }
        }
    }

    /// Like `match_in` from a given root, without touching; returns the deepest node.
    pub(super) fn match_from<'g>(&self, root: &'g Node, tokens: &[u32], values: &mut Vec<u64>, guard: &'g Guard) -> (usize, &'g Node) {
        let (pos, end) = self.walk(root, tokens, values, guard);
        (pos, end.map_or(root, |e| &**e))
    }

    /// Follows `tokens` down from `root` (whole pages only), appending the matched values;
    /// returns the matched length and the node the match ends in (`None`: nothing matched).
    pub(super) fn walk<'g>(&self, root: &'g Node, tokens: &[u32], values: &mut Vec<u64>, guard: &'g Guard) -> (usize, Option<&'g NodeArc>) {
        let n = tokens.len();
        let mut node: &Node = root;
        let mut end = None;
        let mut pos = 0;
        while pos < n {
            let rest = &tokens[pos..];
            let Some(lp) = self.find_child(node, rest, guard) else { break };
            // SAFETY: links are reclaimed through the epoch, and `guard` pins it.
            let link: &'g Link = unsafe { &*lp };
            if rest.len() <= link.tokens.len() {
                // The match ends on this edge: fetch the line its handle and hit record
                // will write while the tokens are compared.
                prefetch_for_write(NodeArc::as_ptr(&link.node));
            }
            let l = self.aligned(link.tokens.lcp(rest));
            if l == 0 {
                break;
            }
            link.values.extend_prefix(l, values);
            pos += l;
            end = Some(&link.node);
            if l < link.tokens.len() {
                break;
            }
            node = &link.node;
        }
        (pos, end)
    }
}
