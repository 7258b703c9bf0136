//! The checks behind the cargo-fuzz targets, one function per target, so that the same code runs
//! under libFuzzer (`fuzz_targets/*.rs`, `make fuzz`) and as a plain test that replays every kept
//! input (`tests/replay.rs`: `corpus/<target>/` and `regressions/<target>/`, the crashes found).
//! Each function panics exactly when the property it checks is broken.

use seqkv_coder::container::{pack, unpack};
use seqkv_coder::{adaptive, table};
use seqkv_ppm::{decode, encode, Model, Params};
use seqkv_trie::{EvictPolicy, NodeRef, Trie, TrieConfig};
use std::collections::{BTreeMap, HashSet};

/// `seqkv_coder::container::unpack` on arbitrary bytes: never panics; whatever it accepts
/// packs back into a container that unpacks to the same value.
pub fn container(data: &[u8]) {
    if let Ok(c) = unpack(data) {
        let again = pack(&c.header, &c.blocks).expect("an unpacked container must pack");
        let c2 = unpack(&again).expect("a packed container must unpack");
        assert_eq!(c, c2);
    }
}

/// A static table of `len` symbols (`len <= 2^precision`), every frequency >= 1, summing to
/// `2^precision`, shaped by `skew`: the spare `2^precision - len` counts are shared in proportion
/// to the weights `(i * skew) % 7`, the rounding remainder going to symbol 0.
///
/// (The first version gave each symbol `1 + weight` and symbol 0 the rest, which underflowed when
/// the weights alone exceeded `2^precision`: `regressions/range_decoder/crash-9ae4…`.)
fn make_table(len: usize, precision: u32, skew: u8) -> Vec<u32> {
    let total = 1u64 << precision;
    let spare = total - len as u64;
    let w: Vec<u64> = (0..len).map(|i| (i as u64 * skew as u64) % 7).collect();
    let wsum: u64 = w.iter().sum();
    let mut f: Vec<u32> = w.iter().map(|&x| (1 + if wsum == 0 { 0 } else { x * spare / wsum }) as u32).collect();
    let sum: u64 = f.iter().map(|&x| x as u64).sum();
    f[0] += (total - sum) as u32;
    f
}

/// The range decoder on arbitrary bytes under a few tables (static, per-row, adaptive):
/// never panics or hangs; whatever decodes re-encodes and decodes to the same symbols.
pub fn range_decoder(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let (sel, skew, n, bytes) = (data[0], data[1], data[2] as usize * 8, &data[3..]);
    match sel % 4 {
        0 | 1 => {
            let (len, precision) = [(2usize, 1u32), (5, 12), (256, 16), (1000, 24)][(sel / 4 % 4) as usize];
            let freqs = make_table(len, precision, skew);
            if let Ok(s) = table::decode_static(bytes, &freqs, n, precision) {
                let enc = table::encode_static(&s, &freqs, precision).unwrap();
                assert_eq!(table::decode_static(&enc, &freqs, n, precision).unwrap(), s);
            }
        }
        2 => {
            let (v, precision) = (3usize, 8u32 + (sel as u32 / 4) % 17);
            let rows = n.min(256);
            let freqs: Vec<u32> =
                (0..rows).flat_map(|r| make_table(v, precision, skew.wrapping_add(r as u8))).collect();
            if let Ok(s) = table::decode_rows(bytes, &freqs, v, precision) {
                let enc = table::encode_rows(&s, &freqs, v, precision).unwrap();
                assert_eq!(table::decode_rows(&enc, &freqs, v, precision).unwrap(), s);
            }
        }
        _ => {
            let alphabet = 1 + skew as usize;
            let (inc, limit) = (1 + (sel as u32 / 4) % 32, 1u32 << 16);
            if let Ok(s) = adaptive::decode_symbols(bytes, alphabet, n, inc, limit) {
                let enc = adaptive::encode_symbols(&s, alphabet, inc, limit).unwrap();
                assert_eq!(adaptive::decode_symbols(&enc, alphabet, n, inc, limit).unwrap(), s);
            }
        }
    }
}

/// `seqkv_ppm::decode` on arbitrary payloads (small vocabularies, orders 0..=4, with and
/// without a primer): never panics or hangs; decoded tokens are in the vocabulary and
/// re-encode to a payload that decodes to the same tokens.
pub fn ppm_decode(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let vocab = [2u32, 17, 300, 50_000][(data[0] % 4) as usize];
    let order = data[1] % 5;
    let n = (u16::from_le_bytes([data[2], data[3]]) % 2048) as usize;
    let payload = &data[4..];
    let mut model = Model::with_params(&Params::new(vocab, order).unwrap()).unwrap();
    if data[0] & 0x80 != 0 {
        model.prime(&[1 % vocab, 0, 1 % vocab, 0, 1 % vocab]).unwrap();
    }
    if let Ok(tokens) = decode(&model, &[(payload, n)]) {
        assert_eq!(tokens.len(), n);
        assert!(tokens.iter().all(|&t| t < vocab));
        let enc = encode(&model, &tokens, n.max(1)).unwrap();
        let blocks: Vec<(&[u8], usize)> = enc.iter().map(|p| (p.as_slice(), n)).collect();
        assert_eq!(decode(&model, &blocks).unwrap(), tokens);
    }
}

const NAMESPACES: [Option<&[u8]>; 3] = [None, Some(b"tenant-a"), Some(b"tenant-b")];

struct Bytes<'a>(&'a [u8]);
impl Bytes<'_> {
    fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
}

/// Reference: namespace index -> (path -> values), where a path is a whole number of pages and
/// its values are those of its last page; prefix-closed page by page. Pages are the unit: with
/// `page_size > 1` two stored pages may share their first tokens ([3, 1] and [3, 2] are two
/// pages, 4 tokens), as docs/trie.md says. (The first version of this model kept token paths,
/// which counted such a pair as 3 tokens: `regressions/trie_ops/crash-1fcb…`.)
type TrieModel = Vec<BTreeMap<Vec<u32>, Vec<u64>>>;

fn expected_match(model: &BTreeMap<Vec<u32>, Vec<u64>>, key: &[u32], ps: usize) -> (usize, Vec<u64>) {
    let aligned = key.len() / ps * ps;
    let mut l = 0;
    let mut values = Vec::new();
    while l < aligned {
        let Some(v) = model.get(&key[..l + ps]) else { break };
        values.extend_from_slice(v);
        l += ps;
    }
    (l, values)
}

fn remove_values(model: &mut TrieModel, freed: &[u64]) {
    let freed: HashSet<u64> = freed.iter().copied().collect();
    for m in model.iter_mut() {
        m.retain(|_, v| {
            let gone = v.iter().filter(|x| freed.contains(x)).count();
            assert!(gone == 0 || gone == v.len(), "eviction freed part of a page");
            gone == 0
        });
    }
}

/// A sequence of insert / match / match_and_pin / unpin / evict / next_counts operations on
/// one `seqkv_trie::Trie`, decoded from the input, checked after every step against a
/// reference model: per namespace, a prefix-closed map from stored page path to its values.
///
/// Checked: matches return the longest stored page-aligned prefix and its values; insert
/// returns the number of new tokens; `len()` equals the model's size and never exceeds
/// `max_tokens`; pinned paths survive every eviction; unpinning an unpinned node fails;
/// `next_counts` lists exactly the stored continuations.
pub fn trie_ops(data: &[u8]) {
    let mut b = Bytes(data);
    let (Some(cfg), Some(cap)) = (b.next(), b.next()) else { return };
    let ps = 1 + (cfg % 3) as usize;
    let max_tokens = if cap == 0 { None } else { Some(cap as u64 % 64 + ps as u64) };
    let policy = if cfg & 0x10 != 0 { EvictPolicy::Plt } else { EvictPolicy::Lru };
    let trie = Trie::new(TrieConfig { page_size: ps, max_tokens, policy, ..Default::default() }).unwrap();
    let mut model: TrieModel = vec![BTreeMap::new(); NAMESPACES.len()];
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
                        for i in (ps..=aligned).step_by(ps) {
                            m.entry(key[..i].to_vec()).or_insert_with(|| {
                                new += ps;
                                values[i - ps..i].to_vec()
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
                // every token that follows `key` on some stored path (sibling pages included)
                let mut want: Vec<u32> =
                    model[nsi].keys().filter(|k| k.len() > key.len() && k.starts_with(&key)).map(|k| k[key.len()]).collect();
                want.sort_unstable();
                want.dedup();
                assert_eq!(toks, want, "next_counts of {key:?} in ns {nsi}");
                assert!(counts.iter().all(|&c| c > 0));
            }
        }
        // Global invariants after every step.
        let total: usize = model.iter().map(|m| m.len() * ps).sum();
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
}
