//! Batch-invariant CPU forward pass for Llama-family causal language models.
//!
//! Every result a token gets — its keys and values in every layer and its
//! next-token logits — is the same bits however the tokens are scheduled: one
//! prefill, any chunking, single decode steps, alone or batched with other
//! sequences. This holds by construction: each kernel fixes the order of every
//! floating-point reduction per output element (see [`matmul`], [`ops`]), and
//! nothing a kernel computes for one row depends on the other rows. The scalar
//! and AVX2 code paths implement the same operation sequence, so the bits do not
//! depend on the instruction set either (tested).
//!
//! Weights are stored in bf16, f32 or the GGUF's own blocks (Q4_0, Q4_1, Q8_0: [`quant`],
//! de-quantized exactly in registers) and accumulated in f32.

// Kernels index several arrays with one loop variable and spell constants as their reference
// implementations do; these lints would make them harder to compare with the definitions.
#![allow(
    clippy::needless_range_loop,
    clippy::excessive_precision,
    clippy::approx_constant,
    clippy::too_many_arguments,
    clippy::manual_is_multiple_of
)]

pub mod bf16;
pub mod isa;
pub mod kv;
pub mod math;
pub mod matmul;
pub mod model;
pub mod ops;
pub mod probe;
pub mod quant;

pub use isa::Isa;
pub use kv::{KvDtype, KvLayout, Page, Sequence};
pub use matmul::{matmul, PackedMatrix, Stored, WeightDtype};
pub use model::{Config, Logits, Model, PACKED_STATE_VERSION};
pub use quant::BlockType;

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// An argument is out of range or inconsistent.
    #[error("{0}")]
    InvalidInput(String),
}
