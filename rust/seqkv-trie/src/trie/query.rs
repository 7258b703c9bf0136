//! Probabilistic queries over the stored log-probs and visit counts: `log_prob`, `d_t`,
//! `next_counts`.

use super::node::{Link, Node};
use super::Trie;
use crate::children;
use crate::tokens::lcp_widened;
use crate::TrieError;
use crossbeam_epoch::{self as epoch, Guard};
use std::sync::atomic::Ordering::Relaxed;

impl Trie {
    // ----- probabilistic queries ---------------------------------------------------------

    /// Links along the stored path of `tokens` (page alignment is not applied: any
    /// position may be asked about). Returns the matched length and (link, used) pairs.
    fn trace<'g>(&self, root: &'g Node, tokens: &[u32], guard: &'g Guard) -> (usize, Vec<(&'g Link, usize)>) {
        let mut node = root;
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < tokens.len() {
            let rest = &tokens[pos..];
            let entries = children::candidates(&node.children, rest[0], guard);
            let mut best: Option<(&Link, usize)> = None;
            let mut i = children::lower_bound(entries, rest[0]);
            while i < entries.len() && entries[i].first == rest[0] {
                // SAFETY: `e` comes from a table loaded under `guard`; links are freed only through the collector
                // (`retire_link`), so the link outlives `guard`.
                let link = unsafe { &*entries[i].link };
                let l = link.tokens.lcp(rest);
                if best.is_none_or(|(_, b)| l > b) {
                    best = Some((link, l));
                }
                i += 1;
            }
            let Some((link, l)) = best else { break };
            out.push((link, l));
            pos += l;
            if l < link.tokens.len() {
                break;
            }
            node = &link.node;
        }
        (pos, out)
    }

    /// Natural-log probability of `tokens` under the model, from the log-probs stored
    /// along its path. `InvalidInput` if the path is not stored or lacks log-probs.
    pub fn log_prob(&self, tokens: &[u32], ns: Option<&[u8]>) -> Result<f64, TrieError> {
        if tokens.is_empty() {
            return Ok(0.0);
        }
        let guard = epoch::pin();
        let Some(root) = self.root_for(ns, &guard) else {
            return Err(TrieError::InvalidInput("sequence is not stored in this namespace".into()));
        };
        let (m, links) = self.trace(root, tokens, &guard);
        if m < tokens.len() {
            return Err(TrieError::InvalidInput(format!(
                "only {m} of {} tokens are stored in the trie",
                tokens.len()
            )));
        }
        let mut s = 0.0f64;
        let mut at = 0;
        for (link, l) in links {
            let Some(lp) = &link.logprobs else {
                return Err(TrieError::InvalidInput(format!(
                    "tokens {at}..{} were inserted without log-probs",
                    at + l
                )));
            };
            s += lp[..l].iter().map(|&x| x as f64).sum::<f64>();
            at += l;
        }
        Ok(s)
    }

    /// `d_T(a, b) = -log2 P_M(a ∧ b)` in bits, over the longest common prefix of `a` and `b`.
    pub fn d_t(&self, a: &[u32], b: &[u32], ns: Option<&[u8]>) -> Result<f64, TrieError> {
        let c = lcp_widened(a, b);
        let lp = self.log_prob(&a[..c], ns)?;
        Ok(if lp == 0.0 { 0.0 } else { -lp / std::f64::consts::LN_2 })
    }

    /// Tokens that follow `prefix` in the trie and their visit counts (number of inserts
    /// that continued with that token), sorted by token.
    pub fn next_counts(&self, prefix: &[u32], ns: Option<&[u8]>) -> (Vec<u32>, Vec<u64>) {
        let guard = epoch::pin();
        let Some(root) = self.root_for(ns, &guard) else { return (Vec::new(), Vec::new()) };
        let (m, links) = self.trace(root, prefix, &guard);
        let mut acc: Vec<(u32, u64)> = Vec::new();
        if m == prefix.len() {
            match links.last() {
                Some((link, l)) if *l < link.tokens.len() => {
                    if self.page_size > 1 && *l < self.page_size {
                        // Ended inside a first page: several sibling edges may share it.
                        let parent = if links.len() >= 2 { &*links[links.len() - 2].0.node } else { root };
                        let seg = &prefix[m - l..m];
                        children::for_each(&parent.children, &guard, |e| {
                            // SAFETY: `e` comes from a table loaded under `guard`; links are freed only through the collector
                            // (`retire_link`), so the link outlives `guard`.
                            let lk = unsafe { &*e.link };
                            if lk.tokens.len() > seg.len() && lk.tokens.starts_with(seg) {
                                acc.push((lk.tokens.at(seg.len()), lk.node.visits.load(Relaxed)));
                            }
                        });
                    } else {
                        acc.push((link.tokens.at(*l), link.node.visits.load(Relaxed)));
                    }
                }
                last => {
                    let node = last.map(|(lk, _)| &*lk.node).unwrap_or(root);
                    children::for_each(&node.children, &guard, |e| {
                        // SAFETY: `e` comes from a table loaded under `guard`; links are freed only through the collector
                        // (`retire_link`), so the link outlives `guard`.
                        let link = unsafe { &*e.link };
                        acc.push((link.tokens.at(0), link.node.visits.load(Relaxed)));
                    });
                }
            }
        }
        acc.sort_unstable_by_key(|x| x.0);
        let mut toks: Vec<u32> = Vec::with_capacity(acc.len());
        let mut counts: Vec<u64> = Vec::with_capacity(acc.len());
        for (t, c) in acc {
            if toks.last() == Some(&t) {
                *counts.last_mut().unwrap() += c;
            } else {
                toks.push(t);
                counts.push(c);
            }
        }
        (toks, counts)
    }
}
