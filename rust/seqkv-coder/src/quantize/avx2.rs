//! The AVX2 passes (x86-64, chosen at run time by [`Path`]); same bits as the scalar ones.

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
