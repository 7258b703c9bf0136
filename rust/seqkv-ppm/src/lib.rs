//! seqkv-ppm: a deterministic integer context model over token ids (the `plt` codec).

pub mod apm;
pub mod channel;
pub mod fenwick;
pub mod model;

pub use model::{Model, Tuning};

/// Errors of the `plt` codec.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("corrupt stream: {0}")]
    Corrupt(&'static str),
}
