//! Per-row operations: RMSNorm, RoPE, SiLU-gated product, attention.
//!
//! Each is defined for one row (one token) by a fixed sequence of IEEE
//! operations, written out in the scalar functions here; the AVX2 forms do the
//! same operations lane by lane. Reductions use eight lanes (element `i` goes to
//! lane `i % 8`, each lane one FMA chain in increasing `i`) and then the fixed
//! tree [`tree8`], so the sum of squares and dot products have one result.

use crate::isa::Isa;
use crate::math;

/// The fixed horizontal reduction of eight lanes:
/// `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`.
#[inline]
pub fn tree8(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// Eight-lane FMA dot product of `a` and `b` (same length), reduced with [`tree8`].
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        lanes[i % 8] = x.mul_add(y, lanes[i % 8]);
    }
    tree8(lanes)
}

/// `dot(x, x)` as [`dot_scalar`] defines it.
pub fn sumsq(isa: Isa, x: &[f32]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA are available (checked in the guard); `dot` reads within `x`.
        Isa::Avx2Fma if Isa::Avx2Fma.available() => unsafe { avx2::dot(x, x) },
        _ => dot_scalar(x, x),
    }
}

/// RMSNorm of one row: `out[i] = w[i] * (x[i] * r)`, `r = 1 / sqrt(sumsq(x) / n + eps)`.
pub fn rmsnorm(isa: Isa, x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len();
    let mean = sumsq(isa, x) / n as f32;
    let r = 1.0 / (mean + eps).sqrt();
    for i in 0..n {
        out[i] = w[i] * (x[i] * r);
    }
}

/// Rotates one head in place, Hugging Face `rotate_half` convention:
/// for `i < d/2`: `x[i] <- x[i]*c[i] - x[i+d/2]*s[i]`, `x[i+d/2] <- x[i+d/2]*c[i] + x[i]*s[i]`
/// (products rounded separately, no FMA — as `q * cos + rotate_half(q) * sin` in torch).
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let h = x.len() / 2;
    for i in 0..h {
        let (x1, x2) = (x[i], x[i + h]);
        x[i] = x1 * cos[i] - x2 * sin[i];
        x[i + h] = x2 * cos[i] + x1 * sin[i];
    }
}

/// `out[i] = silu(g[i]) * u[i]` with `silu(g) = g / (1 + exp(-g))`.
pub fn silu_mul(isa: Isa, g: &[f32], u: &[f32], out: &mut [f32]) {
    let n = g.len();
    assert!(
        u.len() >= n && out.len() >= n,
        "silu_mul: u and out must be as long as g"
    );
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2Fma && Isa::Avx2Fma.available() {
        // SAFETY: AVX2 and FMA are available (checked above); `u` and `out` hold `n` elements
        // (asserted above).
        i = unsafe { avx2::silu_mul(g, u, out) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    while i < n {
        out[i] = math::silu(g[i]) * u[i];
        i += 1;
    }
}

/// `out[i] = gelu_tanh(g[i]) * u[i]` ([`math::gelu_tanh`]; one code path for every ISA).
pub fn gelu_tanh_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &gv), &uv) in out.iter_mut().zip(g).zip(u) {
        *o = math::gelu_tanh(gv) * uv;
    }
}

/// Keys are summed in tiles of this many positions, counted from position 0.
pub const KEY_TILE: usize = 32;

/// Where one (layer, kv-head)'s keys and values live: pages of `page_tokens`
/// positions, element `(j, d)` of the keys at `k_base(j / P) + (j % P) * stride + d`.
pub struct KvView<'a> {
    /// Per page: pointer to the first key element of this (layer, head) and of its values.
    pub pages: &'a [(*const u8, *const u8)],
    pub page_tokens: usize,
    pub stride: usize,
    pub head_dim: usize,
    pub bf16: bool,
}

impl KvView<'_> {
    #[inline]
    fn offset(&self, j: usize) -> (usize, usize) {
        (j / self.page_tokens, (j % self.page_tokens) * self.stride)
    }
    #[inline]
    fn load(&self, base: *const u8, off: usize, d: usize) -> f32 {
        // SAFETY: `base` is a page pointer of this view and `off + d` a position `< page_tokens`
        // times `stride` plus `d < head_dim`: inside the page (the invariant of `KvView`, whose
        // pages `Model::forward` builds from live pages of the sequence being attended).
        unsafe {
            if self.bf16 {
                crate::bf16::bf16_to_f32(*(base as *const u16).add(off + d))
            } else {
                *(base as *const f32).add(off + d)
            }
        }
    }
    fn key(&self, j: usize, d: usize) -> f32 {
        let (p, off) = self.offset(j);
        self.load(self.pages[p].0, off, d)
    }
    fn value(&self, j: usize, d: usize) -> f32 {
        let (p, off) = self.offset(j);
        self.load(self.pages[p].1, off, d)
    }
}

/// Causal attention of one query row over keys `first..n_keys` (`first > 0` for a sliding
/// window), `j` running over those keys:
///
/// 1. `s[j] = dot(q, k[j]) * scale` ([`dot_scalar`]);
/// 2. `m = max_j s[j]`;
/// 3. `e[j] = exp(s[j] - m)` ([`math::exp`]);
/// 4. per tile `t` of [`KEY_TILE`] positions counted from position 0 (the first tile of a
///    window is the part of its tile from `first` on): `l_t = sum e[j]` and
///    `o_t[d] = fma(e[j], v[j][d], o_t[d])` in increasing `j`;
///    then `l = sum_t l_t`, `o[d] = sum_t o_t[d]` in increasing `t`;
/// 5. `out[d] = o[d] / l`.
///
/// `scratch` is resized to `n_keys - first`.
pub fn attend(
    isa: Isa,
    q: &[f32],
    kv: &KvView<'_>,
    first: usize,
    n_keys: usize,
    scale: f32,
    scratch: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = kv.head_dim;
    assert!(first < n_keys, "attend: no keys");
    scratch.clear();
    scratch.resize(n_keys - first, 0.0);
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2Fma && hd % 8 == 0 && hd <= 256 && Isa::Avx2Fma.available() {
        assert!(
            q.len() >= hd && out.len() >= hd,
            "attend: q and out must hold head_dim values"
        );
        // SAFETY: AVX2/FMA and the head_dim bounds are checked above, `q`/`out` hold `hd` values
        // (asserted), `scratch` was resized to `n_keys`, and `kv` covers keys `0..n_keys`.
        unsafe { avx2::attend(q, kv, first, n_keys, scale, scratch, out) };
        return;
    }
    let _ = isa;
    let mut kbuf = vec![0f32; hd];
    for j in first..n_keys {
        for (d, slot) in kbuf.iter_mut().enumerate() {
            *slot = kv.key(j, d);
        }
        scratch[j - first] = dot_scalar(q, &kbuf) * scale;
    }
    let mut m = f32::NEG_INFINITY;
    for &s in scratch.iter() {
        if s > m {
            m = s;
        }
    }
    let mut l = 0f32;
    let mut o = vec![0f32; hd];
    let mut ot = vec![0f32; hd];
    let mut t0 = first;
    while t0 < n_keys {
        let t1 = ((t0 / KEY_TILE + 1) * KEY_TILE).min(n_keys);
        let mut lt = 0f32;
        ot.fill(0.0);
        for j in t0..t1 {
            let e = math::exp(scratch[j - first] - m);
            lt += e;
            for d in 0..hd {
                ot[d] = e.mul_add(kv.value(j, d), ot[d]);
            }
        }
        l += lt;
        for d in 0..hd {
            o[d] += ot[d];
        }
        t0 = t1;
    }
    for d in 0..hd {
        out[d] = o[d] / l;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use crate::math::avx2::{exp8, silu8};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum_tree(v: __m256) -> f32 {
        // lanes (a0..a7): lo + hi = (a0+a4, a1+a5, a2+a6, a3+a7)
        let t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        // (t0 + t2, t1 + t3)
        let u = _mm_add_ps(t, _mm_movehl_ps(t, t));
        // u0 + u1
        let s = _mm_add_ss(u, _mm_shuffle_ps::<0b01>(u, u));
        _mm_cvtss_f32(s)
    }

    /// [`dot_scalar`] with vectors; returns the same bits for any length.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: AVX2 and FMA are available (caller); vector loads read `a[i..i + 8]` and `b[i..i + 8]` only
        // while `i + 8 <= min(a.len(), b.len())`.
        unsafe {
            let n = a.len().min(b.len());
            let mut acc = _mm256_setzero_ps();
            let mut i = 0;
            while i + 8 <= n {
                acc = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                    acc,
                );
                i += 8;
            }
            if i == n {
                return hsum_tree(acc);
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
            while i < n {
                lanes[i % 8] = a[i].mul_add(b[i], lanes[i % 8]);
                i += 1;
            }
            tree8(lanes)
        }
    }

    /// Vector part of [`silu_mul`]; returns how many elements it did.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) -> usize {
        // SAFETY: AVX2 and FMA are available (caller); `u` and `out` are at least as long as `g`
        // (asserted by `super::silu_mul`) and only `i + 8 <= g.len()` lanes are touched.
        unsafe {
            let n = g.len();
            let mut i = 0;
            while i + 8 <= n {
                let s = silu8(_mm256_loadu_ps(g.as_ptr().add(i)));
                _mm256_storeu_ps(
                    out.as_mut_ptr().add(i),
                    _mm256_mul_ps(s, _mm256_loadu_ps(u.as_ptr().add(i))),
                );
                i += 8;
            }
            i
        }
    }

    #[inline(always)]
    unsafe fn load8(base: *const u8, idx: usize, bf: bool) -> __m256 {
        // SAFETY: AVX2 is enabled in every caller; `base` points at a KV page with 8 elements (bf16 if `bf`,
        // else f32) readable from element `idx` (`attend`'s contract).
        unsafe {
            if bf {
                let h = _mm_loadu_si128((base as *const u16).add(idx) as *const __m128i);
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
            } else {
                _mm256_loadu_ps((base as *const f32).add(idx))
            }
        }
    }

    /// [`super::attend`] for `head_dim % 8 == 0`, `head_dim <= 256`; `s` holds the scores of
    /// keys `first..n_keys` (`s[j - first]`).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn attend(
        q: &[f32],
        kv: &KvView<'_>,
        first: usize,
        n_keys: usize,
        scale: f32,
        s: &mut [f32],
        out: &mut [f32],
    ) {
        // SAFETY: AVX2 and FMA are available (caller); `head_dim % 8 == 0` and `<= 256` (32 vectors), `q`
        // and `out` hold `head_dim` f32, `s` holds `n_keys - first`, and every key/value position `j < n_keys`
        // lies in `kv.pages` (each page holds `page_tokens` rows of `stride` elements, `KvView`'s invariant).
        unsafe {
            let hd = kv.head_dim;
            let nv = hd / 8;
            let bf = kv.bf16;
            let mut qv = [_mm256_setzero_ps(); 32];
            for c in 0..nv {
                qv[c] = _mm256_loadu_ps(q.as_ptr().add(c * 8));
            }
            // Scores, four keys at a time (independent chains; each key's arithmetic is the
            // same as alone).
            let mut j = first;
            while j + 4 <= n_keys {
                let mut ptrs = [(std::ptr::null::<u8>(), 0usize); 4];
                for (i, slot) in ptrs.iter_mut().enumerate() {
                    let (p, off) = kv.offset(j + i);
                    *slot = (kv.pages[p].0, off);
                }
                let mut acc = [_mm256_setzero_ps(); 4];
                for c in 0..nv {
                    for i in 0..4 {
                        acc[i] =
                            _mm256_fmadd_ps(qv[c], load8(ptrs[i].0, ptrs[i].1 + c * 8, bf), acc[i]);
                    }
                }
                for i in 0..4 {
                    s[j + i - first] = hsum_tree(acc[i]) * scale;
                }
                j += 4;
            }
            while j < n_keys {
                let (p, off) = kv.offset(j);
                let base = kv.pages[p].0;
                let mut acc = _mm256_setzero_ps();
                for c in 0..nv {
                    acc = _mm256_fmadd_ps(qv[c], load8(base, off + c * 8, bf), acc);
                }
                s[j - first] = hsum_tree(acc) * scale;
                j += 1;
            }
            let n_s = n_keys - first;
            let mut m = f32::NEG_INFINITY;
            for &x in s.iter() {
                if x > m {
                    m = x;
                }
            }
            let mv = _mm256_set1_ps(m);
            let mut j = 0;
            while j + 8 <= n_s {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s.as_ptr().add(j)), mv));
                _mm256_storeu_ps(s.as_mut_ptr().add(j), e);
                j += 8;
            }
            while j < n_s {
                s[j] = math::exp(s[j] - m);
                j += 1;
            }
            let mut l = 0f32;
            let mut o = [_mm256_setzero_ps(); 32];
            let mut t0 = first;
            while t0 < n_keys {
                let t1 = ((t0 / KEY_TILE + 1) * KEY_TILE).min(n_keys);
                let mut lt = 0f32;
                let mut ot = [_mm256_setzero_ps(); 32];
                for j in t0..t1 {
                    let e = s[j - first];
                    lt += e;
                    let eb = _mm256_set1_ps(e);
                    let (p, off) = kv.offset(j);
                    let base = kv.pages[p].1;
                    for c in 0..nv {
                        ot[c] = _mm256_fmadd_ps(eb, load8(base, off + c * 8, bf), ot[c]);
                    }
                }
                l += lt;
                for c in 0..nv {
                    o[c] = _mm256_add_ps(o[c], ot[c]);
                }
                t0 = t1;
            }
            let lv = _mm256_set1_ps(l);
            for c in 0..nv {
                _mm256_storeu_ps(out.as_mut_ptr().add(c * 8), _mm256_div_ps(o[c], lv));
            }
        }
    }
}
