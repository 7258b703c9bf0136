//! Single-threaded semantics of the trie.

use seqkv_trie::{EvictPolicy, Trie, TrieConfig, TrieError};

fn trie() -> Trie {
    Trie::new(TrieConfig::default()).unwrap()
}

fn m(t: &Trie, k: &[u32]) -> (usize, Vec<u64>) {
    let mut v = Vec::new();
    let r = t.match_prefix(k, None, &mut v);
    (r.length, v)
}

#[test]
fn insert_match_split() {
    let t = trie();
    assert_eq!(t.insert(&[1, 2, 3, 4], Some(&[10, 20, 30, 40]), None, None).unwrap(), 4);
    assert_eq!(t.insert(&[1, 2, 9], Some(&[11, 21, 91]), None, None).unwrap(), 1);
    assert_eq!(t.len(), 5);
    assert_eq!(m(&t, &[1, 2, 3, 4, 5]), (4, vec![10, 20, 30, 40]));
    assert_eq!(m(&t, &[1, 2, 9]), (3, vec![10, 20, 91]));
    assert_eq!(m(&t, &[1, 2]), (2, vec![10, 20]));
    assert_eq!(m(&t, &[7]), (0, vec![]));
    // prefix of an existing key stores nothing new
    assert_eq!(t.insert(&[1, 2, 3], None, None, None).unwrap(), 0);
    assert_eq!(t.stats().nodes, 4); // [1,2] [3] [4] [9]
    let d = t.dump();
    assert_eq!(d.len(), 2);
}

#[test]
fn ids_above_16_bits_split_and_compare_exactly() {
    // Edges keep 16-bit ids when they fit: a wide edge split into a wide and a narrow part,
    // and ids that agree in their low 16 bits only, must all stay distinct.
    let t = trie();
    let big = 65536 + 7;
    t.insert(&[big, 1, 2, 3], Some(&[10, 11, 12, 13]), None, None).unwrap();
    t.insert(&[big, 1, 9], Some(&[10, 11, 90]), None, None).unwrap();
    assert_eq!(m(&t, &[7, 1, 2, 3]), (0, vec![]));
    assert_eq!(m(&t, &[big, 1, 2, 3]), (4, vec![10, 11, 12, 13]));
    assert_eq!(m(&t, &[big, 1, 9]), (3, vec![10, 11, 90]));
    assert_eq!(m(&t, &[big, 1, 2, 65536 + 3]), (3, vec![10, 11, 12]));
    assert_eq!(t.insert(&[big, 1, 2, u32::MAX], None, None, None).unwrap(), 1);
    assert_eq!(t.next_counts(&[big, 1, 2], None).0, vec![3, u32::MAX]);
    let r = Trie::restore(&t.snapshot()).unwrap();
    assert_eq!(r.dump(), t.dump());
    assert!(t.stats().bytes > 0);
}

#[test]
fn auto_values_unique() {
    let t = trie();
    t.insert(&[1, 2, 3], None, None, None).unwrap();
    t.insert(&[1, 5, 6], None, None, None).unwrap();
    let (_, a) = m(&t, &[1, 2, 3]);
    let (_, b) = m(&t, &[1, 5, 6]);
    assert_eq!(a[0], b[0]);
    let mut all: Vec<u64> = a.iter().chain(&b[1..]).copied().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 5);
}

#[test]
fn pages() {
    let t = Trie::new(TrieConfig { page_size: 4, ..Default::default() }).unwrap();
    assert_eq!(t.insert(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], None, None, None).unwrap(), 8);
    assert_eq!(t.len(), 8);
    // diverges at token 6 (inside the second page): match is cut to one page
    assert_eq!(m(&t, &[1, 2, 3, 4, 5, 0, 7, 8]).0, 4);
    assert_eq!(t.insert(&[1, 2, 3, 4, 5, 0, 7, 8], None, None, None).unwrap(), 4);
    // two siblings share the first token of their page
    assert_eq!(m(&t, &[1, 2, 3, 4, 5, 0, 7, 8]).0, 8);
    assert_eq!(m(&t, &[1, 2, 3, 4, 5, 6, 7, 8]).0, 8);
    assert_eq!(m(&t, &[1, 2, 3]).0, 0);
    let (toks, counts) = t.next_counts(&[1, 2, 3, 4, 5], None);
    assert_eq!(toks, vec![0, 6]);
    assert_eq!(counts, vec![1, 1]);
    for e in t.dump() {
        assert_eq!(e.tokens.len() % 4, 0);
    }
}

#[test]
fn namespaces_are_separate() {
    let t = trie();
    t.insert(&[1, 2, 3], None, None, Some(b"a")).unwrap();
    let mut v = Vec::new();
    assert_eq!(t.match_prefix(&[1, 2, 3], Some(b"b"), &mut v).length, 0);
    assert_eq!(t.match_prefix(&[1, 2, 3], None, &mut v).length, 0);
    assert_eq!(t.match_prefix(&[1, 2, 3], Some(b"a"), &mut v).length, 3);
    assert!(t.next_counts(&[1], Some(b"b")).0.is_empty());
    assert_eq!(t.next_counts(&[1], Some(b"a")).0, vec![2]);
    assert_eq!(t.stats().namespaces, 1);
}

#[test]
fn pins_block_eviction() {
    let t = trie();
    t.insert(&[1, 2, 3], Some(&[1, 2, 3]), None, None).unwrap();
    t.insert(&[1, 2, 4], Some(&[1, 2, 4]), None, None).unwrap();
    let mut v = Vec::new();
    let r = t.match_prefix(&[1, 2, 3], None, &mut v);
    t.pin(&r.node).unwrap();
    let freed = t.evict(100, EvictPolicy::Lru);
    assert_eq!(freed, vec![4]);
    assert_eq!(t.len(), 3);
    t.unpin(&r.node).unwrap();
    assert!(matches!(t.unpin(&r.node), Err(TrieError::InvalidInput(_))));
    let mut freed = t.evict(100, EvictPolicy::Lru);
    freed.sort();
    assert_eq!(freed, vec![1, 2, 3]);
    assert!(r.node.is_dead());
    assert!(t.pin(&r.node).is_err());
    assert!(t.is_empty());
}

#[test]
fn lru_order() {
    let t = trie();
    t.insert(&[1, 1], Some(&[1, 1]), None, None).unwrap();
    t.insert(&[2, 2], Some(&[2, 2]), None, None).unwrap();
    t.insert(&[3, 3], Some(&[3, 3]), None, None).unwrap();
    m(&t, &[1, 1]);
    assert_eq!(t.evict(1, EvictPolicy::Lru), vec![2, 2]);
    assert_eq!(t.evict(1, EvictPolicy::Lru), vec![3, 3]);
}

#[test]
fn plt_order_uses_counts_and_logprobs() {
    let t = trie();
    t.insert(&[1, 1], Some(&[1, 1]), None, None).unwrap();
    t.insert(&[1, 1], None, None, None).unwrap();
    t.insert(&[2, 2], Some(&[2, 2]), None, None).unwrap();
    m(&t, &[2, 2]); // hits: 1; visits 1
    t.insert(&[3, 3], Some(&[3, 3]), Some(&[-0.1, -0.1]), None).unwrap();
    t.insert(&[4, 4], Some(&[4, 4]), Some(&[-5.0, -5.0]), None).unwrap();
    // scores: [1,1]: 2, [2,2]: 2, [3,3]: 1 + e^-0.1, [4,4]: 1 + e^-5
    assert_eq!(t.evict(1, EvictPolicy::Plt), vec![4, 4]);
    assert_eq!(t.evict(1, EvictPolicy::Plt), vec![3, 3]);
}

#[test]
fn capacity() {
    let t = Trie::new(TrieConfig { max_tokens: Some(6), ..Default::default() }).unwrap();
    t.insert(&[1, 2, 3], Some(&[1, 2, 3]), None, None).unwrap();
    t.insert(&[4, 5, 6], Some(&[4, 5, 6]), None, None).unwrap();
    let mut v = Vec::new();
    let a = t.match_and_pin(&[1, 2, 3], None, &mut v);
    // must evict [4,5,6] (unpinned) to fit
    assert_eq!(t.insert(&[7, 8], Some(&[7, 8]), None, None).unwrap(), 2);
    assert_eq!(t.take_evicted(), vec![4, 5, 6]);
    let b = t.match_and_pin(&[7, 8], None, &mut v);
    // everything pinned: fails, nothing lost
    let before = t.dump();
    assert!(matches!(t.insert(&[9, 9], None, None, None), Err(TrieError::Capacity(_))));
    assert_eq!(t.dump(), before);
    assert!(t.take_evicted().is_empty());
    // too big ever
    assert!(matches!(t.insert(&[1, 2, 3, 4, 5, 6, 7, 8], None, None, None), Err(TrieError::Capacity(_))));
    t.unpin(&b.node).unwrap();
    // extending a pinned path evicts the other leaf, never the path itself
    assert_eq!(t.insert(&[1, 2, 3, 4, 4], None, None, None).unwrap(), 2);
    assert_eq!(t.take_evicted(), vec![7, 8]);
    t.unpin(&a.node).unwrap();
    assert_eq!(t.len(), 5);
}

#[test]
fn logprobs_and_dt() {
    let t = trie();
    let ln2 = std::f32::consts::LN_2;
    t.insert(&[1, 2, 3], None, Some(&[-ln2, -ln2, -2.0 * ln2]), None).unwrap();
    t.insert(&[1, 2, 4], None, None, None).unwrap();
    assert!((t.d_t(&[1, 2, 3], &[1, 2, 4], None).unwrap() - 2.0).abs() < 1e-6);
    assert!((t.d_t(&[1, 2, 3], &[1, 2, 3, 7], None).unwrap() - 4.0).abs() < 1e-6);
    assert_eq!(t.d_t(&[5], &[6], None).unwrap(), 0.0);
    assert!(matches!(t.d_t(&[1, 2, 4], &[1, 2, 4], None), Err(TrieError::InvalidInput(_))));
    assert!(matches!(t.log_prob(&[9, 9], None), Err(TrieError::InvalidInput(_))));
    // upgrade: giving log-probs later fills them in
    t.insert(&[1, 2, 4], None, Some(&[-0.5, -0.5, -0.5]), None).unwrap();
    assert!((t.log_prob(&[1, 2, 4], None).unwrap() - (-(2.0 * ln2 as f64) - 0.5)).abs() < 1e-6);
    assert!(t.insert(&[1], None, Some(&[0.5]), None).is_err());
    assert!(t.insert(&[1], None, Some(&[f32::NAN]), None).is_err());
}

#[test]
fn next_counts_visits() {
    let t = trie();
    for k in [&[1u32, 2, 3][..], &[1, 2, 3], &[1, 2, 4], &[1, 5]] {
        t.insert(k, None, None, None).unwrap();
    }
    assert_eq!(t.next_counts(&[], None), (vec![1], vec![4]));
    assert_eq!(t.next_counts(&[1], None), (vec![2, 5], vec![3, 1]));
    assert_eq!(t.next_counts(&[1, 2], None), (vec![3, 4], vec![2, 1]));
    assert_eq!(t.next_counts(&[1, 2, 3], None), (vec![], vec![]));
    assert_eq!(t.next_counts(&[8], None), (vec![], vec![]));
}

#[test]
fn big_fanout() {
    let t = trie();
    for i in 0..5000u32 {
        t.insert(&[i * 7919 % 49152, i, 1], None, None, None).unwrap();
    }
    for i in 0..5000u32 {
        assert_eq!(m(&t, &[i * 7919 % 49152, i, 1, 2]).0, 3);
    }
    let freed = t.evict(3 * 4000, EvictPolicy::Lru);
    assert_eq!(freed.len(), 12000);
    assert_eq!(t.len(), 3000);
    assert_eq!(t.dump().len(), 1000);
}

#[test]
fn snapshot_roundtrip_and_corruption() {
    let t = Trie::new(TrieConfig { page_size: 2, max_tokens: Some(1000), ..Default::default() }).unwrap();
    t.insert(&[1, 2, 3, 4], None, Some(&[-0.1, -0.2, -0.3, -0.4]), None).unwrap();
    t.insert(&[1, 2, 5, 6, 7, 8], None, None, Some(b"x")).unwrap();
    t.insert(&[1, 2, 5, 6], None, None, None).unwrap();
    let s = t.snapshot();
    let r = Trie::restore(&s).unwrap();
    assert_eq!(r.dump(), t.dump());
    assert_eq!(r.len(), t.len());
    assert_eq!(r.page_size(), 2);
    assert_eq!(r.max_tokens(), Some(1000));
    assert_eq!(r.snapshot(), s);
    assert_eq!(r.next_counts(&[1, 2], None), t.next_counts(&[1, 2], None));
    // every single-bit flip and every truncation is caught
    for i in 0..s.len() {
        for bit in [0u8, 3, 7] {
            let mut c = s.clone();
            c[i] ^= 1 << bit;
            assert!(Trie::restore(&c).is_err(), "flip at {i}");
        }
    }
    for n in 0..s.len() {
        assert!(Trie::restore(&s[..n]).is_err());
    }
    let mut v = s.clone();
    v[4] = 9;
    assert!(matches!(Trie::restore(&v), Err(TrieError::FormatVersion(_))));
}

#[test]
fn foreign_node_refused() {
    let a = trie();
    let b = trie();
    a.insert(&[1], None, None, None).unwrap();
    let mut v = Vec::new();
    let r = a.match_prefix(&[1], None, &mut v);
    assert!(b.pin(&r.node).is_err());
    assert!(Trie::new(TrieConfig { page_size: 0, ..Default::default() }).is_err());
}

#[test]
fn evicted_values_wait_in_a_bounded_queue() {
    let t = Trie::new(TrieConfig { max_tokens: Some(4), evicted_queue_limit: 4, ..Default::default() }).unwrap();
    for k in 0..4u32 {
        t.insert(&[10 * k, 10 * k + 1], None, None, None).unwrap();
    }
    // two evictions of two tokens each filled the queue: the next insert that must evict fails,
    // evicting nothing, until the caller drains it
    assert_eq!(t.stats().pending_evicted, 4);
    let before = t.dump();
    assert!(matches!(t.insert(&[90, 91], None, None, None), Err(TrieError::Capacity(m)) if m.contains("take_evicted")));
    assert_eq!(t.dump(), before);
    assert_eq!(t.take_evicted().len(), 4);
    assert_eq!(t.insert(&[90, 91], None, None, None).unwrap(), 2);
    // a trie told not to keep them never queues and never refuses for it
    let t = Trie::new(TrieConfig { max_tokens: Some(4), evicted_queue_limit: 0, ..Default::default() }).unwrap();
    for k in 0..100u32 {
        t.insert(&[2 * k, 2 * k + 1], None, None, None).unwrap();
    }
    assert!(t.take_evicted().is_empty());
    assert_eq!(t.stats().pending_evicted, 0);
}
