//! `seqkv-coder`: entropy coding for seqkv, in pure Rust (no PyO3).
//!
//! * [`range`]: the range coder (`u32` words, `u64` state, FIFO order), [`range::Encoder`] and
//!   [`range::Decoder`], driven by `(cum_low, freq)` slices of integer tables.
//! * [`quantize`]: the deterministic map logits → integer frequencies of `docs/numerics.md`
//!   (quantizer v1), a fused per-row model that codes from logits without building the table,
//!   and bulk helpers parallel over rows.
//! * [`table`]: coding with explicit frequency tables (one static table, or one per step).
//! * [`adaptive`]: an adaptive frequency model (Fenwick tree, deterministic increment/halving).
//! * [`bits`]: fixed-width bit packing (MSB-first as the `raw` codec, or LSB-first).
//! * [`crc32c`]: CRC-32C (Castagnoli), hardware-accelerated where available.
//! * [`container`]: the `SQKV` container format (`docs/format.md`).

pub mod adaptive;
pub mod bits;
pub mod container;
pub mod crc32c;
pub mod error;
pub mod exp2_table;
pub mod quantize;
pub mod range;
pub mod table;

pub use error::{Error, Result};
