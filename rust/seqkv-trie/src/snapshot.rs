//! Serialised trie contents (for persistence): `Trie::snapshot` / `Trie::restore`.
//!
//! Little-endian layout, version 1:
//!
//! ```text
//! "SQKT" | version u16 | flags u16 (0) | page_size u32 | max_tokens u64 (u64::MAX = none)
//! | policy u8 | next_value u64 | n_namespaces u32
//! per namespace: named u8 (0 = default, 1 = named) | key_len u32 | key bytes
//!                | root: n_children u32 | then each child, depth first:
//!   edge_len u32 | has_logprobs u8 | n_children u32 | visits u64 | hits u64
//!   | tokens u32[edge_len] | values u64[edge_len] | logprobs f32[edge_len] (if any)
//! crc32c u32 of everything before it
//! ```
//!
//! Pins and access times are not saved. Restore validates every field: magic,
//! version, checksum, lengths against the bytes left, non-empty page-aligned
//! edges, distinct first pages among siblings, log-probs <= 0 and not NaN,
//! token count within `max_tokens`, no trailing bytes.

use crate::trie::{Node, Trie};
use crate::{EvictPolicy, TrieConfig, TrieError};
use seqkv_coder::crc32c::crc32c;
use std::sync::atomic::Ordering::Relaxed;

const MAGIC: &[u8; 4] = b"SQKT";
const VERSION: u16 = 1;

fn corrupt(msg: impl Into<String>) -> TrieError {
    TrieError::Corrupt(format!("trie snapshot: {}", msg.into()))
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], TrieError> {
        if self.b.len() - self.at < n {
            return Err(corrupt(format!("truncated while reading {what}")));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self, w: &str) -> Result<u8, TrieError> {
        Ok(self.take(1, w)?[0])
    }
    fn u16(&mut self, w: &str) -> Result<u16, TrieError> {
        Ok(u16::from_le_bytes(self.take(2, w)?.try_into().unwrap()))
    }
    fn u32(&mut self, w: &str) -> Result<u32, TrieError> {
        Ok(u32::from_le_bytes(self.take(4, w)?.try_into().unwrap()))
    }
    fn u64(&mut self, w: &str) -> Result<u64, TrieError> {
        Ok(u64::from_le_bytes(self.take(8, w)?.try_into().unwrap()))
    }
    fn left(&self) -> usize {
        self.b.len() - self.at
    }
}

impl Trie {
    /// Serialises the stored sequences, values, log-probs and visit counts. Each node is
    /// read consistently; inserts running concurrently may or may not be included.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.len() as usize * 12);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(self.page_size as u32).to_le_bytes());
        out.extend_from_slice(&self.max_tokens.unwrap_or(u64::MAX).to_le_bytes());
        out.push(match self.policy {
            EvictPolicy::Lru => 0,
            EvictPolicy::Plt => 1,
        });
        out.extend_from_slice(&self.next_value.load(Relaxed).to_le_bytes());
        self.with_roots(|roots, guard| {
            out.extend_from_slice(&(roots.len() as u32).to_le_bytes());
            for (ns, root) in roots {
                match ns {
                    None => {
                        out.push(0);
                        out.extend_from_slice(&0u32.to_le_bytes());
                    }
                    Some(k) => {
                        out.push(1);
                        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                        out.extend_from_slice(k);
                    }
                }
                let kids = |n: &Node| {
                    let mut v = Vec::new();
                    crate::children::for_each(&n.children, guard, |e| v.push(e.link));
                    // SAFETY: both come from a table loaded under `guard`; links are freed only through the collector.
                    v.sort_by(|a, b| unsafe { (**a).tokens.cmp_ids(&(**b).tokens) });
                    v
                };
                let top = kids(root);
                out.extend_from_slice(&(top.len() as u32).to_le_bytes());
                let mut stack: Vec<_> = top.into_iter().rev().collect();
                while let Some(lp) = stack.pop() {
                    // SAFETY: `lp` comes from a table loaded under `guard` (`kids`); links are freed only through the
                    // collector.
                    let link = unsafe { &*lp };
                    let ch = kids(&link.node);
                    out.extend_from_slice(&(link.tokens.len() as u32).to_le_bytes());
                    out.push(link.logprobs.is_some() as u8);
                    out.extend_from_slice(&(ch.len() as u32).to_le_bytes());
                    out.extend_from_slice(&link.node.visits.load(Relaxed).to_le_bytes());
                    out.extend_from_slice(&link.node.hits.load(Relaxed).to_le_bytes());
                    for t in link.tokens.iter() {
                        out.extend_from_slice(&t.to_le_bytes());
                    }
                    for v in link.values.iter() {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                    if let Some(lp) = &link.logprobs {
                        for x in lp.iter() {
                            out.extend_from_slice(&x.to_le_bytes());
                        }
                    }
                    stack.extend(ch.into_iter().rev());
                }
            }
        });
        let crc = crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Rebuilds a trie from [`Trie::snapshot`] bytes. `Corrupt` on any inconsistency,
    /// `FormatVersion` on an unknown version.
    pub fn restore(data: &[u8]) -> Result<Trie, TrieError> {
        if data.len() < 4 + 2 + 2 + 4 + 8 + 1 + 8 + 4 + 4 {
            return Err(corrupt("too short"));
        }
        if &data[..4] != MAGIC {
            return Err(corrupt("bad magic (not a seqkv trie snapshot)"));
        }
        let version = u16::from_le_bytes([data[4], data[5]]);
        if version != VERSION {
            return Err(TrieError::FormatVersion(format!(
                "trie snapshot format version {version}; this build reads version {VERSION}"
            )));
        }
        let (body, tail) = data.split_at(data.len() - 4);
        let stored_crc = u32::from_le_bytes(tail.try_into().unwrap());
        if crc32c(body) != stored_crc {
            return Err(corrupt("checksum mismatch"));
        }
        let mut r = Reader { b: body, at: 6 };
        let flags = r.u16("flags")?;
        if flags != 0 {
            return Err(corrupt(format!("unknown flags {flags:#x}")));
        }
        let page_size = r.u32("page_size")? as usize;
        let max = r.u64("max_tokens")?;
        let policy = match r.u8("policy")? {
            0 => EvictPolicy::Lru,
            1 => EvictPolicy::Plt,
            p => return Err(corrupt(format!("unknown policy {p}"))),
        };
        let next_value = r.u64("next_value")?;
        let trie = Trie::new(TrieConfig {
            page_size,
            max_tokens: if max == u64::MAX { None } else { Some(max) },
            policy,
            ..TrieConfig::default()
        })
        .map_err(|e| corrupt(e.to_string()))?;
        trie.next_value.store(next_value, Relaxed);
        let n_ns = r.u32("namespace count")? as usize;
        if n_ns == 0 || n_ns > r.left() / 9 + 1 {
            return Err(corrupt("bad namespace count"));
        }
        let mut seen: std::collections::HashSet<Option<Vec<u8>>> = std::collections::HashSet::new();
        let guard = crossbeam_epoch::pin();
        for _ in 0..n_ns {
            let named = r.u8("namespace tag")?;
            let klen = r.u32("namespace key length")? as usize;
            let key: Option<Vec<u8>> = match named {
                0 if klen == 0 => None,
                1 => Some(r.take(klen, "namespace key")?.to_vec()),
                _ => return Err(corrupt("bad namespace tag")),
            };
            if !seen.insert(key.clone()) {
                return Err(corrupt("duplicate namespace"));
            }
            let root = trie.restore_root(key.as_deref(), &guard);
            let top = r.u32("child count")? as usize;
            // (node, children still to read)
            let mut stack: Vec<(&Node, usize)> = vec![(root, top)];
            while let Some((parent, left)) = stack.pop() {
                if left == 0 {
                    continue;
                }
                stack.push((parent, left - 1));
                let k = r.u32("edge length")? as usize;
                let has_lp = r.u8("log-prob flag")?;
                let n_children = r.u32("child count")? as usize;
                let visits = r.u64("visits")?;
                let hits = r.u64("hits")?;
                if k == 0 || !k.is_multiple_of(page_size) {
                    return Err(corrupt(format!("edge length {k} is not a positive multiple of page_size {page_size}")));
                }
                if has_lp > 1 {
                    return Err(corrupt("bad log-prob flag"));
                }
                let per = 12 + 4 * has_lp as usize;
                if r.left() / per < k {
                    return Err(corrupt("truncated edge"));
                }
                if n_children > r.left() / 25 {
                    return Err(corrupt("child count exceeds the data left"));
                }
                let tokens: Vec<u32> =
                    r.take(4 * k, "tokens")?.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
                let values: Vec<u64> =
                    r.take(8 * k, "values")?.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
                let logprobs: Option<Box<[f32]>> = if has_lp == 1 {
                    let v: Box<[f32]> =
                        r.take(4 * k, "logprobs")?.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
                    if v.iter().any(|x| x.is_nan() || *x > 0.0) {
                        return Err(corrupt("log-prob is NaN or positive"));
                    }
                    Some(v)
                } else {
                    None
                };
                if let Some(m) = trie.max_tokens {
                    if trie.len() + k as u64 > m {
                        return Err(corrupt("more tokens than max_tokens"));
                    }
                }
                let Some(child) = trie.restore_child(parent, &tokens, &values, logprobs, visits, hits, &guard) else {
                    return Err(corrupt("two sibling edges start with the same page"));
                };
                stack.push((child, n_children));
            }
        }
        if r.left() != 0 {
            return Err(corrupt(format!("{} trailing bytes", r.left())));
        }
        drop(guard);
        Ok(trie)
    }
}
