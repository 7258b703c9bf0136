use super::*;

fn lcg(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    *seed >> 11
}

#[test]
fn spec_example_rows() {
    // V = 1: the whole mass on the only symbol.
    let mut out = [0u32; 1];
    quantize_row(&[3.5], 24, &mut out).unwrap();
    assert_eq!(out[0], 1 << 24);
    // V = 2^P: every entry 1.
    let mut out = [0u32; 16];
    quantize_row(&[0.0; 16], 4, &mut out).unwrap();
    assert!(out.iter().all(|&f| f == 1));
    // All -inf: uniform, remainder on symbol 0.
    let mut out = [0u32; 3];
    quantize_row(&[f32::NEG_INFINITY; 3], 4, &mut out).unwrap();
    assert_eq!(out, [6, 5, 5]);
    // NaN and +inf are rejected.
    assert!(quantize_row(&[0.0, f32::NAN], 4, &mut [0; 2]).is_err());
    assert!(quantize_row(&[0.0, f32::INFINITY], 4, &mut [0; 2]).is_err());
}

#[test]
fn bulk_rows_match_scalar_tables_on_long_adversarial_rows() {
    // Several staged blocks per row, tails (V % 8 != 0, V % 256 != 0), ties at the maximum,
    // entries on both sides of the weight-0 cut-off, huge and denormal values, and an all
    // -inf row inside the run (the max of the row after it comes from a separate pass).
    let mut seed = 11u64;
    let m = 7.5f32;
    for &v in &[8usize, 255, 256, 257, 519, 768, 4103, 49152] {
        let (n, p) = (5, 24);
        let mut x = vec![0f32; n * v];
        for (r, row) in x.chunks_mut(v).enumerate() {
            for xi in row.iter_mut() {
                *xi = match lcg(&mut seed) % 12 {
                    0 => f32::NEG_INFINITY,
                    1 => m,
                    2 => m - 22.1807 + ((lcg(&mut seed) % 7) as f32 - 3.0) * 1e-4,
                    3 => -3.0e38,
                    4 => 1e-40,
                    _ => ((lcg(&mut seed) % 6000) as f32 - 4000.0) / 533.0,
                };
            }
            if r == 2 {
                row.fill(f32::NEG_INFINITY);
            }
        }
        for path in [Path::Avx2, Path::Scalar] {
            let mut stats = vec![RowStats::default(); n];
            compute_rows(&x, v, p, path, &mut stats, &mut [Vec::new(), Vec::new()], &[]).unwrap();
            for (row, st) in x.chunks(v).zip(&stats) {
                let mut table = vec![0u32; v];
                quantize_row_with(row, p, &mut table, Path::Scalar).unwrap();
                let mut cum = 0u32;
                for (s, &f) in table.iter().enumerate() {
                    if s % 97 == 0 || s % BLOCK == 0 || s % BLOCK == BLOCK - 1 || s + 1 == v || f > 1 << 16 {
                        assert_eq!(st.range_of(row, s).unwrap(), (cum, f), "v {v} symbol {s} {path:?}");
                        assert_eq!(st.find(row, cum + f - 1), (s, cum, f));
                    }
                    cum += f;
                }
            }
        }
        // NaN or +inf in a later row of the run (its max found by the pass over the row before,
        // or after the all -inf row by a pass of its own) is an error on both paths.
        for (bad, r) in [(f32::NAN, 1), (f32::INFINITY, 1), (f32::NAN, 3), (f32::INFINITY, 4)] {
            let mut y = x.clone();
            y[r * v + v / 2] = bad;
            for path in [Path::Avx2, Path::Scalar] {
                let mut stats = vec![RowStats::default(); n];
                assert!(compute_rows(&y, v, p, path, &mut stats, &mut [Vec::new(), Vec::new()], &[]).is_err());
            }
        }
    }
}

#[test]
fn fused_matches_table() {
    let mut seed = 7u64;
    for &v in &[1usize, 2, 7, 255, 256, 257, 1000, 5000] {
        for p in [13u32, 17, 24] {
            let x: Vec<f32> = (0..v)
                .map(|i| match lcg(&mut seed) % 10 {
                    0 => f32::NEG_INFINITY,
                    1 => 5.0,
                    _ => ((lcg(&mut seed) % 4000) as f32 - 3000.0) / 100.0 + i as f32 * 1e-3,
                })
                .collect();
            let mut table = vec![0u32; v];
            quantize_row(&x, p, &mut table).unwrap();
            let mut model = LogitsRowModel::new();
            model.load(&x, p).unwrap();
            let mut cum = 0u32;
            for (s, &f) in table.iter().enumerate() {
                assert_eq!(model.range_of(&x, s).unwrap(), (cum, f));
                assert_eq!(model.find(&x, cum), (s, cum, f));
                assert_eq!(model.find(&x, cum + f - 1), (s, cum, f));
                cum += f;
            }
            assert_eq!(cum as u64, 1 << p);
        }
    }
}
