//! A sequence of insert / match / match_and_pin / unpin / evict / next_counts operations on
//! one `seqkv_trie::Trie`, decoded from the input, checked after every step against a
//! reference model: per namespace, a prefix-closed map from stored token path to its value.
//!
//! Checked: matches return the longest stored page-aligned prefix and its values; insert
//! returns the number of new tokens; `len()` equals the model's size and never exceeds
//! `max_tokens`; pinned paths survive every eviction; unpinning an unpinned node fails;
//! `next_counts` lists exactly the stored continuations.
#![no_main]
use std::collections::{BTreeMap, HashSet};

use libfuzzer_sys::fuzz_target;
use seqkv_trie::{EvictPolicy, NodeRef, Trie, TrieConfig};

const NAMESPACES: [Option<&[u8]>; 3] = [None, Some(b"tenant-a"), Some(b"tenant-b")];

struct Bytes<'a>(&'a [u8]);
impl Bytes<'_> {
    fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
}

/// Reference: namespace index -> (path -> value), prefix-closed.
type Model = Vec<BTreeMap<Vec<u32>, u64>>;

fn expected_match(model: &BTreeMap<Vec<u32>, u64>, key: &[u32], ps: usize) -> (usize, Vec<u64>) {
    let key = &key[..key.len() / ps * ps];
    let mut l = 0;
    while l < key.len() && model.contains_key(&key[..l + 1]) {
        l += 1;
    }
    let l = l / ps * ps;
    (l, (1..=l).map(|i| model[&key[..i]]).collect())
}

fn remove_values(model: &mut Model, freed: &[u64]) {
    let freed: HashSet<u64> = freed.iter().copied().collect();
    for m in model.iter_mut() {
        m.retain(|_, v| !freed.contains(v));
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let (Some(cfg), Some(cap)) = (b.next(), b.next()) else { return };
    let ps = 1 + (cfg % 3) as usize;
    let max_tokens = if cap == 0 { None } else { Some(cap as u64 % 64 + ps as u64) };
    let policy = if cfg & 0x10 != 0 { EvictPolicy::Plt } else { EvictPolicy::Lru };
    let trie = Trie::new(TrieConfig { page_size: ps, max_tokens, policy }).unwrap();
    let mut model: Model = vec![BTreeMap::new(); NAMESPACES.len()];
    let mut pinned: Vec<(usize, Vec<u32>, NodeRef)> = Vec::new();
    let mut next_value = 1u64;

    while let Some(op) = b.next() {
        let nsi = (op >> 4) as usize % NAMESPACES.len();
        let ns = NAMESPACES[nsi];
        let len = b.next().unwrap_or(0) as usize % 12;
        // Small alphabet so that keys share prefixes often.
        let key: Vec<u32> = (0..len).map_while(|_| b.next()).map(|t| (t % 4) as u32).collect();
        match op % 6 {
            0 | 1 => {
                let values: Vec<u64> = (0..key.len() as u64).map(|i| next_value + i).collect();
                next_value += key.len() as u64;
                let before = trie.len();
                let r = trie.insert(&key, Some(&values), None, ns);
                let freed = trie.take_evicted();
                remove_values(&mut model, &freed);
                match r {
                    Ok(n) => {
                        let aligned = key.len() / ps * ps;
                        let m = &mut model[nsi];
                        let mut new = 0;
                        for i in 1..=aligned {
                            m.entry(key[..i].to_vec()).or_insert_with(|| {
                                new += 1;
                                values[i - 1]
                            });
                        }
                        assert_eq!(n, new, "insert reported {n} new tokens, model says {new}");
                    }
                    Err(seqkv_trie::TrieError::Capacity(_)) => {
                        assert!(max_tokens.is_some());
                        assert!(trie.len() <= before, "a failed insert stored tokens");
                    }
                    Err(e) => panic!("unexpected insert error {e:?}"),
                }
            }
            2 => {
                let mut vals = Vec::new();
                let m = trie.match_prefix(&key, ns, &mut vals);
                let (l, ev) = expected_match(&model[nsi], &key, ps);
                assert_eq!((m.length, &vals), (l, &ev), "match of {key:?} in ns {nsi}");
            }
            3 => {
                let mut vals = Vec::new();
                let m = trie.match_and_pin(&key, ns, &mut vals);
                let (l, ev) = expected_match(&model[nsi], &key, ps);
                assert_eq!((m.length, &vals), (l, &ev), "match_and_pin of {key:?} in ns {nsi}");
                pinned.push((nsi, key[..l].to_vec(), m.node));
            }
            4 => {
                if let Some((_, _, node)) = (!pinned.is_empty()).then(|| pinned.remove(len % pinned.len())) {
                    trie.unpin(&node).expect("unpin of a pinned node");
                    let still = pinned.iter().any(|(_, _, n)| n.id() == node.id() && n.trie_id() == node.trie_id());
                    if !still && !node.is_root() && node.id() != u64::MAX {
                        assert!(trie.unpin(&node).is_err(), "double unpin accepted");
                    }
                } else {
                    let policy = if len % 2 == 0 { EvictPolicy::Lru } else { EvictPolicy::Plt };
                    let freed = trie.evict(len as u64 + 1, policy);
                    let unique: HashSet<u64> = freed.iter().copied().collect();
                    assert_eq!(unique.len(), freed.len(), "evict returned a value twice");
                    remove_values(&mut model, &freed);
                }
            }
            _ => {
                let (toks, counts) = trie.next_counts(&key, ns);
                let m = &model[nsi];
                let mut want: Vec<u32> = if key.is_empty() || m.contains_key(&key) {
                    m.keys().filter(|k| k.len() == key.len() + 1 && k.starts_with(&key)).map(|k| k[key.len()]).collect()
                } else {
                    Vec::new()
                };
                want.sort_unstable();
                want.dedup();
                assert_eq!(toks, want, "next_counts of {key:?} in ns {nsi}");
                assert!(counts.iter().all(|&c| c > 0));
            }
        }
        // Global invariants after every step.
        let total: usize = model.iter().map(|m| m.len()).sum();
        assert_eq!(trie.len(), total as u64, "len() disagrees with the model");
        if let Some(mt) = max_tokens {
            assert!(trie.len() <= mt, "len {} above max_tokens {mt}", trie.len());
        }
        for (nsi, path, _) in &pinned {
            assert!(path.is_empty() || model[*nsi].contains_key(path), "pinned path {path:?} was evicted");
        }
    }
    for (_, _, node) in pinned {
        trie.unpin(&node).unwrap();
    }
});
