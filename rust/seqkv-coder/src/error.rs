//! The one error type of the crate. `seqkv-py` maps each variant onto the
//! Python class of the same name in `seqkv.errors`.

use std::fmt;

/// What went wrong. Every fallible function of the crate returns this; nothing panics on bad input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// A caller-supplied argument is out of range (frequency 0 for the coded symbol, a table that
    /// does not sum to `2^precision`, NaN or +inf logits, a symbol >= the alphabet size, ...).
    InvalidInput(String),
    /// A coded stream or container is truncated, bit-flipped or otherwise not decodable.
    CorruptStream(String),
    /// A container was written by a format (or quantizer) version this crate cannot read.
    FormatVersion(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidInput(m) | Error::CorruptStream(m) | Error::FormatVersion(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn invalid<T>(message: impl Into<String>) -> Result<T> {
    Err(Error::InvalidInput(message.into()))
}

pub(crate) fn corrupt<T>(message: impl Into<String>) -> Result<T> {
    Err(Error::CorruptStream(message.into()))
}
