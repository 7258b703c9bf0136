//! Elementary functions defined by explicit IEEE operations, so that the scalar
//! and the SIMD forms (and a GPU port) give the same bits on every machine.
//! No libm is involved: `exp` is a Cephes-style range reduction plus a
//! polynomial evaluated with fused multiply-adds; `sin`/`cos` (for RoPE tables)
//! are fdlibm's kernels in f64 after a three-part Cody-Waite reduction.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_375;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5.000_000_1e-1,
];
/// Inputs are clamped to this range first (below it the result is 0, above it +inf).
pub const EXP_LO: f32 = -104.0;
pub const EXP_HI: f32 = 89.0;

/// `e^x` in f32, about 1 ulp accurate; the reference definition of the engine's exp.
///
/// NaN is mapped to 0 (by the clamp, as `maxps` does).
#[inline]
pub fn exp(x: f32) -> f32 {
    // Clamp with the semantics of x86 maxps/minps (second operand wins on NaN).
    let x = if x > EXP_LO { x } else { EXP_LO };
    let x = if x < EXP_HI { x } else { EXP_HI };
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let z = r * r;
    let mut p = EXP_P[0];
    p = p.mul_add(r, EXP_P[1]);
    p = p.mul_add(r, EXP_P[2]);
    p = p.mul_add(r, EXP_P[3]);
    p = p.mul_add(r, EXP_P[4]);
    p = p.mul_add(r, EXP_P[5]);
    let y = p.mul_add(z, r) + 1.0;
    let ni = n as i32;
    let h = ni >> 1;
    let s1 = f32::from_bits(((h + 127) as u32) << 23);
    let s2 = f32::from_bits(((ni - h + 127) as u32) << 23);
    (y * s1) * s2
}

/// `x * sigmoid(x)` as `x / (1 + exp(-x))`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `tanh(x) = copysign((1 - t) / (1 + t), x)` with `t = exp(-2|x|)` ([`exp`]; every other
/// operation a single IEEE operation, no FMA).
pub fn tanh(x: f32) -> f32 {
    let t = exp(-2.0 * x.abs());
    ((1.0 - t) / (1.0 + t)).copysign(x)
}

/// GELU, tanh form (PyTorch's `gelu(approximate="tanh")`, Gemma's `gelu_pytorch_tanh`):
/// `(0.5 * x) * (1 + tanh(K0 * (x + K1 * ((x * x) * x))))`, `K0 = f32(sqrt(2 / pi))`,
/// `K1 = 0.044715`, each operation rounded separately.
pub fn gelu_tanh(x: f32) -> f32 {
    const K0: f32 = 0.797_884_560_802_865_4;
    const K1: f32 = 0.044_715;
    let inner = K0 * (x + K1 * ((x * x) * x));
    (0.5 * x) * (1.0 + tanh(inner))
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    //! Eight-lane forms of the functions above, operation for operation.
    use super::*;
    use std::arch::x86_64::*;

    /// Eight [`exp`]s. Callers must have checked that AVX2 and FMA are available.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::missing_safety_doc)]
    pub fn exp8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(EXP_LO));
        let x = _mm256_min_ps(x, _mm256_set1_ps(EXP_HI));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
        );
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), x);
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
        let z = _mm256_mul_ps(r, r);
        let mut p = _mm256_set1_ps(EXP_P[0]);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P[1]));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P[2]));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P[3]));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P[4]));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P[5]));
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, z, r), _mm256_set1_ps(1.0));
        let ni = _mm256_cvtps_epi32(n);
        let h = _mm256_srai_epi32::<1>(ni);
        let bias = _mm256_set1_epi32(127);
        let s1 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(h, bias)));
        let s2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_sub_epi32(ni, h),
            bias,
        )));
        _mm256_mul_ps(_mm256_mul_ps(y, s1), s2)
    }

    /// Eight [`silu`]s. Callers must have checked that AVX2 and FMA are available.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::missing_safety_doc)]
    pub fn silu8(x: __m256) -> __m256 {
        let neg = _mm256_sub_ps(_mm256_setzero_ps(), x);
        _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), exp8(neg)))
    }
}

// ---- sin / cos in f64 (RoPE tables) -------------------------------------------------

const PIO2_1: f64 = 1.570_796_326_734_125_6e0; // first 33 bits of pi/2
const PIO2_2: f64 = 6.077_100_506_303_966e-11; // next 33 bits
const PIO2_3: f64 = 2.022_266_248_711_166_5e-21; // next 33 bits
const INV_PIO2: f64 = 6.366_197_723_675_814e-1;

fn kernel_sin(x: f64) -> f64 {
    const S1: f64 = -1.666_666_666_666_663_2e-1;
    const S2: f64 = 8.333_333_333_322_49e-3;
    const S3: f64 = -1.984_126_982_985_795e-4;
    const S4: f64 = 2.755_731_370_707_007e-6;
    const S5: f64 = -2.505_076_025_340_686_3e-8;
    const S6: f64 = 1.589_690_995_211_55e-10;
    let z = x * x;
    let v = z * x;
    let r = S2 + z * (S3 + z * (S4 + z * (S5 + z * S6)));
    x + v * (S1 + z * r)
}

fn kernel_cos(x: f64) -> f64 {
    const C1: f64 = 4.166_666_666_666_660e-2;
    const C2: f64 = -1.388_888_888_887_411e-3;
    const C3: f64 = 2.480_158_728_947_673e-5;
    const C4: f64 = -2.755_731_435_139_066_3e-7;
    const C5: f64 = 2.087_572_321_298_175e-9;
    const C6: f64 = -1.135_964_755_778_819_5e-11;
    let z = x * x;
    let r = z * (C1 + z * (C2 + z * (C3 + z * (C4 + z * (C5 + z * C6)))));
    let hz = 0.5 * z;
    let w = 1.0 - hz;
    w + (((1.0 - w) - hz) + z * r)
}

/// `(sin x, cos x)` in f64 for |x| < 2^19, by explicit arithmetic only.
pub fn sincos(x: f64) -> (f64, f64) {
    let n = (x * INV_PIO2).round_ties_even();
    let r = ((x - n * PIO2_1) - n * PIO2_2) - n * PIO2_3;
    let (s, c) = (kernel_sin(r), kernel_cos(r));
    match (n as i64).rem_euclid(4) {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_accuracy() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp(x) as f64;
            let want = (x as f64).exp();
            let rel = ((got - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 3.0e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(200.0), f32::INFINITY);
        assert_eq!(exp(f32::NAN), exp(EXP_LO));
        assert!(exp(-100.0) > 0.0 && exp(-100.0) < 1e-40); // subnormal range is handled
    }

    #[test]
    fn sincos_accuracy() {
        let mut x = 0.0f64;
        while x < 9000.0 {
            let (s, c) = sincos(x);
            assert!((s - x.sin()).abs() < 1e-12, "sin {x}");
            assert!((c - x.cos()).abs() < 1e-12, "cos {x}");
            x += 0.731;
        }
        let (s, c) = sincos(-2.5);
        assert!((s - (-2.5f64).sin()).abs() < 1e-15 && (c - (-2.5f64).cos()).abs() < 1e-15);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp8_matches_scalar() {
        use std::arch::x86_64::*;
        if !crate::Isa::Avx2Fma.available() {
            return;
        }
        let mut xs: Vec<f32> = (0..20000).map(|i| -110.0 + i as f32 * 0.01).collect();
        xs.extend([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            0.0,
            88.7,
            88.75,
            -87.4,
            -103.9,
        ]);
        while xs.len() % 8 != 0 {
            xs.push(1.0);
        }
        for ch in xs.chunks(8) {
            let mut out = [0f32; 8];
            let mut out2 = [0f32; 8];
            // SAFETY: AVX2/FMA are available (checked at the top); `ch` and the outputs hold 8 f32.
            unsafe {
                let v = _mm256_loadu_ps(ch.as_ptr());
                _mm256_storeu_ps(out.as_mut_ptr(), avx2::exp8(v));
                _mm256_storeu_ps(out2.as_mut_ptr(), avx2::silu8(v));
            }
            for i in 0..8 {
                assert_eq!(out[i].to_bits(), exp(ch[i]).to_bits(), "exp({})", ch[i]);
                let s = silu(ch[i]);
                assert!(
                    out2[i].to_bits() == s.to_bits() || (s.is_nan() && out2[i].is_nan()),
                    "silu({})",
                    ch[i]
                );
            }
        }
    }
}
