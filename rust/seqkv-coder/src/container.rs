//! The `SQKV` container (format version 1), byte by byte in `docs/format.md`.
//!
//! A header (codec, precision, token count, vocabulary, model fingerprint, numerics profile,
//! compute schedule, codec parameters; CRC-32C protected), then blocks (token count, payload,
//! CRC-32C of the block, CRC-32C of the block's decoded token ids), then the CRC-32C of all
//! decoded token ids. [`unpack`] validates every field and every checksum it can check without
//! decoding; the codec checks the token checksums after decoding ([`crate::crc32c::tokens_crc32c`]).
//! Integers are little-endian.

use crate::crc32c::{crc32c, crc32c_combine};
use crate::error::{Error, Result};
use crate::quantize::QUANTIZER_VERSION;
use crate::range::MAX_PRECISION;

/// The four magic bytes.
pub const MAGIC: [u8; 4] = *b"SQKV";
/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Bound on the token count of a container (`2^48`).
pub const MAX_TOKENS: u64 = 1 << 48;
/// Bound on the expanded length of the compute schedule (sum of the repeats).
pub const MAX_SCHEDULE_ENTRIES: u64 = 1 << 24;
/// Largest vocabulary size (`2^24`).
pub const MAX_VOCAB: u32 = 1 << 24;

/// Bytes of the fixed part of the header (magic .. vocab size).
const FIXED: usize = 21;
/// Bytes of the smallest valid container (empty variable fields, no blocks).
pub const MIN_LEN: usize = FIXED + 4 + 4 + 4 + 4 + 4 + 4 + 4;
/// Bytes of a block without its payload.
const BLOCK_OVERHEAD: usize = 16;

/// The codec that wrote the payloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Codec {
    /// Fixed-width token ids.
    Raw = 1,
    /// Prefix-trie / PPM context model, no neural model.
    Plt = 2,
    /// Arithmetic coding under the language model's distributions.
    Lm = 3,
    /// `lm` tolerant of small logit differences between the two ends.
    LmRobust = 4,
    /// Entropy-coded KV residual.
    Residual = 5,
    /// One static frequency table.
    Static = 6,
}

impl Codec {
    /// All codecs, in id order.
    pub const ALL: [Codec; 6] = [Codec::Raw, Codec::Plt, Codec::Lm, Codec::LmRobust, Codec::Residual, Codec::Static];

    /// The id stored in the header.
    pub fn id(self) -> u8 {
        self as u8
    }

    /// The codec of an id.
    pub fn from_id(id: u8) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| c.id() == id)
    }

    /// The Python-facing name: `raw`, `plt`, `lm`, `lm-robust`, `residual`, `static`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::Plt => "plt",
            Codec::Lm => "lm",
            Codec::LmRobust => "lm-robust",
            Codec::Residual => "residual",
            Codec::Static => "static",
        }
    }

    /// The codec of a name.
    pub fn from_name(name: &str) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// The container header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub codec: Codec,
    pub quantizer_version: u8,
    /// `1..=24`.
    pub precision: u8,
    /// Sum of the blocks' token counts.
    pub token_count: u64,
    /// `1..=2^24`.
    pub vocab_size: u32,
    /// Hash of weights, config and tokenizer (any bytes, may be empty).
    pub model_fingerprint: Vec<u8>,
    /// UTF-8 JSON (may be empty).
    pub numerics_profile: String,
    /// Compute schedule, expanded (chunk sizes, each >= 1); stored run-length encoded.
    pub schedule: Vec<u32>,
    /// Codec parameters (any bytes).
    pub params: Vec<u8>,
}

impl Header {
    /// A header with the given codec, precision, token count and vocabulary, the current
    /// quantizer version and empty variable fields.
    pub fn new(codec: Codec, precision: u8, token_count: u64, vocab_size: u32) -> Header {
        Header {
            codec,
            quantizer_version: QUANTIZER_VERSION,
            precision,
            token_count,
            vocab_size,
            model_fingerprint: Vec::new(),
            numerics_profile: String::new(),
            schedule: Vec::new(),
            params: Vec::new(),
        }
    }

    /// Checks the fields' ranges (`InvalidInput` when packing, `CorruptStream` / `FormatVersion`
    /// when unpacking).
    fn validate(&self, bad: fn(String) -> Error) -> Result<()> {
        if self.quantizer_version != QUANTIZER_VERSION {
            return Err(Error::FormatVersion(format!(
                "quantizer version {} is not supported (this build has version {QUANTIZER_VERSION})",
                self.quantizer_version
            )));
        }
        if !(1..=MAX_PRECISION as u8).contains(&self.precision) {
            return Err(bad(format!("precision {} outside 1..={MAX_PRECISION}", self.precision)));
        }
        if self.vocab_size == 0 || self.vocab_size > MAX_VOCAB {
            return Err(bad(format!("vocab size {} outside 1..={MAX_VOCAB}", self.vocab_size)));
        }
        if self.token_count > MAX_TOKENS {
            return Err(bad(format!("token count {} above {MAX_TOKENS}", self.token_count)));
        }
        if self.schedule.len() as u64 > MAX_SCHEDULE_ENTRIES {
            return Err(bad(format!("schedule has more than {MAX_SCHEDULE_ENTRIES} entries")));
        }
        if self.schedule.contains(&0) {
            return Err(bad("schedule has a chunk of size 0".into()));
        }
        Ok(())
    }
}

/// One block of coded tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// Tokens coded in this block.
    pub n_tokens: u32,
    /// The codec's bytes.
    pub payload: Vec<u8>,
    /// CRC-32C of this block's decoded token ids as `u32` little-endian.
    pub tokens_crc32c: u32,
}

/// An unpacked container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub header: Header,
    pub blocks: Vec<Block>,
    /// CRC-32C of all decoded token ids (`u32` little-endian), as stored.
    pub tokens_crc32c: u32,
}

/// The whole-message token checksum implied by the blocks' checksums.
pub fn combined_tokens_crc32c(blocks: &[Block]) -> u32 {
    blocks.iter().fold(0, |acc, b| crc32c_combine(acc, b.tokens_crc32c, 4 * b.n_tokens as u64))
}

fn run_length(schedule: &[u32]) -> Vec<(u32, u32)> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &s in schedule {
        match runs.last_mut() {
            Some((size, repeat)) if *size == s && *repeat < u32::MAX => *repeat += 1,
            _ => runs.push((s, 1)),
        }
    }
    runs
}

fn put_bytes(out: &mut Vec<u8>, field: &str, bytes: &[u8]) -> Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| Error::InvalidInput(format!("{field} longer than 4 GiB")))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Serialises a container. The overall token checksum is derived from the blocks' checksums.
/// Errors with `InvalidInput` on out-of-range fields or when the blocks' token counts do not sum
/// to `header.token_count`.
pub fn pack(header: &Header, blocks: &[Block]) -> Result<Vec<u8>> {
    header.validate(Error::InvalidInput)?;
    let total: u64 = blocks.iter().map(|b| b.n_tokens as u64).sum();
    if total != header.token_count {
        return Err(Error::InvalidInput(format!(
            "blocks hold {total} tokens, the header says {}",
            header.token_count
        )));
    }
    let block_count =
        u32::try_from(blocks.len()).map_err(|_| Error::InvalidInput("more than 2^32 - 1 blocks".into()))?;
    let mut out = Vec::with_capacity(64 + blocks.iter().map(|b| b.payload.len() + BLOCK_OVERHEAD).sum::<usize>());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&[header.codec.id(), header.quantizer_version, header.precision]);
    out.extend_from_slice(&header.token_count.to_le_bytes());
    out.extend_from_slice(&header.vocab_size.to_le_bytes());
    put_bytes(&mut out, "model fingerprint", &header.model_fingerprint)?;
    put_bytes(&mut out, "numerics profile", header.numerics_profile.as_bytes())?;
    let runs = run_length(&header.schedule);
    out.extend_from_slice(&(runs.len() as u32).to_le_bytes());
    for (size, repeat) in runs {
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&repeat.to_le_bytes());
    }
    put_bytes(&mut out, "codec params", &header.params)?;
    out.extend_from_slice(&block_count.to_le_bytes());
    let crc = crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    for b in blocks {
        let start = out.len();
        out.extend_from_slice(&b.n_tokens.to_le_bytes());
        put_bytes(&mut out, "block payload", &b.payload)?;
        let crc = crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&b.tokens_crc32c.to_le_bytes());
    }
    out.extend_from_slice(&combined_tokens_crc32c(blocks).to_le_bytes());
    Ok(out)
}

/// A bounds-checked little-endian reader; running out of data is `CorruptStream`.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.data.len() - self.pos < n {
            return Err(Error::CorruptStream(format!(
                "container truncated: {what} needs {n} bytes at offset {}, {} left",
                self.pos,
                self.data.len() - self.pos
            )));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    /// A u32 length, checked against the remaining data before anything is allocated.
    fn bytes(&mut self, what: &str) -> Result<&'a [u8]> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
}

fn corrupt(message: impl Into<String>) -> Error {
    Error::CorruptStream(message.into())
}

/// Parses and validates a container. Errors: `CorruptStream` (bad magic, truncation, checksum
/// mismatch, inconsistent counts, trailing data, out-of-range fields), `FormatVersion` (a format
/// or quantizer version or codec id this build does not know).
pub fn unpack(data: &[u8]) -> Result<Container> {
    let mut r = Reader { data, pos: 0 };
    if r.take(4, "magic")? != MAGIC {
        return Err(corrupt("not a seqkv container (bad magic)"));
    }
    let version = r.u16("format version")?;
    if version == 0 {
        return Err(corrupt("container format version 0 does not exist"));
    }
    if version != FORMAT_VERSION {
        return Err(Error::FormatVersion(format!(
            "container format version {version} is not supported (this build reads version {FORMAT_VERSION})"
        )));
    }
    if data.len() < MIN_LEN {
        return Err(corrupt(format!("container truncated: {} bytes, a container has at least {MIN_LEN}", data.len())));
    }
    let codec_id = r.u8("codec id")?;
    let quantizer_version = r.u8("quantizer version")?;
    let precision = r.u8("precision")?;
    let token_count = r.u64("token count")?;
    let vocab_size = r.u32("vocab size")?;
    debug_assert_eq!(r.pos, FIXED);
    let model_fingerprint = r.bytes("model fingerprint")?;
    let numerics_profile = r.bytes("numerics profile")?;
    let runs = r.u32("schedule length")? as usize;
    let schedule_bytes = r.take(runs.checked_mul(8).ok_or_else(|| corrupt("schedule too long"))?, "schedule")?;
    let params = r.bytes("codec params")?;
    let block_count = r.u32("block count")? as usize;
    let header_end = r.pos;
    let stored = r.u32("header checksum")?;
    if crc32c(&data[..header_end]) != stored {
        return Err(corrupt("container header checksum mismatch"));
    }

    let codec = Codec::from_id(codec_id)
        .ok_or_else(|| Error::FormatVersion(format!("unknown codec id {codec_id} (written by a newer seqkv?)")))?;
    let numerics_profile = std::str::from_utf8(numerics_profile)
        .map_err(|_| corrupt("numerics profile is not UTF-8"))?
        .to_owned();
    let mut expanded = 0u64;
    for pair in schedule_bytes.chunks_exact(8) {
        let size = u32::from_le_bytes(pair[..4].try_into().unwrap());
        let repeat = u32::from_le_bytes(pair[4..].try_into().unwrap());
        if size == 0 || repeat == 0 {
            return Err(corrupt("schedule run with size or repeat 0"));
        }
        expanded += repeat as u64;
        if expanded > MAX_SCHEDULE_ENTRIES {
            return Err(corrupt(format!("schedule longer than {MAX_SCHEDULE_ENTRIES} entries")));
        }
    }
    let mut schedule = Vec::with_capacity(expanded as usize);
    for pair in schedule_bytes.chunks_exact(8) {
        let size = u32::from_le_bytes(pair[..4].try_into().unwrap());
        let repeat = u32::from_le_bytes(pair[4..].try_into().unwrap());
        schedule.extend(std::iter::repeat_n(size, repeat as usize));
    }
    let header = Header {
        codec,
        quantizer_version,
        precision,
        token_count,
        vocab_size,
        model_fingerprint: model_fingerprint.to_vec(),
        numerics_profile,
        schedule,
        params: params.to_vec(),
    };
    header.validate(Error::CorruptStream)?;

    if block_count > r.remaining() / BLOCK_OVERHEAD {
        return Err(corrupt(format!("container truncated: {block_count} blocks cannot fit")));
    }
    let mut blocks = Vec::with_capacity(block_count);
    let mut total = 0u64;
    for i in 0..block_count {
        let start = r.pos;
        let n_tokens = r.u32("block token count")?;
        let payload = r.bytes("block payload")?;
        let crc = crc32c(&data[start..r.pos]);
        if r.u32("block checksum")? != crc {
            return Err(corrupt(format!("block {i} checksum mismatch")));
        }
        let tokens_crc32c = r.u32("block token checksum")?;
        total += n_tokens as u64;
        blocks.push(Block { n_tokens, payload: payload.to_vec(), tokens_crc32c });
    }
    if total != token_count {
        return Err(corrupt(format!("blocks hold {total} tokens, the header says {token_count}")));
    }
    let tokens_crc32c = r.u32("token checksum")?;
    if tokens_crc32c != combined_tokens_crc32c(&blocks) {
        return Err(corrupt("token checksum does not match the blocks' token checksums"));
    }
    if r.remaining() != 0 {
        return Err(corrupt(format!("{} bytes of trailing data after the container", r.remaining())));
    }
    Ok(Container { header, blocks, tokens_crc32c })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crc32c::tokens_crc32c;

    fn sample() -> (Header, Vec<Block>) {
        let mut h = Header::new(Codec::Lm, 24, 7, 49152);
        h.model_fingerprint = vec![1, 2, 3];
        h.numerics_profile = "{\"device\":\"cpu\"}".into();
        h.schedule = vec![4, 1, 1, 1];
        h.params = b"xy".to_vec();
        let blocks = vec![
            Block { n_tokens: 4, payload: vec![9, 8, 7], tokens_crc32c: tokens_crc32c(&[1, 2, 3, 4]) },
            Block { n_tokens: 3, payload: vec![], tokens_crc32c: tokens_crc32c(&[5, 6, 7]) },
        ];
        (h, blocks)
    }

    #[test]
    fn round_trip_and_corruption_sweep() {
        let (h, blocks) = sample();
        let data = pack(&h, &blocks).unwrap();
        let c = unpack(&data).unwrap();
        assert_eq!(c.header, h);
        assert_eq!(c.blocks, blocks);
        assert_eq!(c.tokens_crc32c, tokens_crc32c(&[1, 2, 3, 4, 5, 6, 7]));
        for len in 0..data.len() {
            assert!(unpack(&data[..len]).is_err(), "truncated at {len}");
        }
        for i in 0..data.len() {
            for bit in 0..8 {
                let mut d = data.clone();
                d[i] ^= 1 << bit;
                match unpack(&d) {
                    Err(_) => {}
                    Ok(c2) => assert_eq!(c2, c, "flip at byte {i} bit {bit} accepted with a different result"),
                }
            }
        }
        let mut longer = data.clone();
        longer.push(0);
        assert!(unpack(&longer).is_err());
    }

    #[test]
    fn pack_validates() {
        let (mut h, blocks) = sample();
        h.token_count = 8;
        assert!(pack(&h, &blocks).is_err());
        let (mut h, blocks) = sample();
        h.precision = 25;
        assert!(pack(&h, &blocks).is_err());
        let (mut h, blocks) = sample();
        h.schedule.push(0);
        assert!(pack(&h, &blocks).is_err());
    }
}
