//! Quantizer v1: one row of `f32` logits → integer frequencies, exactly as `docs/numerics.md`
//! specifies (every entry `>= 1`, the row summing to `2^precision`).
//!
//! Three ways to use it:
//!
//! * [`quantize_row`] / [`quantize_rows`]: materialise the table(s).
//! * [`LogitsRowModel`]: the fused row model. From one row of logits it gives the
//!   `(cum_low, freq)` slice of a symbol and finds the symbol of a decoder target *without*
//!   materialising the table: one pass for the max, one for the weights and their sum (into a
//!   reusable scratch), one for the floors summed per block of [`BLOCK`] symbols; a lookup then
//!   recomputes a single block.
//! * [`encode_logits`] / [`decode_logits`]: bulk coding of `n` rows, parallel over rows (rayon).
//!
//! Each pass has a scalar and an AVX2 implementation ([`Path`]), chosen at run time; they give
//! identical bits because every step is an exact integer or a correctly rounded IEEE operation
//! and all sums are integer.

use rayon::prelude::*;

use crate::error::{invalid, Result};
use crate::exp2_table::EXP2;
use crate::range::{check_precision, Decoder, Encoder};

/// The quantizer version streams record in their header. Changing any constant or step below is
/// a new version.
pub const QUANTIZER_VERSION: u8 = 1;
/// `F`: fraction bits of the log2 grid.
pub const FRACTION_BITS: u32 = 10;
/// `C`: `log2(e) * 2^F` rounded to `f32` (bits `0x44b8aa3b`).
pub const LOG2E_SCALED: f32 = f32::from_bits(0x44b8_aa3b);
/// `ZMIN = -32 * 2^F`: grid values at or below it get weight 0.
pub const ZMIN: f32 = -32768.0;
/// `K`: fixed-point shift of the scale factor.
pub const SCALE_SHIFT: u32 = 39;
/// Symbols per block of the fused model's prefix sums.
pub const BLOCK: usize = 256;

/// Which implementation of the passes runs. All give identical results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Portable Rust.
    Scalar,
    /// x86-64 AVX2 intrinsics (only where the CPU has AVX2).
    Avx2,
}

impl Path {
    /// The fastest path this CPU supports.
    pub fn best() -> Path {
        if Path::Avx2.is_available() {
            Path::Avx2
        } else {
            Path::Scalar
        }
    }

    /// Whether this path can run on this CPU.
    pub fn is_available(self) -> bool {
        match self {
            Path::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            Path::Avx2 => false,
        }
    }

    fn checked(self) -> Path {
        if self.is_available() {
            self
        } else {
            Path::Scalar
        }
    }
}

/// Checks `1 <= v <= 2^precision` and the precision.
pub fn check_shape(v: usize, precision: u32) -> Result<()> {
    check_precision(precision)?;
    if v == 0 || v as u64 > 1u64 << precision {
        return invalid(format!("vocabulary size {v} must be in 1..=2^precision = {}", 1u64 << precision));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scalar passes (the reference the AVX2 passes must match).

/// Pass 1: rejects NaN/+inf; the max of the row, `None` if every entry is -inf.
fn max_scalar(x: &[f32]) -> Result<Option<f32>> {
    let mut m = f32::NEG_INFINITY;
    let mut bad = false;
    for &xi in x {
        bad |= xi.is_nan() | (xi == f32::INFINITY);
        m = if xi > m { xi } else { m };
    }
    finish_max(m, bad)
}

fn finish_max(m: f32, bad: bool) -> Result<Option<f32>> {
    if bad {
        return invalid("logits contain NaN or +inf");
    }
    Ok(if m == f32::NEG_INFINITY { None } else { Some(m) })
}

/// Steps 3–4 for one entry.
#[inline(always)]
fn weight(xi: f32, m: f32) -> u32 {
    // Two separately rounded f32 operations (Rust never contracts them into an FMA).
    let z = (xi - m) * LOG2E_SCALED;
    #[allow(clippy::neg_cmp_op_on_partial_ord)] // the spec's wording: also true for NaN-free -inf
    if !(z > ZMIN) {
        return 0;
    }
    // round_half_even(z): for z in (-32768, 0], z + 1.5 * 2^23 lies in [2^23, 2^24) where the
    // float spacing is 1, so the addition rounds to an integer (nearest, ties to even) and the
    // subtraction is exact. Two IEEE operations, no libm call.
    const MAGIC: f32 = 12_582_912.0;
    let t = (z + MAGIC) - MAGIC;
    let u = (-t) as u32; // u in [0, 32768]
    let q = u >> FRACTION_BITS;
    if q < 32 {
        EXP2[(u & 1023) as usize] >> q
    } else {
        0
    }
}

/// Pass 2: `w[i]` and their sum.
fn weights_scalar(x: &[f32], m: f32, w: &mut [u32]) -> u64 {
    let mut sum = 0u64;
    for (&xi, wi) in x.iter().zip(w.iter_mut()) {
        *wi = weight(xi, m);
        sum += *wi as u64;
    }
    sum
}

/// First index `i` with `x[i] == m` (IEEE equality), `x.len()` if none.
fn first_equal_scalar(x: &[f32], m: f32) -> usize {
    x.iter().position(|&xi| xi == m).unwrap_or(x.len())
}

#[inline(always)]
fn floor_g(w: u32, k: u64) -> u64 {
    (w as u64 * k) >> SCALE_SHIFT
}

/// Pass 3 for the fused model: `prefix[b]` = sum of `g` over the blocks before `b`.
fn block_prefix_scalar(w: &[u32], k: u64, prefix: &mut Vec<u64>) -> u64 {
    prefix.clear();
    let mut total = 0u64;
    for block in w.chunks(BLOCK) {
        prefix.push(total);
        total += block.iter().map(|&wi| floor_g(wi, k)).sum::<u64>();
    }
    prefix.push(total);
    total
}

/// Pass 3 for a materialised table: `w[i] ← 1 + g[i]` in place; returns `Σ g`.
fn floors_scalar(w: &mut [u32], k: u64) -> u64 {
    let mut total = 0u64;
    for wi in w.iter_mut() {
        let g = floor_g(*wi, k);
        total += g;
        *wi = 1 + g as u32;
    }
    total
}

// ---------------------------------------------------------------------------------------------
// AVX2 passes.

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// One step of pass 1 on 8 entries: `acc = max(acc, v)`, `bad |= (v is NaN or +inf)`.
    #[inline(always)]
    unsafe fn max_step(acc: &mut __m256, bad: &mut __m256, v: __m256) {
        // SAFETY: AVX2 is enabled in every caller; the intrinsics only work on registers.
        unsafe {
            // !(v < +inf), an unordered comparison: true exactly for NaN and +inf.
            *bad = _mm256_or_ps(*bad, _mm256_cmp_ps::<_CMP_NLT_UQ>(v, _mm256_set1_ps(f32::INFINITY)));
            *acc = _mm256_max_ps(*acc, v);
        }
    }

    /// Pass 1's result from the lanes of `acc` and `bad` and the remaining entries `rest`.
    #[inline(always)]
    unsafe fn max_finish(acc: __m256, bad: __m256, rest: &[f32]) -> Result<Option<f32>> {
        // SAFETY: AVX2 is enabled in every caller; the store writes 32 bytes into the local `[f32; 8]`.
        unsafe {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
            let mut m = f32::NEG_INFINITY;
            for &l in &lanes {
                m = if l > m { l } else { m };
            }
            let mut any_bad = _mm256_movemask_ps(bad) != 0;
            for &xi in rest {
                any_bad |= xi.is_nan() | (xi == f32::INFINITY);
                m = if xi > m { xi } else { m };
            }
            // A NaN lane may have poisoned `m`; the error takes precedence anyway.
            finish_max(m, any_bad)
        }
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn max(x: &[f32]) -> Result<Option<f32>> {
        // SAFETY: AVX2 is available (every caller checked `Path::Avx2.is_available()`); loads read `x[c * 32 + j * 8..][..8]`
        // only for `c < x.len() / 32`, `j < 4`.
        unsafe {
            let chunks = x.len() / 32;
            let mut acc = [_mm256_set1_ps(f32::NEG_INFINITY); 4];
            let mut bad = [_mm256_setzero_ps(); 4];
            let p = x.as_ptr();
            for c in 0..chunks {
                for j in 0..4 {
                    max_step(&mut acc[j], &mut bad[j], _mm256_loadu_ps(p.add(c * 32 + j * 8)));
                }
            }
            let acc = _mm256_max_ps(_mm256_max_ps(acc[0], acc[1]), _mm256_max_ps(acc[2], acc[3]));
            let bad = _mm256_or_ps(_mm256_or_ps(bad[0], bad[1]), _mm256_or_ps(bad[2], bad[3]));
            max_finish(acc, bad, &x[chunks * 32..])
        }
    }

    /// First index `i` with `x[i] == m` (IEEE equality), `x.len()` if none.
    #[target_feature(enable = "avx2")]
    pub unsafe fn first_equal(x: &[f32], m: f32) -> usize {
        // SAFETY: AVX2 is available (every caller checked `Path::Avx2.is_available()`); loads read `x[c * 8..c * 8 + 8]` only
        // for `c < x.len() / 8`.
        unsafe {
            let chunks = x.len() / 8;
            let mv = _mm256_set1_ps(m);
            for c in 0..chunks {
                let eq = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_loadu_ps(x.as_ptr().add(c * 8)), mv));
                if eq != 0 {
                    return c * 8 + eq.trailing_zeros() as usize;
                }
            }
            chunks * 8 + first_equal_scalar(&x[chunks * 8..], m)
        }
    }

    #[inline(always)]
    unsafe fn hsum64(v: __m256i) -> u64 {
        // SAFETY: AVX2 is enabled in every caller; the store writes 32 bytes into the local `[u64; 4]`.
        unsafe {
            let mut lanes = [0u64; 4];
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, v);
            lanes.iter().sum()
        }
    }

    /// `g` of 8 weights, as (even lanes, odd lanes) in u64.
    #[inline(always)]
    unsafe fn floors8(wv: __m256i, kv: __m256i) -> (__m256i, __m256i) {
        // SAFETY: AVX2 is enabled in every caller; the intrinsics only work on registers.
        unsafe {
            let even = _mm256_srli_epi64::<39>(_mm256_mul_epu32(wv, kv));
            let odd = _mm256_srli_epi64::<39>(_mm256_mul_epu32(_mm256_srli_epi64::<32>(wv), kv));
            (even, odd)
        }
    }

    /// Requires `k < 2^32` (true for every row with a finite entry).
    #[target_feature(enable = "avx2")]
    pub unsafe fn block_prefix(w: &[u32], k: u64, prefix: &mut Vec<u64>) -> u64 {
        // SAFETY: AVX2 is available (every caller checked `Path::Avx2.is_available()`); loads read `block[c * 8..c * 8 + 8]`
        // only for `c < block.len() / 8`.
        unsafe {
            debug_assert!(k < 1 << 32);
            prefix.clear();
            let kv = _mm256_set1_epi64x(k as i64);
            let mut total = 0u64;
            for block in w.chunks(BLOCK) {
                prefix.push(total);
                let chunks = block.len() / 8;
                let mut acc = _mm256_setzero_si256();
                let p = block.as_ptr();
                for c in 0..chunks {
                    let wv = _mm256_loadu_si256(p.add(c * 8) as *const __m256i);
                    let (even, odd) = floors8(wv, kv);
                    acc = _mm256_add_epi64(acc, _mm256_add_epi64(even, odd));
                }
                total += hsum64(acc);
                total += block[chunks * 8..].iter().map(|&wi| floor_g(wi, k)).sum::<u64>();
            }
            prefix.push(total);
            total
        }
    }

    /// Chunks of 8 entries per block of [`BLOCK`] symbols.
    const CHUNKS_PER_BLOCK: usize = BLOCK / 8;

    /// Step 3 of one block, staged in memory for step 4: the grid values `u` and the table
    /// indices `r = u & 1023`.
    #[repr(C, align(32))]
    struct Stage {
        u: [i32; BLOCK],
        r: [u32; BLOCK],
    }

    impl Stage {
        const ZERO: Stage = Stage { u: [0; BLOCK], r: [0; BLOCK] };
    }

    /// Step 3 for the 8 entries at `xp` into chunk `j` of `stage`. Needs the default MXCSR (see
    /// [`super::MxcsrGuard`]): the conversion rounds to nearest-even under it.
    #[inline(always)]
    unsafe fn stage8(xp: *const f32, mv: __m256, stage: &mut Stage, j: usize) {
        // SAFETY: AVX2 is enabled in every caller; `xp` has 8 readable f32 (a full chunk of the row) and
        // `j < CHUNKS_PER_BLOCK`, so both aligned stores land inside `stage`'s 32-byte-aligned arrays.
        unsafe {
            // -z = (m - x) * C exactly (round-to-nearest-even is symmetric): two separately rounded
            // operations, no FMA. -z >= 0 since m is the maximum.
            let nz = _mm256_mul_ps(_mm256_sub_ps(mv, _mm256_loadu_ps(xp)), _mm256_set1_ps(LOG2E_SCALED));
            // u = round_half_even(-z). Where z <= ZMIN (including -inf and overflow), u >= 32768 or
            // the conversion's "indefinite" value 0x80000000: either way the shift q of step 4 is
            // >= 32 and srlv gives weight 0, as the spec requires; the table index stays in 0..1024.
            let u = _mm256_cvtps_epi32(nz);
            _mm256_store_si256(stage.u.as_mut_ptr().add(j * 8) as *mut __m256i, u);
            _mm256_store_si256(stage.r.as_mut_ptr().add(j * 8) as *mut __m256i, _mm256_and_si256(u, _mm256_set1_epi32(1023)));
        }
    }

    /// `EXP2` at the four indices held in two `u64`s (two `u32` each, low first).
    #[inline(always)]
    unsafe fn lookup4(t: *const u32, r01: u64, r23: u64) -> __m128i {
        // SAFETY: `t` is `EXP2.as_ptr()` (1024 entries) and each index is a stage value `u & 1023`, so
        // every read is inside the table; the inserts need SSE4.1, implied by the callers' AVX2.
        unsafe {
            let v = _mm_cvtsi32_si128(*t.add(r01 as u32 as usize) as i32);
            let v = _mm_insert_epi32::<1>(v, *t.add((r01 >> 32) as usize) as i32);
            let v = _mm_insert_epi32::<2>(v, *t.add(r23 as u32 as usize) as i32);
            _mm_insert_epi32::<3>(v, *t.add((r23 >> 32) as usize) as i32)
        }
    }

    /// Step 4 for chunk `j` of a staged block: `w = EXP2[r] >> q`, `q = u >> 10`.
    ///
    /// The table lookups are scalar loads inserted into the vector (`vpinsrd` from memory), with
    /// indices read back from the stage as `u64` pairs: on Zen 3 the weights pass takes 1.1 cycles
    /// per entry this way against 1.9 with `vpgatherdd` (`vpbroadcastd` + `vpblendd` or `vmovd` +
    /// `vpunpck*` sequences measured 5% slower still). The stage must have been written a block
    /// earlier: reading the indices back right after the vector store that wrote them stalls on
    /// store forwarding.
    #[inline(always)]
    unsafe fn weights8(stage: &Stage, j: usize) -> __m256i {
        // SAFETY: AVX2 is enabled in every caller; `j < CHUNKS_PER_BLOCK`, so the 8 staged indices and
        // grid values read at `j * 8` are inside `stage` (32-byte aligned, `repr(C, align(32))`, each
        // row a multiple of 8 lanes), and `lookup4` gets indices `< 1024` into `EXP2`.
        unsafe {
            let t = EXP2.as_ptr();
            let rp = stage.r.as_ptr().add(j * 8) as *const u64;
            let lo = lookup4(t, rp.read(), rp.add(1).read());
            let hi = lookup4(t, rp.add(2).read(), rp.add(3).read());
            let e = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo), hi);
            let u = _mm256_load_si256(stage.u.as_ptr().add(j * 8) as *const __m256i);
            srlv(e, _mm256_srli_epi32::<10>(u))
        }
    }

    /// `vpsrlvd`: lanes shifted by 32 or more become 0. Written as assembly because the intrinsic
    /// is lowered to a generic shift plus a select that LLVM does not fold back (three more uops).
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn srlv(e: __m256i, q: __m256i) -> __m256i {
        // SAFETY: `vpsrlvd` on registers only (`nomem, nostack`); AVX2 is enabled for this function and
        // its callers only run where AVX2 is available.
        unsafe {
            let out;
            std::arch::asm!("vpsrlvd {o}, {e}, {q}", o = lateout(ymm_reg) out, e = in(ymm_reg) e, q = in(ymm_reg) q, options(pure, nomem, nostack, preserves_flags));
            out
        }
    }

    /// What [`weights_pass`] returns.
    pub struct PassOut {
        /// Σ w of the row.
        pub sum: u64,
        /// Σ g of the previous row (0 without floors).
        pub g: u64,
        /// Pass 1 over the next row, where it ran in the same loop.
        pub next_max: Option<Result<Option<f32>>>,
    }

    /// Pass 2 over one row (weights into `w`, their sum) and in the same loop:
    ///
    /// * with `FLOORS`, pass 3 of the previous row (weights `prev_w`, scale `k < 2^32`): fills
    ///   `prefix` for it like [`block_prefix`] and returns its Σ g (else `prev_w`, `k`, `prefix`
    ///   are unused). On Zen 3 this costs about what the separate pass does (0.34 cycles per
    ///   entry): the loop is bound by instruction issue and loads, not by one execution unit.
    /// * with `MAX`, pass 1 over `next` (the row processed next, of the same length), which saves
    ///   reading it again; without, `next` (may be empty or shorter) is only pulled into the
    ///   cache.
    ///
    /// Block `b + 1` is staged (step 3) while block `b` is finished (step 4). Needs the default
    /// MXCSR (see [`super::MxcsrGuard`]).
    #[target_feature(enable = "avx2")]
    pub unsafe fn weights_pass<const FLOORS: bool, const MAX: bool>(
        x: &[f32],
        m: f32,
        w: &mut [u32],
        next: &[f32],
        prev_w: &[u32],
        k: u64,
        prefix: &mut Vec<u64>,
    ) -> PassOut {
        // SAFETY: AVX2 is available (every caller checked `Path::Avx2.is_available()`); the lengths of `w`, `prev_w` and
        // `next` are asserted above, chunk `c < n / 8` reads and writes lanes `c * 8..c * 8 + 8` of them,
        // the prefetch only touches `c < next.len() / 8`, and `stage8`/`weights8` stay in the 32-byte
        // aligned `Stage` arrays (`j < CHUNKS_PER_BLOCK`).
        unsafe {
            let n = x.len();
            assert!(w.len() == n && (!FLOORS || prev_w.len() == n) && (!MAX || next.len() == n));
            debug_assert!(!FLOORS || k < 1 << 32);
            if FLOORS {
                prefix.clear();
            }
            let mv = _mm256_set1_ps(m);
            let kv = _mm256_set1_epi64x(k as i64);
            let lo32 = _mm256_set1_epi64x(0xffff_ffff);
            let (px, pw, pp, pn) = (x.as_ptr(), w.as_mut_ptr(), prev_w.as_ptr(), next.as_ptr());
            let pf_chunks = if MAX { 0 } else { next.len() / 8 };
            let mut next_acc = _mm256_set1_ps(f32::NEG_INFINITY);
            let mut next_bad = _mm256_setzero_ps();
            let chunks = n / 8;
            let mut stages = [Stage::ZERO, Stage::ZERO];
            for j in 0..chunks.min(CHUNKS_PER_BLOCK) {
                stage8(px.add(j * 8), mv, &mut stages[0], j);
            }
            let mut acc_w = _mm256_setzero_si256();
            let mut g_total = 0u64;
            let mut start = 0;
            while start < chunks {
                if FLOORS {
                    prefix.push(g_total);
                }
                let end = (start + CHUNKS_PER_BLOCK).min(chunks);
                let staged_next = (end + CHUNKS_PER_BLOCK).min(chunks) - end;
                let (s0, s1) = stages.split_at_mut(1);
                let (cur, ahead) = if (start / CHUNKS_PER_BLOCK) & 1 == 0 { (&s0[0], &mut s1[0]) } else { (&s1[0], &mut s0[0]) };
                let mut acc_g = _mm256_setzero_si256();
                // Step 4 and the other passes for chunk j of the block.
                let mut finish = |j: usize| {
                    let c = start + j;
                    if MAX {
                        max_step(&mut next_acc, &mut next_bad, _mm256_loadu_ps(pn.add(c * 8)));
                    } else if c & 1 == 0 && c < pf_chunks {
                        _mm_prefetch::<_MM_HINT_T0>(pn.add(c * 8) as *const i8);
                    }
                    let wv = weights8(cur, j);
                    _mm256_storeu_si256(pw.add(c * 8) as *mut __m256i, wv);
                    acc_w = _mm256_add_epi64(acc_w, _mm256_add_epi64(_mm256_and_si256(wv, lo32), _mm256_srli_epi64::<32>(wv)));
                    if FLOORS {
                        let (even, odd) = floors8(_mm256_loadu_si256(pp.add(c * 8) as *const __m256i), kv);
                        acc_g = _mm256_add_epi64(acc_g, _mm256_add_epi64(even, odd));
                    }
                };
                if staged_next == CHUNKS_PER_BLOCK {
                    // The common case, a full block to stage, without a test per chunk.
                    for j in 0..CHUNKS_PER_BLOCK {
                        stage8(px.add((end + j) * 8), mv, ahead, j);
                        finish(j);
                    }
                } else {
                    for j in 0..end - start {
                        if j < staged_next {
                            stage8(px.add((end + j) * 8), mv, ahead, j);
                        }
                        finish(j);
                    }
                }
                g_total += hsum64(acc_g);
                start = end;
            }
            let mut sum = hsum64(acc_w);
            let tail = chunks * 8;
            if FLOORS && tail < n && tail % BLOCK == 0 {
                prefix.push(g_total); // the tail starts a block of its own
            }
            for i in tail..n {
                w[i] = weight(x[i], m);
                sum += w[i] as u64;
                if FLOORS {
                    g_total += floor_g(prev_w[i], k);
                }
            }
            if FLOORS {
                prefix.push(g_total);
            }
            let next_max = if MAX { Some(max_finish(next_acc, next_bad, &next[tail..])) } else { None };
            PassOut { sum, g: g_total, next_max }
        }
    }

    /// Pass 2: weights of `x` into `w` (same length), returns their sum. `prefetch` (may be
    /// empty): the row to be processed next. Needs the default MXCSR (see [`super::MxcsrGuard`]).
    #[target_feature(enable = "avx2")]
    pub unsafe fn weights(x: &[f32], m: f32, w: &mut [u32], prefetch: &[f32]) -> u64 {
        // SAFETY: AVX2 is available (every caller checked `Path::Avx2.is_available()`); `weights_pass` asserts the
        // lengths it relies on.
        unsafe {
            weights_pass::<false, false>(x, m, w, prefetch, &[], 0, &mut Vec::new()).sum
        }
    }

    /// Requires `k < 2^32`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn floors(w: &mut [u32], k: u64) -> u64 {
        // SAFETY: AVX2 is available (every caller checked `Path::Avx2.is_available()`); vector loads and stores
        // touch `w[c * 8..c * 8 + 8]` only for `c < w.len() / 8`.
        unsafe {
            debug_assert!(k < 1 << 32);
            let kv = _mm256_set1_epi64x(k as i64);
            let one = _mm256_set1_epi32(1);
            let chunks = w.len() / 8;
            let mut acc = _mm256_setzero_si256();
            let p = w.as_mut_ptr();
            for c in 0..chunks {
                let wv = _mm256_loadu_si256(p.add(c * 8) as *const __m256i);
                let (even, odd) = floors8(wv, kv);
                acc = _mm256_add_epi64(acc, _mm256_add_epi64(even, odd));
                let g = _mm256_or_si256(even, _mm256_slli_epi64::<32>(odd));
                _mm256_storeu_si256(p.add(c * 8) as *mut __m256i, _mm256_add_epi32(g, one));
            }
            hsum64(acc) + floors_scalar(&mut w[chunks * 8..], k)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dispatch.

/// Holds the SSE control register at its default for the duration of a pass: round to nearest
/// even, no flush-to-zero or denormals-are-zero, all exceptions masked. Another library may have
/// changed it in this thread (e.g. `torch.set_flush_denormal`), which would change comparisons of
/// denormal logits and the rounding of the AVX2 conversion.
struct MxcsrGuard {
    #[cfg(target_arch = "x86_64")]
    saved: Option<u32>,
}

#[cfg(target_arch = "x86_64")]
const MXCSR_DEFAULT: u32 = 0x1f80;

impl MxcsrGuard {
    #[inline]
    fn new() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let mut csr: u32 = 0;
            // SAFETY: stmxcsr writes 4 bytes to a valid location.
            unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags)) };
            if csr & !0x3f == MXCSR_DEFAULT {
                return MxcsrGuard { saved: None };
            }
            let new = MXCSR_DEFAULT | (csr & 0x3f);
            // SAFETY: loads a valid MXCSR value (reserved bits zero).
            unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &new, options(nostack, preserves_flags)) };
            MxcsrGuard { saved: Some(csr) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        MxcsrGuard {}
    }
}

impl Drop for MxcsrGuard {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        if let Some(csr) = self.saved {
            // SAFETY: restores the value read in `new`.
            unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, preserves_flags)) };
        }
    }
}

fn row_max(x: &[f32], path: Path) -> Result<Option<f32>> {
    let _csr = MxcsrGuard::new();
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Path::checked` only yields Avx2 when the CPU has AVX2.
        Path::Avx2 => unsafe { avx2::max(x) },
        _ => max_scalar(x),
    }
}

fn row_first_equal(x: &[f32], m: f32, path: Path) -> usize {
    let _csr = MxcsrGuard::new();
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Path::Avx2 => unsafe { avx2::first_equal(x, m) },
        _ => first_equal_scalar(x, m),
    }
}

fn row_weights(x: &[f32], m: f32, w: &mut [u32], path: Path, prefetch: &[f32]) -> u64 {
    let _csr = MxcsrGuard::new();
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Path::Avx2 => unsafe { avx2::weights(x, m, w, prefetch) },
        _ => weights_scalar(x, m, w),
    }
}

fn row_block_prefix(w: &[u32], k: u64, prefix: &mut Vec<u64>, path: Path) -> u64 {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above; k < 2^32 for rows with a finite entry.
        Path::Avx2 if k < 1 << 32 => unsafe { avx2::block_prefix(w, k, prefix) },
        _ => block_prefix_scalar(w, k, prefix),
    }
}

fn row_floors(w: &mut [u32], k: u64, path: Path) -> u64 {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Path::Avx2 if k < 1 << 32 => unsafe { avx2::floors(w, k) },
        _ => floors_scalar(w, k),
    }
}

/// Step 6: `k = floor(R * 2^K / S)`.
#[inline]
fn scale_factor(r: u64, s: u64) -> u64 {
    (r << SCALE_SHIFT) / s
}

/// Steps 1–8 for one row, on a chosen [`Path`]: writes `f[0..V)` into `out` (`out.len() == V`).
pub fn quantize_row_with(x: &[f32], precision: u32, out: &mut [u32], path: Path) -> Result<()> {
    let v = x.len();
    check_shape(v, precision)?;
    if out.len() != v {
        return invalid(format!("output row has {} entries, logits {v}", out.len()));
    }
    let path = path.checked();
    let r = (1u64 << precision) - v as u64;
    let (s, a) = match row_max(x, path)? {
        Some(m) => (row_weights(x, m, out, path, &[]), row_first_equal(x, m, path)),
        None => {
            out.fill(1);
            (v as u64, 0)
        }
    };
    let k = scale_factor(r, s);
    let g = row_floors(out, k, path);
    out[a] += (r - g) as u32;
    Ok(())
}

/// [`quantize_row_with`] on the fastest path.
pub fn quantize_row(x: &[f32], precision: u32, out: &mut [u32]) -> Result<()> {
    quantize_row_with(x, precision, out, Path::best())
}

/// Quantizes `n` rows of `v` logits (`x.len() == out.len() == n * v`), parallel over rows.
pub fn quantize_rows(x: &[f32], v: usize, precision: u32, out: &mut [u32]) -> Result<()> {
    check_shape(v, precision)?;
    if x.len() % v != 0 || out.len() != x.len() {
        return invalid(format!("logits ({}) and output ({}) must both hold n rows of {v}", x.len(), out.len()));
    }
    let path = Path::best();
    x.par_chunks(v)
        .zip(out.par_chunks_mut(v))
        .with_min_len(4)
        .try_for_each(|(row, o)| quantize_row_with(row, precision, o, path))
}

// ---------------------------------------------------------------------------------------------
// Fused row model.

/// What the fused model keeps of one row after [`RowStats::compute`]: a few scalars and one
/// prefix sum per [`BLOCK`] symbols (no table). Lookups take the same logits row again and
/// recompute one block of weights.
#[derive(Clone, Debug, Default)]
pub struct RowStats {
    v: usize,
    precision: u32,
    path: Option<Path>,
    /// Max of the row (unused for all -inf rows).
    m: f32,
    /// First index of the max: it receives the remainder `L`.
    a: usize,
    k: u64,
    /// Remainder `L = R - Σ g`.
    l: u64,
    /// Every entry is -inf: the table is uniform up to `L` on symbol 0.
    uniform: bool,
    /// `prefix[b]` = `Σ g` over the blocks before `b`.
    prefix: Vec<u64>,
}

impl RowStats {
    /// Passes 1–3 over one row. `scratch` is resized to `V` and overwritten (keep one per thread).
    pub fn compute(&mut self, x: &[f32], precision: u32, path: Path, scratch: &mut Vec<u32>) -> Result<()> {
        self.compute_prefetching(x, precision, path, scratch, &[])
    }

    /// [`compute`](Self::compute), pulling `next` (the row to be processed next, may be empty)
    /// into the cache while the weights are computed.
    pub fn compute_prefetching(
        &mut self,
        x: &[f32],
        precision: u32,
        path: Path,
        scratch: &mut Vec<u32>,
        next: &[f32],
    ) -> Result<()> {
        let v = x.len();
        check_shape(v, precision)?;
        let path = path.checked();
        let r = (1u64 << precision) - v as u64;
        self.v = v;
        self.precision = precision;
        self.path = Some(path);
        match row_max(x, path)? {
            None => {
                self.uniform = true;
                self.a = 0;
                self.m = f32::NEG_INFINITY;
                self.k = scale_factor(r, v as u64);
                self.l = r - (self.k >> SCALE_SHIFT) * v as u64;
                self.prefix.clear();
            }
            Some(m) => {
                self.uniform = false;
                self.m = m;
                scratch.resize(v, 0);
                let s = row_weights(x, m, scratch, path, next);
                self.a = row_first_equal(x, m, path);
                self.k = scale_factor(r, s);
                let g = row_block_prefix(scratch, self.k, &mut self.prefix, path);
                self.l = r - g;
            }
        }
        Ok(())
    }

    /// Number of symbols of the row.
    pub fn len(&self) -> usize {
        self.v
    }

    /// True before the first [`compute`](Self::compute).
    pub fn is_empty(&self) -> bool {
        self.v == 0
    }

    fn block_weights<'b>(&self, x: &[f32], b: usize, buf: &'b mut [u32; BLOCK]) -> &'b [u32] {
        let start = b * BLOCK;
        let end = (start + BLOCK).min(self.v);
        let w = &mut buf[..end - start];
        row_weights(&x[start..end], self.m, w, self.path.unwrap_or(Path::Scalar), &[]);
        w
    }

    #[inline]
    fn freq_at(&self, i: usize, g: u64) -> u64 {
        1 + g + if i == self.a { self.l } else { 0 }
    }

    /// `(cum_low, freq)` of `symbol` in the row's table. `x` must be the row given to
    /// [`compute`](Self::compute).
    pub fn range_of(&self, x: &[f32], symbol: usize) -> Result<(u32, u32)> {
        if symbol >= self.v {
            return invalid(format!("symbol {symbol} out of range for a row of {} logits", self.v));
        }
        let after_a = if symbol > self.a { self.l } else { 0 };
        if self.uniform {
            let g0 = self.k >> SCALE_SHIFT;
            let cum = symbol as u64 * (1 + g0) + after_a;
            return Ok((cum as u32, self.freq_at(symbol, g0) as u32));
        }
        let b = symbol / BLOCK;
        let mut buf = [0u32; BLOCK];
        let w = self.block_weights(x, b, &mut buf);
        let off = symbol - b * BLOCK;
        let below: u64 = w[..off].iter().map(|&wi| floor_g(wi, self.k)).sum();
        let cum = symbol as u64 + self.prefix[b] + below + after_a;
        Ok((cum as u32, self.freq_at(symbol, floor_g(w[off], self.k)) as u32))
    }

    /// `(symbol, cum_low, freq)` of the symbol whose slice contains `target` (`< 2^precision`).
    pub fn find(&self, x: &[f32], target: u32) -> (usize, u32, u32) {
        let t = target as u64;
        if self.uniform {
            let g0 = self.k >> SCALE_SHIFT;
            let f0 = 1 + g0 + self.l;
            if t < f0 {
                return (0, 0, f0 as u32);
            }
            let s = (1 + (t - f0) / (1 + g0)).min(self.v as u64 - 1);
            return (s as usize, (f0 + (s - 1) * (1 + g0)) as u32, (1 + g0) as u32);
        }
        // Cumulative frequency at the start of block b.
        let start_cum = |b: usize| {
            let s = b * BLOCK;
            s as u64 + self.prefix[b] + if self.a < s { self.l } else { 0 }
        };
        let blocks = self.prefix.len() - 1;
        let (mut lo, mut hi) = (0usize, blocks); // start_cum(lo) <= t; answer in [lo, hi)
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if start_cum(mid) <= t {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let mut buf = [0u32; BLOCK];
        let w = self.block_weights(x, lo, &mut buf);
        let mut cum = start_cum(lo);
        let base = lo * BLOCK;
        for (j, &wi) in w.iter().enumerate() {
            let f = self.freq_at(base + j, floor_g(wi, self.k));
            if t < cum + f || j + 1 == w.len() {
                return (base + j, cum as u32, f as u32);
            }
            cum += f;
        }
        unreachable!("a block has at least one symbol")
    }
}

/// [`RowStats::compute`] for `stats.len()` consecutive rows of `x` (`stats.len() * v` logits),
/// software-pipelined on the AVX2 path: the floors of each row (pass 3) and the max of the row
/// after (pass 1) run inside the weights loop (pass 2) of the next. `next` (may be empty) is the row
/// that follows the run. Same results as computing the rows one by one.
pub fn compute_rows(
    x: &[f32],
    v: usize,
    precision: u32,
    path: Path,
    stats: &mut [RowStats],
    bufs: &mut [Vec<u32>; 2],
    next: &[f32],
) -> Result<()> {
    check_shape(v, precision)?;
    let n = stats.len();
    if x.len() != n * v {
        return invalid(format!("{} logits for {n} rows of {v}", x.len()));
    }
    let path = path.checked();
    let row = |i: usize| if i < n { &x[i * v..(i + 1) * v] } else { next };
    if path != Path::Avx2 {
        for (i, st) in stats.iter_mut().enumerate() {
            st.compute_prefetching(row(i), precision, path, &mut bufs[0], row(i + 1))?;
        }
        return Ok(());
    }
    let r = (1u64 << precision) - v as u64;
    let [b0, b1] = bufs;
    b0.resize(v, 0);
    b1.resize(v, 0);
    // The last row whose weights are computed but whose floors are not, and its buffer.
    let mut pending: Option<(usize, bool)> = None;
    // Pass 1 over row i, where the pass over row i - 1 did it.
    let mut next_max = None;
    for i in 0..n {
        let xi = row(i);
        let (done, rest) = stats.split_at_mut(i);
        let st = &mut rest[0];
        st.v = v;
        st.precision = precision;
        st.path = Some(path);
        let max = match next_max.take() {
            Some(max) => max,
            None => row_max(xi, path),
        };
        let Some(m) = max? else {
            st.compute_prefetching(xi, precision, path, b0, &[])?;
            continue;
        };
        st.uniform = false;
        st.m = m;
        // The buffer not holding the pending row's weights.
        let use_b1 = matches!(pending, Some((_, false)));
        let (cur, prev) = if use_b1 { (&mut *b1, &*b0) } else { (&mut *b0, &*b1) };
        let (xn, max_next) = (row(i + 1), i + 1 < n);
        let out = {
            let _csr = MxcsrGuard::new();
            // SAFETY: AVX2 is available (checked path); k < 2^32 for rows with a finite entry; the
            // rows of the run all have v entries.
            unsafe {
                match pending {
                    Some((j, _)) => {
                        let pj = &mut done[j];
                        let out = if max_next {
                            avx2::weights_pass::<true, true>(xi, m, cur, xn, prev, pj.k, &mut pj.prefix)
                        } else {
                            avx2::weights_pass::<true, false>(xi, m, cur, xn, prev, pj.k, &mut pj.prefix)
                        };
                        pj.l = r - out.g;
                        out
                    }
                    None if max_next => avx2::weights_pass::<false, true>(xi, m, cur, xn, &[], 0, &mut Vec::new()),
                    None => avx2::weights_pass::<false, false>(xi, m, cur, xn, &[], 0, &mut Vec::new()),
                }
            }
        };
        next_max = out.next_max;
        st.a = row_first_equal(xi, m, path);
        st.k = scale_factor(r, out.sum);
        pending = Some((i, use_b1));
    }
    if let Some((j, in_b1)) = pending {
        let pj = &mut stats[j];
        let g = row_block_prefix(if in_b1 { b1 } else { b0 }, pj.k, &mut pj.prefix, path);
        pj.l = r - g;
    }
    Ok(())
}

/// The fused logits row model with its own scratch: [`load`](Self::load) a row, then ask for
/// [`range_of`](Self::range_of) a symbol (encoding) or [`find`](Self::find) a target (decoding).
#[derive(Clone, Debug)]
pub struct LogitsRowModel {
    stats: RowStats,
    scratch: Vec<u32>,
    path: Path,
}

impl Default for LogitsRowModel {
    fn default() -> Self {
        Self::new()
    }
}

impl LogitsRowModel {
    /// A model on the fastest [`Path`].
    pub fn new() -> Self {
        Self::with_path(Path::best())
    }

    /// A model on a chosen path (falls back to scalar where unavailable).
    pub fn with_path(path: Path) -> Self {
        LogitsRowModel { stats: RowStats::default(), scratch: Vec::new(), path: path.checked() }
    }

    /// Analyses one row (NaN/+inf → `InvalidInput`).
    pub fn load(&mut self, x: &[f32], precision: u32) -> Result<()> {
        self.stats.compute(x, precision, self.path, &mut self.scratch)
    }

    /// The loaded row's statistics.
    pub fn stats(&self) -> &RowStats {
        &self.stats
    }

    /// `(cum_low, freq)` of `symbol`; `x` is the row given to [`load`](Self::load).
    pub fn range_of(&self, x: &[f32], symbol: usize) -> Result<(u32, u32)> {
        self.stats.range_of(x, symbol)
    }

    /// `(symbol, cum_low, freq)` for a decoder target; `x` is the row given to `load`.
    pub fn find(&self, x: &[f32], target: u32) -> (usize, u32, u32) {
        self.stats.find(x, target)
    }

    /// Loads `x` and encodes `symbol` under it.
    pub fn encode(&mut self, encoder: &mut Encoder, x: &[f32], symbol: usize) -> Result<()> {
        self.load(x, encoder.precision())?;
        let (c, f) = self.range_of(x, symbol)?;
        encoder.encode(c, f)
    }

    /// Loads `x` and decodes one symbol under it.
    pub fn decode(&mut self, decoder: &mut Decoder, x: &[f32]) -> Result<usize> {
        self.load(x, decoder.precision())?;
        let t = decoder.target()?;
        let (s, c, f) = self.find(x, t);
        decoder.advance(c, f)?;
        Ok(s)
    }
}

fn check_rows(x: &[f32], v: usize, precision: u32) -> Result<usize> {
    check_shape(v, precision)?;
    if x.len() % v != 0 {
        return invalid(format!("logits length {} is not a multiple of the row size {v}", x.len()));
    }
    Ok(x.len() / v)
}

/// Row `i + 1` of `x` (empty past the end): what a worker most likely processes next.
fn next_row(x: &[f32], v: usize, i: usize) -> &[f32] {
    x.get((i + 1) * v..(i + 2) * v).unwrap_or(&[])
}

/// Encodes `symbols[i]` under the table of logits row `i` (`x` holds `n` rows of `v`), without
/// materialising tables; rows are analysed in parallel. Returns [`Encoder::finish_bytes`].
pub fn encode_logits(symbols: &[u32], x: &[f32], v: usize, precision: u32) -> Result<Vec<u8>> {
    let n = check_rows(x, v, precision)?;
    if symbols.len() != n {
        return invalid(format!("{} symbols for {n} rows of logits", symbols.len()));
    }
    let path = Path::best();
    let slices: Vec<(u32, u32)> = x
        .par_chunks(RUN * v)
        .zip(symbols.par_chunks(RUN))
        .enumerate()
        .map_init(
            || (vec![RowStats::default(); RUN], [Vec::new(), Vec::new()]),
            |(stats, bufs), (g, (rows, syms))| {
                let stats = &mut stats[..syms.len()];
                compute_rows(rows, v, precision, path, stats, bufs, next_row(x, v, (g + 1) * RUN - 1))?;
                stats.iter().zip(rows.chunks(v)).zip(syms).map(|((st, row), &s)| st.range_of(row, s as usize)).collect()
            },
        )
        .collect::<Result<Vec<Vec<(u32, u32)>>>>()?
        .concat();
    let mut enc = Encoder::new(precision)?;
    for (c, f) in slices {
        enc.encode(c, f)?;
    }
    Ok(enc.finish_bytes())
}

/// Rows analysed per parallel batch while decoding.
const DECODE_BATCH: usize = 256;
/// Consecutive rows one worker analyses in a software pipeline ([`compute_rows`]).
const RUN: usize = 8;

/// Decodes one symbol per logits row (`x` holds `n` rows of `v`) from bytes written by
/// [`encode_logits`] (or any encoder using the same tables); checks the stream ends there.
pub fn decode_logits(bytes: &[u8], x: &[f32], v: usize, precision: u32) -> Result<Vec<u32>> {
    let n = check_rows(x, v, precision)?;
    let path = Path::best();
    let mut dec = Decoder::from_bytes(bytes, precision)?;
    let mut out = Vec::with_capacity(n);
    let batch = |b: usize| &x[b * DECODE_BATCH * v..((b + 1) * DECODE_BATCH * v).min(x.len())];
    // Row statistics of batch b, in parallel.
    let analyse = |b: usize, stats: &mut Vec<RowStats>| -> Result<()> {
        let xs = batch(b);
        stats.resize_with(xs.len() / v, RowStats::default);
        stats
            .par_chunks_mut(RUN)
            .zip(xs.par_chunks(RUN * v))
            .enumerate()
            .map_init(
                || [Vec::new(), Vec::new()],
                |bufs, (g, (st, rows))| {
                    let last = b * DECODE_BATCH + g * RUN + st.len() - 1;
                    compute_rows(rows, v, precision, path, st, bufs, next_row(x, v, last))
                },
            )
            .collect()
    };
    let batches = n.div_ceil(DECODE_BATCH);
    let (mut cur, mut next) = (Vec::new(), Vec::new());
    if batches > 0 {
        analyse(0, &mut cur)?;
    }
    for b in 0..batches {
        // Decoding batch b (sequential) overlaps with the analysis of batch b + 1.
        let (decoded, analysed) = rayon::join(
            || -> Result<()> {
                for (row, st) in batch(b).chunks(v).zip(&cur) {
                    let t = dec.target()?;
                    let (s, c, f) = st.find(row, t);
                    dec.advance(c, f)?;
                    out.push(s as u32);
                }
                Ok(())
            },
            || if b + 1 < batches { analyse(b + 1, &mut next) } else { Ok(()) },
        );
        decoded?;
        analysed?;
        std::mem::swap(&mut cur, &mut next);
    }
    dec.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
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
}
