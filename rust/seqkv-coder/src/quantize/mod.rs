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

//!
//! Layers, one module each: `scalar` (the reference passes), `avx2` (the vector passes),
//! `dispatch` (path choice and the MXCSR guard), `table` (materialised tables),
//! `row_model` (the fused model), `bulk` (coding many rows). This file holds the constants,
//! [`Path`] and the public names.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod bulk;
mod dispatch;
mod row_model;
mod scalar;
mod table;
#[cfg(test)]
mod tests;

pub use bulk::{decode_logits, encode_logits};
pub use row_model::{compute_rows, LogitsRowModel, RowStats};
pub use table::{quantize_row, quantize_row_with, quantize_rows};

use dispatch::*;
use scalar::*;

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
