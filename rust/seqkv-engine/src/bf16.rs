//! bfloat16 storage: the upper 16 bits of an IEEE f32.

/// Rounds an f32 to the nearest bf16 (ties to even), as `torch.Tensor.to(torch.bfloat16)` does.
/// NaN stays NaN (quiet); infinities stay infinite.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x0040;
    }
    let lsb = (bits >> 16) & 1;
    ((bits as u64 + 0x7fff + lsb as u64) >> 16) as u16
}

/// Widens a bf16 to f32 (exact).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Rounds an f32 to the nearest value representable in bf16, kept as f32.
#[inline]
pub fn round_to_bf16(x: f32) -> f32 {
    bf16_to_f32(f32_to_bf16(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_ties() {
        for &x in &[
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            3.0e38,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1.0e-40,
        ] {
            assert_eq!(
                round_to_bf16(round_to_bf16(x)).to_bits(),
                round_to_bf16(x).to_bits()
            );
        }
        // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: ties to even -> 1.
        assert_eq!(round_to_bf16(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3*2^-8 is a tie between 1+2^-7 and 1+2^-6: even is 1 + 2^-6.
        assert_eq!(round_to_bf16(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert!(round_to_bf16(f32::NAN).is_nan());
        assert_eq!(round_to_bf16(f32::MAX), f32::INFINITY);
    }
}
