//! The scalar passes: the reference every other path must match bit for bit.

use super::*;

/// Pass 1: rejects NaN/+inf; the max of the row, `None` if every entry is -inf.
pub(super) fn max_scalar(x: &[f32]) -> Result<Option<f32>> {
    let mut m = f32::NEG_INFINITY;
    let mut bad = false;
    for &xi in x {
        bad |= xi.is_nan() | (xi == f32::INFINITY);
        m = if xi > m { xi } else { m };
    }
    finish_max(m, bad)
}

pub(super) fn finish_max(m: f32, bad: bool) -> Result<Option<f32>> {
    if bad {
        return invalid("logits contain NaN or +inf");
    }
    Ok(if m == f32::NEG_INFINITY { None } else { Some(m) })
}

/// Steps 3–4 for one entry.
#[inline(always)]
pub(super) fn weight(xi: f32, m: f32) -> u32 {
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
pub(super) fn weights_scalar(x: &[f32], m: f32, w: &mut [u32]) -> u64 {
    let mut sum = 0u64;
    for (&xi, wi) in x.iter().zip(w.iter_mut()) {
        *wi = weight(xi, m);
        sum += *wi as u64;
    }
    sum
}

/// First index `i` with `x[i] == m` (IEEE equality), `x.len()` if none.
pub(super) fn first_equal_scalar(x: &[f32], m: f32) -> usize {
    x.iter().position(|&xi| xi == m).unwrap_or(x.len())
}

#[inline(always)]
pub(super) fn floor_g(w: u32, k: u64) -> u64 {
    (w as u64 * k) >> SCALE_SHIFT
}

/// Pass 3 for the fused model: `prefix[b]` = sum of `g` over the blocks before `b`.
pub(super) fn block_prefix_scalar(w: &[u32], k: u64, prefix: &mut Vec<u64>) -> u64 {
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
pub(super) fn floors_scalar(w: &mut [u32], k: u64) -> u64 {
    let mut total = 0u64;
    for wi in w.iter_mut() {
        let g = floor_g(*wi, k);
        total += g;
        *wi = 1 + g as u32;
    }
    total
}

/// Step 6: `k = floor(R * 2^K / S)`.
#[inline]
pub(super) fn scale_factor(r: u64, s: u64) -> u64 {
    (r << SCALE_SHIFT) / s
}
