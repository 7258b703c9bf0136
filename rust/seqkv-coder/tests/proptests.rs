//! Property tests: round trips of every coding mode, quantizer invariants, scalar == AVX2,
//! and robustness of the decoder against arbitrary bytes.

use proptest::prelude::*;
use seqkv_coder::adaptive::{self, AdaptiveModel};
use seqkv_coder::quantize::{self, LogitsRowModel, Path};
use seqkv_coder::range::{Decoder, Encoder};
use seqkv_coder::table::{self, StaticTable};

/// A table over `weights.len()` symbols summing to exactly 2^precision: proportional floors plus
/// the remainder on the largest weight. Entries may be 0 where the weight is 0.
fn table_from(weights: &[u32], precision: u32) -> Vec<u32> {
    let total = 1u64 << precision;
    let n = weights.len() as u64;
    let wsum: u64 = weights.iter().map(|&w| w as u64).sum::<u64>().max(1);
    // Leave room so every positive weight gets at least 1.
    let spare = total - n.min(total);
    let mut f: Vec<u32> = weights
        .iter()
        .map(|&w| if w == 0 { 0 } else { 1 + ((w as u64 * spare) / wsum) as u32 })
        .collect();
    let sum: u64 = f.iter().map(|&x| x as u64).sum();
    let (imax, _) = weights.iter().enumerate().max_by_key(|(_, &w)| w).unwrap();
    if f[imax] == 0 {
        f[imax] = 1;
    }
    let sum = sum + if f[imax] == 1 && weights[imax] == 0 { 1 } else { 0 };
    f[imax] += (total - sum) as u32;
    f
}

fn symbols_for(f: &[u32], picks: &[u32]) -> Vec<u32> {
    let nz: Vec<u32> = (0..f.len() as u32).filter(|&i| f[i as usize] > 0).collect();
    picks.iter().map(|&p| nz[p as usize % nz.len()]).collect()
}

fn logit_strategy() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => -30.0f32..30.0,
        1 => Just(f32::NEG_INFINITY),
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => Just(5.0f32),
        1 => prop_oneof![Just(3.0e38f32), Just(-3.0e38f32), Just(f32::MAX), Just(f32::MIN), Just(1e-40f32)],
        1 => any::<f32>().prop_filter("finite or -inf", |x| !x.is_nan() && *x != f32::INFINITY),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn static_round_trip(
        weights in prop::collection::vec(prop_oneof![3 => 1u32..1000, 1 => Just(0u32), 1 => 1u32..3], 1..60),
        precision in 1u32..=24,
        picks in prop::collection::vec(any::<u32>(), 0..2000),
    ) {
        prop_assume!(weights.len() as u64 <= 1 << precision);
        let f = table_from(&weights, precision);
        let symbols = symbols_for(&f, &picks);
        let bytes = table::encode_static(&symbols, &f, precision).unwrap();
        prop_assert_eq!(table::decode_static(&bytes, &f, symbols.len(), precision).unwrap(), symbols);
    }

    #[test]
    fn per_step_round_trip_with_skews(
        v in 1usize..40,
        precision in 1u32..=24,
        rows in prop::collection::vec((any::<u32>(), any::<u32>(), 0u8..3), 0..300),
    ) {
        prop_assume!(v as u64 <= 1 << precision);
        let mut freqs = Vec::new();
        let mut symbols = Vec::new();
        for &(seed, pick, kind) in &rows {
            let weights: Vec<u32> = match kind {
                // Skew to the precision limit: one symbol takes all but V - 1.
                0 => (0..v).map(|i| if i == seed as usize % v { u32::MAX / 2 } else { 1 }).collect(),
                1 => (0..v).map(|i| (seed.rotate_left(i as u32) % 97) + (i as u32 % 2)).collect(),
                _ => (0..v).map(|i| 1 + (i as u32).wrapping_mul(seed) % 13).collect(),
            };
            let mut w = weights;
            if w.iter().all(|&x| x == 0) { w[0] = 1; }
            let f = table_from(&w, precision);
            symbols.push(symbols_for(&f, &[pick])[0]);
            freqs.extend_from_slice(&f);
        }
        let bytes = table::encode_rows(&symbols, &freqs, v, precision).unwrap();
        prop_assert_eq!(table::decode_rows(&bytes, &freqs, v, precision).unwrap(), symbols.clone());
        // The streaming coder gives the same bytes.
        let mut enc = Encoder::new(precision).unwrap();
        for (row, &s) in freqs.chunks(v).zip(&symbols) {
            let (c, f) = table::row_range(row, s as usize, precision).unwrap();
            enc.encode(c, f).unwrap();
        }
        prop_assert_eq!(enc.finish_bytes(), bytes);
    }

    #[test]
    fn adaptive_round_trip(
        n in 1usize..300,
        increment in 0u32..64,
        picks in prop::collection::vec(any::<u16>(), 0..3000),
    ) {
        let limit = (n as u32 + increment).max(1 << 12);
        let symbols: Vec<u32> = picks.iter().map(|&p| (p as usize % n) as u32).collect();
        let bytes = adaptive::encode_symbols(&symbols, n, increment, limit).unwrap();
        prop_assert_eq!(adaptive::decode_symbols(&bytes, n, symbols.len(), increment, limit).unwrap(), symbols);
    }

    #[test]
    fn quantizer_invariants_and_paths_agree(
        row in prop::collection::vec(logit_strategy(), 1..700),
        precision in 10u32..=24,
        ties in any::<bool>(),
    ) {
        let mut x = row;
        if ties { let m = x[0]; for i in (0..x.len()).step_by(3) { x[i] = m; } }
        prop_assume!(x.len() as u64 <= 1 << precision);
        let mut a = vec![0u32; x.len()];
        let mut b = vec![0u32; x.len()];
        quantize::quantize_row_with(&x, precision, &mut a, Path::Scalar).unwrap();
        quantize::quantize_row_with(&x, precision, &mut b, Path::Avx2).unwrap();
        prop_assert_eq!(&a, &b);
        prop_assert!(a.iter().all(|&f| f >= 1));
        prop_assert_eq!(a.iter().map(|&f| f as u64).sum::<u64>(), 1u64 << precision);
        // The fused model agrees with the table on both paths.
        for path in [Path::Scalar, Path::Avx2] {
            let mut m = LogitsRowModel::with_path(path);
            m.load(&x, precision).unwrap();
            let mut cum = 0u32;
            for (s, &f) in a.iter().enumerate() {
                prop_assert_eq!(m.range_of(&x, s).unwrap(), (cum, f));
                prop_assert_eq!(m.find(&x, cum + f / 2), (s, cum, f));
                cum += f;
            }
        }
    }

    #[test]
    fn logits_coding_matches_tables(
        v in 1usize..300,
        n in 0usize..60,
        seed in any::<u64>(),
        precision in 9u32..=24,
    ) {
        prop_assume!(v as u64 <= 1 << precision);
        let mut s = seed | 1;
        let mut next = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
        let mut x: Vec<f32> = (0..n * v).map(|_| match next() % 16 { 0 => f32::NEG_INFINITY, _ => (next() % 4000) as f32 / 100.0 - 20.0 }).collect();
        // Some rows entirely -inf (uniform tables) in the middle of the software pipeline.
        for row in x.chunks_mut(v) {
            if next() % 5 == 0 {
                row.fill(f32::NEG_INFINITY);
            }
        }
        let symbols: Vec<u32> = (0..n).map(|_| (next() % v as u64) as u32).collect();
        let mut tables = vec![0u32; n * v];
        quantize::quantize_rows(&x, v, precision, &mut tables).unwrap();
        let a = quantize::encode_logits(&symbols, &x, v, precision).unwrap();
        let b = table::encode_rows(&symbols, &tables, v, precision).unwrap();
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(quantize::decode_logits(&a, &x, v, precision).unwrap(), symbols);
    }

    #[test]
    fn garbage_streams_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
        precision in 1u32..=24,
        n in 0usize..200,
    ) {
        let v = 5usize.min(1 << precision);
        let f = table_from(&vec![1; v], precision);
        let _ = table::decode_static(&bytes, &f, n, precision);
        let _ = adaptive::decode_symbols(&bytes, 7, n, 24, 1 << 12);
        let x: Vec<f32> = (0..n * v).map(|i| (i % 7) as f32).collect();
        let _ = quantize::decode_logits(&bytes, &x, v, precision);
    }
}

#[test]
fn every_precision_long_messages() {
    for precision in 1..=24u32 {
        let v = 3usize.min(1 << precision);
        let f = table_from(&[5, 1, 2][..v], precision);
        let t = StaticTable::new(&f, precision).unwrap();
        let symbols: Vec<u32> = (0..10_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) % v as u32).collect();
        let mut enc = Encoder::new(precision).unwrap();
        for &s in &symbols {
            let (c, fr) = t.range_of(s as usize).unwrap();
            enc.encode(c, fr).unwrap();
        }
        let bytes = enc.finish_bytes();
        let mut dec = Decoder::from_bytes(&bytes, precision).unwrap();
        for &s in &symbols {
            let (got, c, fr) = t.find(dec.target().unwrap());
            assert_eq!(got as u32, s);
            dec.advance(c, fr).unwrap();
        }
        dec.finish().unwrap();
    }
}

#[test]
fn overhead_is_at_most_a_few_bytes() {
    // Information content vs coded size for a skewed static table.
    let precision = 16;
    let f = [60000u32, 5000, 536];
    let symbols: Vec<u32> = (0..50_000u32).map(|i| match i.wrapping_mul(2_654_435_761) >> 16 { x if x < 60000 => 0, x if x < 65000 => 1, _ => 2 }).collect();
    let info: f64 = symbols.iter().map(|&s| -((f[s as usize] as f64) / 65536.0).log2()).sum();
    let bytes = table::encode_static(&symbols, &f, precision).unwrap();
    assert!((bytes.len() as f64) * 8.0 <= info + 40.0, "{} bytes for {info} bits", bytes.len());
}

#[test]
fn frequency_zero_and_bad_tables_are_errors() {
    assert!(table::encode_static(&[1], &[16, 0], 4).is_err());
    assert!(table::encode_static(&[0], &[15, 0], 4).is_err());
    assert!(table::encode_static(&[2], &[8, 8], 4).is_err());
    assert!(table::encode_rows(&[0], &[8, 9], 2, 4).is_err());
    assert!(AdaptiveModel::with_params(10, 5, 12).is_err());
    assert!(quantize::encode_logits(&[0], &[f32::NAN, 0.0], 2, 4).is_err());
    assert!(quantize::encode_logits(&[0], &[0.0; 17], 17, 4).is_err());
}
