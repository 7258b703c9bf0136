//! `seqkv-ppm`: the `plt` codec's model — a deterministic integer context model over
//! token ids (PPM family: hashed contexts of the previous tokens blended Kneser-Ney
//! style, a match model for long repeats, escapes refined by adaptive probability
//! maps, an order-0 stage with a recency bonus, and a static order -1 table), coded
//! with `seqkv_coder::range`. The algorithm is described in [`model`].
//!
//! No floating point touches the coded path, so a stream decodes bit-identically on
//! every machine. A model can be *primed* with tokens both ends already share (the
//! trie-matched prefix of a session, other sessions); decoding needs the same primer.
//!
//! ```
//! use seqkv_ppm::{Model, Params};
//! let params = Params::new(1000, 4).unwrap();
//! let mut base = Model::with_params(&params).unwrap();
//! base.prime(&[1, 2, 3, 1, 2, 3]).unwrap();
//! let tokens = [1u32, 2, 3, 4, 1, 2, 3, 4];
//! let payloads = seqkv_ppm::encode(&base, &tokens, 4096).unwrap();
//! let blocks: Vec<(&[u8], usize)> = payloads.iter().map(|p| (p.as_slice(), tokens.len())).collect();
//! assert_eq!(seqkv_ppm::decode(&base, &blocks).unwrap(), tokens);
//! ```

pub mod apm;
pub mod channel;
pub mod fenwick;
pub mod model;

use seqkv_coder::range::{Decoder, Encoder};

use channel::{CostChannel, DecodeChannel, EncodeChannel};
pub use model::{Model, Tuning, MAX_ORDER};

/// Errors of the `plt` codec.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// Bad argument: token id >= vocab size, unknown profile, order out of range, ...
    #[error("{0}")]
    InvalidInput(String),
    /// The coded stream cannot be decoded (truncated, bit-flipped, wrong primer, ...).
    #[error("{0}")]
    CorruptStream(String),
    /// A broken invariant of the model (a bug): never expected.
    #[error("internal error in the plt model: {0}")]
    Internal(String),
}

/// The tuning profiles this build knows. The profile is recorded in every stream.
pub const PROFILES: [u8; 1] = [1];
/// Default context order.
pub const DEFAULT_ORDER: u8 = 4;

/// What a decoder must know besides the payloads: vocabulary, order, tuning profile,
/// and which primer the model had (token count and CRC-32C of its ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub vocab_size: u32,
    pub order: u8,
    pub profile: u8,
    /// Tokens the model had seen before the message (the primer).
    pub primer_tokens: u64,
    /// CRC-32C of the primer's ids (u32 little-endian); 0 for no primer.
    pub primer_crc32c: u32,
}

impl Params {
    /// Parameters of an unprimed model with the default profile.
    pub fn new(vocab_size: u32, order: u8) -> Result<Self, Error> {
        let p = Params { vocab_size, order, profile: PROFILES[PROFILES.len() - 1], primer_tokens: 0, primer_crc32c: 0 };
        p.validate()?;
        Ok(p)
    }

    fn validate(&self) -> Result<(), Error> {
        if self.vocab_size == 0 || self.vocab_size > 1 << 24 {
            return Err(Error::InvalidInput(format!("vocab_size must be in 1..=2^24, got {}", self.vocab_size)));
        }
        if self.order as usize > MAX_ORDER {
            return Err(Error::InvalidInput(format!("order must be in 0..={MAX_ORDER}, got {}", self.order)));
        }
        if !PROFILES.contains(&self.profile) {
            return Err(Error::InvalidInput(format!("plt profile {} is not known to this build", self.profile)));
        }
        Ok(())
    }

    /// The tuning constants of the profile.
    pub fn tuning(&self) -> Tuning {
        Tuning::profile1()
    }

    /// Profile (u8), order (u8), then, only for a primed model, the primer's token count
    /// (LEB128) and CRC-32C (u32 LE): 2 bytes without a primer. (The vocabulary size lives
    /// in the container header.)
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![self.profile, self.order];
        if self.primer_tokens > 0 {
            let mut n = self.primer_tokens;
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    b.push(byte);
                    break;
                }
                b.push(byte | 0x80);
            }
            b.extend_from_slice(&self.primer_crc32c.to_le_bytes());
        }
        b
    }

    /// Parses [`to_bytes`](Self::to_bytes); `CorruptStream` on a malformed field,
    /// `InvalidInput` on a profile or order this build does not support.
    pub fn from_bytes(bytes: &[u8], vocab_size: u32) -> Result<Self, Error> {
        let bad = || Error::CorruptStream("plt parameters are malformed".into());
        let (&profile, rest) = bytes.split_first().ok_or_else(bad)?;
        let (&order, rest) = rest.split_first().ok_or_else(bad)?;
        let (mut primer_tokens, mut primer_crc32c) = (0u64, 0u32);
        if !rest.is_empty() {
            let mut i = 0;
            loop {
                let byte = *rest.get(i).ok_or_else(bad)?;
                if i == 9 && byte > 1 {
                    return Err(bad());
                }
                primer_tokens |= ((byte & 0x7f) as u64) << (7 * i);
                i += 1;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            let crc: [u8; 4] = rest[i..].try_into().map_err(|_| bad())?;
            primer_crc32c = u32::from_le_bytes(crc);
            if primer_tokens == 0 || (i > 1 && rest[i - 1] == 0) {
                return Err(bad()); // not the canonical encoding
            }
        }
        let p = Params { vocab_size, profile, order, primer_tokens, primer_crc32c };
        p.validate()?;
        Ok(p)
    }
}

impl Model {
    /// A fresh (unprimed) model for `params` (its primer fields are ignored).
    pub fn with_params(params: &Params) -> Result<Self, Error> {
        params.validate()?;
        Model::new(params.vocab_size, params.order as usize, params.tuning())
    }

    /// The parameters a stream coded from this model's current state records.
    pub fn params(&self) -> Params {
        Params {
            vocab_size: self.vocab(),
            order: self.order() as u8,
            profile: PROFILES[PROFILES.len() - 1],
            primer_tokens: self.seen_tokens(),
            primer_crc32c: self.history_crc32c(),
        }
    }

    /// Feeds tokens both ends share into the model without coding them. All ids are
    /// checked first: on error the model is unchanged.
    pub fn prime(&mut self, tokens: &[u32]) -> Result<(), Error> {
        check_tokens(tokens, self.vocab())?;
        for &t in tokens {
            self.observe(t)?;
        }
        Ok(())
    }
}

fn check_tokens(tokens: &[u32], vocab: u32) -> Result<(), Error> {
    if let Some(&bad) = tokens.iter().find(|&&t| t >= vocab) {
        return Err(Error::InvalidInput(format!("token id {bad} is out of range for vocab size {vocab}")));
    }
    Ok(())
}

/// Codes `tokens` from (a copy of) `model`: one payload per block of `block_tokens`
/// tokens. The model state carries over from block to block; the range coder restarts.
pub fn encode(model: &Model, tokens: &[u32], block_tokens: usize) -> Result<Vec<Vec<u8>>, Error> {
    if block_tokens == 0 || block_tokens > u32::MAX as usize {
        return Err(Error::InvalidInput("block_tokens must be in 1..=2^32-1".into()));
    }
    check_tokens(tokens, model.vocab())?;
    let mut m = model.clone();
    let mut out = Vec::with_capacity(tokens.len().div_ceil(block_tokens));
    for block in tokens.chunks(block_tokens) {
        let mut enc = Encoder::new(16).map_err(|e| Error::Internal(e.to_string()))?;
        for &t in block {
            let mut ch = EncodeChannel { enc: &mut enc, sym: t };
            m.step(&mut ch)?;
        }
        out.push(enc.finish_bytes());
    }
    Ok(out)
}

/// Every coded token costs at least -log2(65504/65536) bits (one binary decision at
/// the clamped probability), except possibly the first: a bound on the tokens a payload
/// can hold, so that a corrupt token count cannot make the decoder run for ages.
pub fn max_tokens_for_payload(payload_len: usize) -> u64 {
    1 + (payload_len as u64 * 8 + 64) * 1420
}

/// Decodes blocks `(payload, n_tokens)` coded by [`encode`] from a model in the same
/// state as `model` (same parameters, same primer).
pub fn decode(model: &Model, blocks: &[(&[u8], usize)]) -> Result<Vec<u32>, Error> {
    let mut m = model.clone();
    let total: usize = blocks.iter().map(|b| b.1).sum();
    let mut out = Vec::with_capacity(total.min(1 << 24));
    for &(payload, n) in blocks {
        if n as u64 > max_tokens_for_payload(payload.len()) {
            return Err(Error::CorruptStream(format!("a {}-byte plt block cannot hold {n} tokens", payload.len())));
        }
        let mut dec = Decoder::from_bytes(payload, 16).map_err(|e| Error::Internal(e.to_string()))?;
        for _ in 0..n {
            let mut ch = DecodeChannel { dec: &mut dec };
            out.push(m.step(&mut ch)?);
        }
        dec.finish().map_err(|e| Error::CorruptStream(e.to_string()))?;
    }
    Ok(out)
}

/// The model's ideal code length of `tokens` in bits (Σ -log2 p), from a copy of `model`.
pub fn cost_bits(model: &Model, tokens: &[u32]) -> Result<f64, Error> {
    check_tokens(tokens, model.vocab())?;
    let mut m = model.clone();
    let mut ch = CostChannel::default();
    for &t in tokens {
        ch.sym = t;
        m.step(&mut ch)?;
    }
    Ok(ch.bits)
}
