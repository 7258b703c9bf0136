#![allow(clippy::needless_range_loop)]
//! Kernel properties: a row's result does not depend on the other rows, on the
//! task split, or on the instruction set.

mod common;

use common::{bits, isas, values};
use proptest::prelude::*;
use seqkv_engine::ops::{self, KvView};
use seqkv_engine::{matmul, PackedMatrix, WeightDtype};

fn check_rows_independent(
    k: usize,
    n: usize,
    rows: usize,
    seed: u64,
    bf: bool,
) -> Result<(), TestCaseError> {
    let dtype = if bf {
        WeightDtype::Bf16
    } else {
        WeightDtype::F32
    };
    let w = PackedMatrix::from_nk(&values(seed, n * k, 0.5), n, k, dtype);
    let x = values(seed ^ 1, rows * k, 2.0);
    let mut reference: Option<Vec<u32>> = None;
    for isa in isas() {
        let mut all = vec![0f32; rows * n];
        matmul(isa, &x, rows, &w, &mut all);
        for r in 0..rows {
            let mut one = vec![0f32; n];
            matmul(isa, &x[r * k..(r + 1) * k], 1, &w, &mut one);
            prop_assert_eq!(
                bits(&one),
                bits(&all[r * n..(r + 1) * n]),
                "row {} of {} ({:?})",
                r,
                rows,
                isa
            );
        }
        // Any sub-batch of rows gives the same bits too.
        let (a, b) = (rows / 3, rows - rows / 4);
        if b > a {
            let mut sub = vec![0f32; (b - a) * n];
            matmul(isa, &x[a * k..b * k], b - a, &w, &mut sub);
            prop_assert_eq!(bits(&sub), bits(&all[a * n..b * n]));
        }
        match &reference {
            None => reference = Some(bits(&all)),
            Some(r) => prop_assert_eq!(r, &bits(&all), "ISAs disagree"),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Each row of a many-row product equals the same row computed alone, for
    /// random shapes (including partial panels and K not a multiple of the K block),
    /// both weight dtypes and every available ISA; all ISAs agree.
    #[test]
    fn matmul_rows_are_independent(k in 1usize..700, n in 1usize..90, rows in 1usize..40, seed in any::<u64>(), bf in any::<bool>()) {
        check_rows_independent(k, n, rows, seed, bf)?;
    }

    /// The same for long K (several K blocks, several row blocks of the many-row path).
    #[test]
    fn matmul_rows_are_independent_long_k(k in 1500usize..2100, n in 1usize..40, rows in 40usize..90, seed in any::<u64>(), bf in any::<bool>()) {
        check_rows_independent(k, n, rows, seed, bf)?;
    }

    /// The product is the defined FMA chain over k (checked against a direct evaluation).
    #[test]
    fn matmul_is_the_fma_chain(k in 1usize..300, n in 1usize..40, rows in 1usize..9, seed in any::<u64>()) {
        let wv = values(seed, n * k, 1.0);
        let w = PackedMatrix::from_nk(&wv, n, k, WeightDtype::Bf16);
        let x = values(seed ^ 5, rows * k, 1.0);
        for isa in isas() {
            let mut out = vec![0f32; rows * n];
            matmul(isa, &x, rows, &w, &mut out);
            for r in 0..rows {
                for c in 0..n {
                    let mut acc = 0f32;
                    for kk in 0..k {
                        acc = x[r * k + kk].mul_add(w.get(kk, c), acc);
                    }
                    prop_assert_eq!(acc.to_bits(), out[r * n + c].to_bits());
                }
            }
        }
    }

    /// RMSNorm, SiLU-gating and dot products agree bit for bit across ISAs.
    #[test]
    fn row_ops_agree_across_isas(n in 1usize..700, seed in any::<u64>()) {
        let x = values(seed, n, 3.0);
        let w = values(seed ^ 2, n, 1.0);
        let u = values(seed ^ 3, n, 1.0);
        let mut outs = Vec::new();
        for isa in isas() {
            let mut a = vec![0f32; n];
            ops::rmsnorm(isa, &x, &w, 1e-5, &mut a);
            let mut b = vec![0f32; n];
            ops::silu_mul(isa, &x, &u, &mut b);
            outs.push((bits(&a), bits(&b), ops::sumsq(isa, &x).to_bits()));
        }
        for o in &outs[1..] {
            prop_assert_eq!(o, &outs[0]);
        }
    }

    /// Attention over paged K/V (all keys, or a sliding window of the last `window`): same bits
    /// across ISAs and page sizes, and close to a float64 softmax reference.
    #[test]
    fn attention_agrees(hd8 in 1usize..9, n_keys in 1usize..150, window in 0usize..80, seed in any::<u64>(), bf in any::<bool>()) {
        let hd = hd8 * 8;
        let first = if window == 0 { 0 } else { n_keys.saturating_sub(window) };
        let q = values(seed, hd, 1.0);
        let keys = values(seed ^ 7, n_keys * hd, 1.0);
        let vals = values(seed ^ 9, n_keys * hd, 1.0);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut results = Vec::new();
        for page_tokens in [1usize, 7, 64] {
            // Lay out pages with stride 2*hd (two kv heads, use head 1).
            let n_pages = n_keys.div_ceil(page_tokens);
            let stride = 2 * hd;
            let mut kp: Vec<Vec<f32>> = vec![vec![0.0; page_tokens * stride]; n_pages];
            let mut vp = kp.clone();
            for j in 0..n_keys {
                let (p, t) = (j / page_tokens, j % page_tokens);
                for d in 0..hd {
                    let (kx, vx) = (keys[j * hd + d], vals[j * hd + d]);
                    kp[p][t * stride + hd + d] = if bf { seqkv_engine::bf16::round_to_bf16(kx) } else { kx };
                    vp[p][t * stride + hd + d] = if bf { seqkv_engine::bf16::round_to_bf16(vx) } else { vx };
                }
            }
            let kb: Vec<Vec<u16>> = kp.iter().map(|p| p.iter().map(|&x| seqkv_engine::bf16::f32_to_bf16(x)).collect()).collect();
            let vb: Vec<Vec<u16>> = vp.iter().map(|p| p.iter().map(|&x| seqkv_engine::bf16::f32_to_bf16(x)).collect()).collect();
            let ptrs: Vec<(*const u8, *const u8)> = (0..n_pages)
                // SAFETY: `hd` is less than each page's length, so the offset stays inside it.
                .map(|p| unsafe {
                    if bf {
                        ((kb[p].as_ptr().add(hd)) as *const u8, (vb[p].as_ptr().add(hd)) as *const u8)
                    } else {
                        ((kp[p].as_ptr().add(hd)) as *const u8, (vp[p].as_ptr().add(hd)) as *const u8)
                    }
                })
                .collect();
            let view = KvView { pages: &ptrs, page_tokens, stride, head_dim: hd, bf16: bf };
            for isa in isas() {
                let mut out = vec![0f32; hd];
                let mut scratch = Vec::new();
                ops::attend(isa, &q, &view, first, n_keys, scale, &mut scratch, &mut out);
                results.push(bits(&out));
                // float64 reference
                let kr = |j: usize, d: usize| kp[j / page_tokens][(j % page_tokens) * stride + hd + d] as f64;
                let vr = |j: usize, d: usize| vp[j / page_tokens][(j % page_tokens) * stride + hd + d] as f64;
                let s: Vec<f64> = (first..n_keys).map(|j| (0..hd).map(|d| q[d] as f64 * kr(j, d)).sum::<f64>() * scale as f64).collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let l: f64 = e.iter().sum();
                for d in 0..hd {
                    let want: f64 = (first..n_keys).map(|j| e[j - first] * vr(j, d)).sum::<f64>() / l;
                    prop_assert!((out[d] as f64 - want).abs() < 1e-5, "d={} got {} want {}", d, out[d], want);
                }
            }
        }
        for r in &results[1..] {
            prop_assert_eq!(r, &results[0]);
        }
    }
}
