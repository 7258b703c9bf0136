//! Round trips, determinism, bad input and corrupt streams of the `plt` model.

use proptest::prelude::*;
use seqkv_ppm::{cost_bits, decode, encode, max_tokens_for_payload, Error, Model, Params, MAX_ORDER};

fn model(vocab: u32, order: u8, primer: &[u32]) -> Model {
    let mut m = Model::with_params(&Params::new(vocab, order).unwrap()).unwrap();
    m.prime(primer).unwrap();
    m
}

fn blocks<'a>(payloads: &'a [Vec<u8>], tokens: &[u32], block: usize) -> Vec<(&'a [u8], usize)> {
    payloads.iter().zip(tokens.chunks(block)).map(|(p, c)| (p.as_slice(), c.len())).collect()
}

/// Token sequences with repeats (so that contexts get used), over `vocab`.
fn tokens(vocab: u32, max_len: usize) -> impl Strategy<Value = Vec<u32>> {
    let v = vocab;
    prop_oneof![
        // i.i.d. uniform
        prop::collection::vec(0..v, 0..max_len),
        // a few phrases repeated with noise
        (prop::collection::vec(prop::collection::vec(0..v, 1..12), 1..8), prop::collection::vec((0usize..8, 0..v, 0u8..4), 0..max_len / 4))
            .prop_map(|(phrases, picks)| {
                let mut out = Vec::new();
                for (i, x, noise) in picks {
                    if noise == 0 {
                        out.push(x);
                    } else {
                        out.extend_from_slice(&phrases[i % phrases.len()]);
                    }
                }
                out
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_small_vocab(vocab in 1u32..40, order in 0u8..=MAX_ORDER as u8, block in 1usize..3000,
                              seed in tokens(40, 5000), primer in tokens(40, 300)) {
        let toks: Vec<u32> = seed.iter().map(|&t| t % vocab).collect();
        let primer: Vec<u32> = primer.iter().map(|&t| t % vocab).collect();
        let m = model(vocab, order, &primer);
        let payloads = encode(&m, &toks, block).unwrap();
        prop_assert_eq!(payloads.len(), toks.len().div_ceil(block));
        for (p, c) in payloads.iter().zip(toks.chunks(block)) {
            prop_assert!(c.len() as u64 <= max_tokens_for_payload(p.len()));
        }
        let back = decode(&m, &blocks(&payloads, &toks, block)).unwrap();
        prop_assert_eq!(back, toks);
    }

    #[test]
    fn round_trip_large_vocab(vocab in prop::sample::select(vec![49_152u32, 65_536, 151_936, 1 << 20]),
                              order in 0u8..=6, seed in tokens(1 << 20, 5000), primer in tokens(1 << 20, 500),
                              use_primer in any::<bool>()) {
        let toks: Vec<u32> = seed.iter().map(|&t| t % vocab).collect();
        let primer: Vec<u32> = if use_primer { primer.iter().map(|&t| t % vocab).collect() } else { vec![] };
        let m = model(vocab, order, &primer);
        let payloads = encode(&m, &toks, 1 << 16).unwrap();
        let back = decode(&m, &blocks(&payloads, &toks, 1 << 16)).unwrap();
        prop_assert_eq!(&back, &toks);
        // deterministic: the same bytes again, from a fresh model
        let again = encode(&model(vocab, order, &primer), &toks, 1 << 16).unwrap();
        prop_assert_eq!(&again, &payloads);
        // the payload is the ideal code length plus a few bytes of coder flush
        let ideal = cost_bits(&m, &toks).unwrap();
        let real: usize = payloads.iter().map(|p| 8 * p.len()).sum();
        prop_assert!((real as f64) <= ideal + 40.0 + toks.len() as f64 * 1e-3, "real {} ideal {}", real, ideal);
    }

    #[test]
    fn garbage_payloads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200), n in 0usize..3000,
                                    vocab in prop::sample::select(vec![2u32, 17, 49_152]), primer in tokens(17, 200)) {
        let primer: Vec<u32> = primer.iter().map(|&t| t % vocab).collect();
        let m = model(vocab, 3, &primer);
        match decode(&m, &[(&bytes, n)]) {
            Ok(out) => {
                prop_assert_eq!(out.len(), n);
                prop_assert!(out.iter().all(|&t| t < vocab));
            }
            Err(Error::CorruptStream(_)) => {}
            Err(e) => prop_assert!(false, "unexpected error {e:?}"),
        }
    }

    #[test]
    fn flipped_or_truncated_payload_decodes_safely(seed in tokens(300, 2000), pos in any::<prop::sample::Index>(),
                                                           bit in 0u8..8, cut in any::<bool>()) {
        let toks = seed;
        prop_assume!(!toks.is_empty());
        let m = model(300, 4, &[]);
        let payload = encode(&m, &toks, 1 << 16).unwrap().remove(0);
        prop_assume!(!payload.is_empty());
        let mut bad = payload.clone();
        if cut {
            bad.truncate(pos.index(payload.len()));
        } else {
            bad[pos.index(payload.len())] ^= 1 << bit;
        }
        // An error, or valid tokens (usually different ones; a flip of the final bits can
        // stay inside the last interval): the container's checksums catch the rest.
        match decode(&m, &[(&bad, toks.len())]) {
            Ok(out) => {
                prop_assert_eq!(out.len(), toks.len());
                prop_assert!(out.iter().all(|&t| t < 300));
            }
            Err(Error::CorruptStream(_)) => {}
            Err(e) => prop_assert!(false, "unexpected error {e:?}"),
        }
    }
}

#[test]
fn empty_message_and_empty_model() {
    let m = model(10, 4, &[]);
    assert!(encode(&m, &[], 100).unwrap().is_empty());
    assert!(decode(&m, &[]).unwrap().is_empty());
    // vocabulary of one token: every token costs nothing after the first
    let m1 = model(1, 2, &[]);
    let toks = vec![0u32; 1000];
    let p = encode(&m1, &toks, 1 << 16).unwrap();
    assert!(p[0].len() < 8, "{} bytes", p[0].len());
    assert_eq!(decode(&m1, &blocks(&p, &toks, 1 << 16)).unwrap(), toks);
}

#[test]
fn tokens_out_of_range_are_invalid_input() {
    let m = model(100, 3, &[]);
    assert!(matches!(encode(&m, &[1, 2, 100], 10), Err(Error::InvalidInput(_))));
    let mut m2 = model(100, 3, &[]);
    assert!(matches!(m2.prime(&[5, 100]), Err(Error::InvalidInput(_))));
    assert_eq!(m2.seen_tokens(), 0, "a failed prime leaves the model unchanged");
    assert!(matches!(cost_bits(&m, &[u32::MAX]), Err(Error::InvalidInput(_))));
    assert!(Params::new(0, 3).is_err());
    assert!(Params::new(1 << 25, 3).is_err());
    assert!(Params::new(10, MAX_ORDER as u8 + 1).is_err());
    assert!(matches!(encode(&m, &[1], 0), Err(Error::InvalidInput(_))));
}

#[test]
fn params_round_trip_and_reject_garbage() {
    let mut m = model(1000, 5, &[]);
    m.prime(&[1, 2, 3]).unwrap();
    let p = m.params();
    assert_eq!(p.primer_tokens, 3);
    let b = p.to_bytes();
    assert_eq!(b.len(), 2 + 1 + 4);
    assert_eq!(Params::from_bytes(&b, 1000).unwrap(), p);
    for cut in 0..b.len() {
        if cut != 2 {
            assert!(matches!(Params::from_bytes(&b[..cut], 1000), Err(Error::CorruptStream(_))), "cut {cut}");
        }
    }
    let mut long = b.clone();
    long.push(0);
    assert!(matches!(Params::from_bytes(&long, 1000), Err(Error::CorruptStream(_))));
    let mut bad = b.clone();
    bad[0] = 99; // unknown profile
    assert!(matches!(Params::from_bytes(&bad, 1000), Err(Error::InvalidInput(_))));
    let mut bad = b.clone();
    bad[1] = 200; // order out of range
    assert!(matches!(Params::from_bytes(&bad, 1000), Err(Error::InvalidInput(_))));
    // unprimed: two bytes; big primer counts survive the varint
    let fresh = model(1000, 4, &[]).params();
    assert_eq!(fresh.to_bytes().len(), 2);
    assert_eq!(Params::from_bytes(&fresh.to_bytes(), 1000).unwrap(), fresh);
    for n in [1u64, 127, 128, 300, 1 << 35, u64::MAX] {
        let q = Params { primer_tokens: n, primer_crc32c: 0xDEAD_BEEF, ..fresh };
        assert_eq!(Params::from_bytes(&q.to_bytes(), 1000).unwrap(), q);
    }
}

#[test]
fn a_corrupt_token_count_cannot_stall_the_decoder() {
    let m = model(49_152, 4, &[]);
    let t0 = std::time::Instant::now();
    assert!(matches!(decode(&m, &[(&[1, 2, 3], 1 << 40)]), Err(Error::CorruptStream(_))));
    assert!(t0.elapsed().as_secs() < 5);
}

#[test]
fn priming_helps_and_is_required() {
    // a text-like sequence: a phrase book
    let phrases: Vec<Vec<u32>> = (0..50u32).map(|i| (0..(3 + i % 7)).map(|j| (i * 37 + j * 101) % 5000).collect()).collect();
    let mut toks = Vec::new();
    let mut x = 12345u32;
    for _ in 0..800 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        toks.extend_from_slice(&phrases[(x >> 16) as usize % phrases.len()]);
    }
    let (primer, msg) = toks.split_at(toks.len() / 2);
    let cold = model(5000, 4, &[]);
    let warm = model(5000, 4, primer);
    let cold_bits = cost_bits(&cold, msg).unwrap();
    let warm_bits = cost_bits(&warm, msg).unwrap();
    assert!(warm_bits < 0.8 * cold_bits, "warm {warm_bits} cold {cold_bits}");
    let p = encode(&warm, msg, 1 << 16).unwrap();
    assert_eq!(decode(&warm, &blocks(&p, msg, 1 << 16)).unwrap(), msg);
    // decoding without the primer gives other tokens or an error, never the message
    match decode(&cold, &blocks(&p, msg, 1 << 16)) {
        Ok(out) => assert_ne!(out, msg),
        Err(e) => assert!(matches!(e, Error::CorruptStream(_))),
    }
}

#[test]
fn long_sequences_rescale_counts() {
    // one context seen far more often than the count limits: halving keeps totals in range
    let m = model(3, 1, &[]);
    let toks: Vec<u32> = (0..300_000u32).map(|i| if i % 3 == 0 { 0 } else { 1 + (i % 7 == 1) as u32 }).collect();
    let p = encode(&m, &toks, 100_000).unwrap();
    assert_eq!(decode(&m, &blocks(&p, &toks, 100_000)).unwrap(), toks);
}

#[test]
fn small_vocabularies_waste_little() {
    // i.i.d. uniform bits: ~1 bit per token is the entropy
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let toks: Vec<u32> = (0..20_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 33) as u32 & 1
        })
        .collect();
    let bits = cost_bits(&model(2, 4, &[]), &toks).unwrap();
    assert!(bits < 1.08 * toks.len() as f64, "{} bits/token", bits / toks.len() as f64);
    // a constant sequence over a small vocabulary costs almost nothing
    let bits = cost_bits(&model(5, 4, &[]), &vec![3u32; 20_000]).unwrap();
    assert!(bits < 100.0, "{bits} bits");
}

#[test]
fn every_token_costs_enough_to_bound_the_token_count() {
    // the cheapest messages there are: constant runs over vocabularies of 1 and 2
    for (vocab, sym) in [(1u32, 0u32), (2, 1), (49_152, 7)] {
        let toks = vec![sym; 200_000];
        let m = model(vocab, 4, &[]);
        let p = encode(&m, &toks, 1 << 20).unwrap();
        assert!(toks.len() as u64 <= max_tokens_for_payload(p[0].len()), "vocab {vocab}: {} bytes", p[0].len());
        assert_eq!(decode(&m, &blocks(&p, &toks, 1 << 20)).unwrap(), toks);
    }
}
