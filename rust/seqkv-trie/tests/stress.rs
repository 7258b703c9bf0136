//! 16 threads of mixed insert / match / pin / evict against a reference record:
//! every match returns values inserted for exactly that prefix, no pinned value is
//! ever freed, no value is freed twice, and at the end the trie holds exactly the
//! values stored and not freed.

use seqkv_trie::{EvictPolicy, Trie, TrieConfig, TrieError};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const THREADS: u64 = 16;
const SHARDS: usize = 64;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn prefix_hashes(key: &[u32]) -> Vec<u64> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    key.iter()
        .map(|&t| {
            for b in t.to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
            }
            h
        })
        .collect()
}

struct Reference {
    /// value -> (hash of the prefix it was inserted for, position)
    origin: Vec<Mutex<HashMap<u64, (u64, usize)>>>,
    stored: Vec<Mutex<HashSet<u64>>>,
    freed: Vec<Mutex<HashSet<u64>>>,
    pinned: Vec<Mutex<HashMap<u64, u32>>>,
    failures: AtomicU64,
}

fn shard(v: u64) -> usize {
    (v.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS
}

impl Reference {
    fn new() -> Self {
        fn mk<T: Default>() -> Vec<Mutex<T>> {
            (0..SHARDS).map(|_| Mutex::new(T::default())).collect()
        }
        Reference { origin: mk(), stored: mk(), freed: mk(), pinned: mk(), failures: AtomicU64::new(0) }
    }
    fn fail(&self, msg: String) {
        eprintln!("FAILURE: {msg}");
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
    fn check_match(&self, key: &[u32], len: usize, values: &[u64]) {
        if values.len() != len {
            self.fail(format!("{} values for match length {len}", values.len()));
            return;
        }
        let h = prefix_hashes(&key[..len]);
        for (i, v) in values.iter().enumerate() {
            match self.origin[shard(*v)].lock().unwrap().get(v) {
                Some(&(hh, pos)) if hh == h[i] && pos == i => {}
                other => self.fail(format!("value {v} at {i} has origin {other:?}")),
            }
        }
    }
    fn record_freed(&self, vals: &[u64]) {
        for v in vals {
            if !self.freed[shard(*v)].lock().unwrap().insert(*v) {
                self.fail(format!("value {v} freed twice"));
            }
            if self.pinned[shard(*v)].lock().unwrap().get(v).copied().unwrap_or(0) > 0 {
                self.fail(format!("pinned value {v} freed"));
            }
        }
    }
    fn any_freed(&self, vals: &[u64]) -> bool {
        vals.iter().any(|v| self.freed[shard(*v)].lock().unwrap().contains(v))
    }
}

fn run(config: TrieConfig, ops: u64, seed: u64) {
    let trie = Arc::new(Trie::new(config).unwrap());
    let reference = Arc::new(Reference::new());
    let prompts: Vec<Vec<u32>> = {
        let mut r = Rng(seed);
        (0..4).map(|_| (0..(8 + r.below(48))).map(|_| r.below(6) as u32).collect()).collect()
    };
    let handles: Vec<_> = (0..THREADS)
        .map(|tid| {
            let trie = trie.clone();
            let reference = reference.clone();
            let prompts = prompts.clone();
            std::thread::spawn(move || {
                let mut r = Rng(seed ^ (tid + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let mut counter = 0u64;
                let mut buf = Vec::new();
                let ns_keys: [Option<&[u8]>; 2] = [None, Some(b"tenant")];
                for _ in 0..ops {
                    let mut key = prompts[r.below(4) as usize].clone();
                    let tail = r.below(24) as usize;
                    key.extend((0..tail).map(|_| r.below(4) as u32));
                    let cut = r.below(key.len() as u64 + 1) as usize;
                    let ns = ns_keys[(r.below(8) == 0) as usize];
                    match r.below(100) {
                        0..=39 => {
                            let key = &key[..cut.max(1)];
                            let vals: Vec<u64> = (0..key.len())
                                .map(|_| {
                                    counter += 1;
                                    (tid << 40) | counter
                                })
                                .collect();
                            // the namespace is part of the origin: salt the hashes
                            let mut salted = key.to_vec();
                            if ns.is_some() {
                                salted.insert(0, u32::MAX);
                            }
                            let h = prefix_hashes(&salted);
                            let off = salted.len() - key.len();
                            for (i, v) in vals.iter().enumerate() {
                                reference.origin[shard(*v)].lock().unwrap().insert(*v, (h[off + i], i));
                            }
                            match trie.insert(key, Some(&vals), None, ns) {
                                Ok(k) => {
                                    let n = key.len() / trie.page_size() * trie.page_size();
                                    for v in &vals[n - k..n] {
                                        reference.stored[shard(*v)].lock().unwrap().insert(*v);
                                    }
                                }
                                Err(TrieError::Capacity(_)) => {}
                                Err(e) => reference.fail(format!("insert: {e}")),
                            }
                        }
                        40..=74 => {
                            buf.clear();
                            let m = trie.match_prefix(&key, ns, &mut buf);
                            check_salted(&reference, &key, ns.is_some(), m.length, &buf);
                        }
                        75..=89 => {
                            buf.clear();
                            let m = trie.match_and_pin(&key, ns, &mut buf);
                            check_salted(&reference, &key, ns.is_some(), m.length, &buf);
                            for v in &buf {
                                *reference.pinned[shard(*v)].lock().unwrap().entry(*v).or_default() += 1;
                            }
                            if reference.any_freed(&buf) {
                                reference.fail("pinned match returned freed values".into());
                            }
                            for _ in 0..r.below(50) {
                                std::hint::spin_loop();
                            }
                            if reference.any_freed(&buf) {
                                reference.fail("value freed while pinned".into());
                            }
                            for v in &buf {
                                *reference.pinned[shard(*v)].lock().unwrap().get_mut(v).unwrap() -= 1;
                            }
                            trie.unpin(&m.node).unwrap();
                        }
                        90..=97 => {
                            let policy = if r.below(2) == 0 { EvictPolicy::Lru } else { EvictPolicy::Plt };
                            let freed = trie.evict(1 + r.below(64), policy);
                            reference.record_freed(&freed);
                        }
                        _ => {
                            let freed = trie.take_evicted();
                            reference.record_freed(&freed);
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    reference.record_freed(&trie.take_evicted());
    assert_eq!(reference.failures.load(Ordering::Relaxed), 0);

    // Final state: live = stored - freed, exactly what the trie holds.
    let stored: HashSet<u64> = reference.stored.iter().flat_map(|s| s.lock().unwrap().clone()).collect();
    let freed: HashSet<u64> = reference.freed.iter().flat_map(|s| s.lock().unwrap().clone()).collect();
    assert!(freed.is_subset(&stored), "freed a value that was never stored");
    let mut live: HashSet<u64> = HashSet::new();
    for e in trie.dump() {
        let mut salted = e.tokens.clone();
        if e.namespace.is_some() {
            salted.insert(0, u32::MAX);
        }
        let h = prefix_hashes(&salted);
        let off = salted.len() - e.tokens.len();
        for (i, v) in e.values.iter().enumerate() {
            assert_eq!(reference.origin[shard(*v)].lock().unwrap().get(v), Some(&(h[off + i], i)));
            live.insert(*v);
        }
    }
    let expect: HashSet<u64> = stored.difference(&freed).copied().collect();
    assert_eq!(live, expect);
    assert_eq!(trie.len(), live.len() as u64);
    let s = trie.stats();
    assert_eq!(s.pins, 0);
    if let Some(m) = trie.max_tokens() {
        assert!(trie.len() <= m);
    }
    eprintln!("stress: {} stored, {} freed, {} live, stats {:?}", stored.len(), freed.len(), live.len(), s);
}

fn check_salted(reference: &Reference, key: &[u32], salted: bool, len: usize, values: &[u64]) {
    if !salted {
        reference.check_match(key, len, values);
        return;
    }
    // origins of namespaced values were recorded with a salt token in front
    let mut k = vec![u32::MAX];
    k.extend_from_slice(&key[..len]);
    let h = prefix_hashes(&k);
    if values.len() != len {
        reference.fail("length mismatch".into());
        return;
    }
    for (i, v) in values.iter().enumerate() {
        match reference.origin[shard(*v)].lock().unwrap().get(v) {
            Some(&(hh, pos)) if hh == h[i + 1] && pos == i => {}
            other => reference.fail(format!("namespaced value {v} at {i} has origin {other:?}")),
        }
    }
}

#[test]
fn stress_unbounded() {
    run(TrieConfig::default(), 4000, 1);
}

#[test]
fn stress_bounded_lru() {
    run(TrieConfig { max_tokens: Some(600), ..Default::default() }, 4000, 2);
}

#[test]
fn stress_bounded_plt_pages() {
    run(TrieConfig { page_size: 2, max_tokens: Some(400), policy: EvictPolicy::Plt, ..Default::default() }, 4000, 3);
}
