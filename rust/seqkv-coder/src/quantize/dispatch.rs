//! Per-pass dispatch between the scalar and AVX2 paths, under a default MXCSR.

use super::*;

/// Holds the SSE control register at its default for the duration of a pass: round to nearest
/// even, no flush-to-zero or denormals-are-zero, all exceptions masked. Another library may have
/// changed it in this thread (e.g. `torch.set_flush_denormal`), which would change comparisons of
/// denormal logits and the rounding of the AVX2 conversion.
pub(super) struct MxcsrGuard {
    #[cfg(target_arch = "x86_64")]
    saved: Option<u32>,
}

#[cfg(target_arch = "x86_64")]
pub(super) const MXCSR_DEFAULT: u32 = 0x1f80;

impl MxcsrGuard {
    #[inline]
    pub(super) fn new() -> Self {
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

pub(super) fn row_max(x: &[f32], path: Path) -> Result<Option<f32>> {
    let _csr = MxcsrGuard::new();
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Path::checked` only yields Avx2 when the CPU has AVX2.
        Path::Avx2 => unsafe { avx2::max(x) },
        _ => max_scalar(x),
    }
}

pub(super) fn row_first_equal(x: &[f32], m: f32, path: Path) -> usize {
    let _csr = MxcsrGuard::new();
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Path::Avx2 => unsafe { avx2::first_equal(x, m) },
        _ => first_equal_scalar(x, m),
    }
}

pub(super) fn row_weights(x: &[f32], m: f32, w: &mut [u32], path: Path, prefetch: &[f32]) -> u64 {
    let _csr = MxcsrGuard::new();
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Path::Avx2 => unsafe { avx2::weights(x, m, w, prefetch) },
        _ => weights_scalar(x, m, w),
    }
}

pub(super) fn row_block_prefix(w: &[u32], k: u64, prefix: &mut Vec<u64>, path: Path) -> u64 {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above; k < 2^32 for rows with a finite entry.
        Path::Avx2 if k < 1 << 32 => unsafe { avx2::block_prefix(w, k, prefix) },
        _ => block_prefix_scalar(w, k, prefix),
    }
}

pub(super) fn row_floors(w: &mut [u32], k: u64, path: Path) -> u64 {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Path::Avx2 if k < 1 << 32 => unsafe { avx2::floors(w, k) },
        _ => floors_scalar(w, k),
    }
}
