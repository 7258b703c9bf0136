//! Range coder: `u32` words, `u64` state, FIFO (queue) order.
//!
//! The coder narrows an interval `[low, low + range)` once per symbol. A symbol is given to it as
//! its slice `[cum_low, cum_low + freq)` of a table whose frequencies sum to a *total*:
//!
//! * [`Encoder::encode`] / [`Decoder::target`] use `total = 2^precision` (`precision` in
//!   `1..=24`, fixed when the coder is made). This is the path for quantized tables
//!   ([`crate::quantize`]); the scale is a shift.
//! * [`Encoder::encode_with_total`] / [`Decoder::target_with_total`] take any total in
//!   `1..=2^24` per symbol, for adaptive models ([`crate::adaptive`], PPM) whose counts do not sum
//!   to a power of two; the scale is one `u64` division.
//!
//! Both can be mixed freely in one stream, as long as the decoder makes the same calls in the same
//! order as the encoder. Symbols come out in the order they went in (a queue), so a streaming
//! decoder can build the table for symbol `i + 1` from the symbols `0..=i` it already decoded.
//!
//! ```
//! use seqkv_coder::range::{Encoder, Decoder};
//! // A 3-symbol table at precision 4: frequencies 3, 8, 5 (sum 16 = 2^4).
//! let cum = [0u32, 3, 11, 16];
//! let message = [1usize, 2, 1, 0, 1];
//! let mut enc = Encoder::new(4).unwrap();
//! for &s in &message {
//!     enc.encode(cum[s], cum[s + 1] - cum[s]).unwrap();
//! }
//! let bytes = enc.finish_bytes();
//!
//! let mut dec = Decoder::from_bytes(&bytes, 4).unwrap();
//! for &s in &message {
//!     let t = dec.target().unwrap(); // a value in [0, 16)
//!     let sym = (0..3).find(|&i| cum[i + 1] > t).unwrap();
//!     assert_eq!(sym, s);
//!     dec.advance(cum[sym], cum[sym + 1] - cum[sym]).unwrap();
//! }
//! dec.finish().unwrap(); // the whole stream was consumed
//! ```
//!
//! # Stream format
//!
//! The code is a base-2^32 fraction: [`Encoder::finish`] returns its words, most significant
//! first, with trailing zero words removed; [`Encoder::finish_bytes`] writes each word big-endian
//! and removes trailing zero bytes. The decoder reads missing words/bytes as zeros, so the
//! trimmed stream decodes exactly like the untrimmed one. The flush picks, inside the final
//! interval, the value with the most trailing zero bits: the whole overhead of a message is at
//! most one word (usually one to three bytes) on top of the information content.
//!
//! # Corrupt streams
//!
//! A [`Decoder`] never panics and never loops: every call does a bounded amount of work. A target
//! outside the table (a value that no valid stream can produce) is reported as
//! [`Error::CorruptStream`]; otherwise a damaged stream decodes to garbage symbols, which the
//! container's per-block token checksums catch. [`Decoder::finish`] reports unread trailing data.

use crate::error::{corrupt, invalid, Result};
#[cfg(doc)]
use crate::error::Error;

/// Largest supported precision: tables sum to at most `2^24`.
pub const MAX_PRECISION: u32 = 24;
/// Largest total accepted by [`Encoder::encode_with_total`] / [`Decoder::target_with_total`].
pub const MAX_TOTAL: u32 = 1 << MAX_PRECISION;

/// After every symbol `range >= 2^32`; `scale = range >> precision >= 2^8` keeps the rounding
/// loss of a symbol below `2^-8` relative (about `2^-40` on average).
const RANGE_MIN: u64 = 1 << 32;

/// Checks a precision argument (`1..=24`).
pub fn check_precision(precision: u32) -> Result<()> {
    if (1..=MAX_PRECISION).contains(&precision) {
        Ok(())
    } else {
        invalid(format!("precision must be in 1..={MAX_PRECISION}, got {precision}"))
    }
}

#[inline]
fn check_slice(cum_low: u32, freq: u32, total: u64) -> Result<()> {
    if freq == 0 {
        return invalid("the coded symbol has frequency 0");
    }
    if cum_low as u64 + freq as u64 > total {
        return invalid(format!("symbol slice [{cum_low}, {cum_low} + {freq}) exceeds the table total {total}"));
    }
    Ok(())
}

/// Encodes symbols into a growing buffer of `u32` words. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Encoder {
    words: Vec<u32>,
    low: u64,
    range: u64,
    precision: u32,
    symbols: u64,
}

impl Encoder {
    /// A new encoder whose [`encode`](Self::encode) calls take tables summing to `2^precision`
    /// (`precision` in `1..=24`).
    pub fn new(precision: u32) -> Result<Self> {
        check_precision(precision)?;
        Ok(Encoder { words: Vec::new(), low: 0, range: u64::MAX, precision, symbols: 0 })
    }

    /// The precision given to [`new`](Self::new).
    pub fn precision(&self) -> u32 {
        self.precision
    }

    /// Number of symbols encoded so far.
    pub fn num_symbols(&self) -> u64 {
        self.symbols
    }

    /// Number of whole words emitted so far (the final size is this plus at most one).
    pub fn num_words(&self) -> usize {
        self.words.len()
    }

    /// Encodes the symbol whose slice of a `2^precision` table is `[cum_low, cum_low + freq)`.
    ///
    /// Errors (`InvalidInput`, the encoder unchanged) if `freq == 0` or the slice ends past
    /// `2^precision`.
    #[inline]
    pub fn encode(&mut self, cum_low: u32, freq: u32) -> Result<()> {
        check_slice(cum_low, freq, 1u64 << self.precision)?;
        let scale = self.range >> self.precision;
        self.narrow(scale, cum_low, freq);
        Ok(())
    }

    /// Encodes the symbol whose slice of a table summing to `total` (`1..=2^24`) is
    /// `[cum_low, cum_low + freq)`. Independent of the encoder's precision.
    #[inline]
    pub fn encode_with_total(&mut self, cum_low: u32, freq: u32, total: u32) -> Result<()> {
        if total == 0 || total > MAX_TOTAL {
            return invalid(format!("table total must be in 1..={MAX_TOTAL}, got {total}"));
        }
        check_slice(cum_low, freq, total as u64)?;
        let scale = self.range / total as u64;
        self.narrow(scale, cum_low, freq);
        Ok(())
    }

    #[inline]
    fn narrow(&mut self, scale: u64, cum_low: u32, freq: u32) {
        let (low, carry) = self.low.overflowing_add(scale * cum_low as u64);
        self.low = low;
        if carry {
            self.propagate_carry();
        }
        // range >= 2^32 and total <= 2^24 give scale >= 2^8, so range >= 2^8 here and one
        // 32-bit shift restores range >= 2^32.
        self.range = scale * freq as u64;
        if self.range < RANGE_MIN {
            self.words.push((self.low >> 32) as u32);
            self.low <<= 32;
            self.range <<= 32;
        }
        self.symbols += 1;
    }

    #[cold]
    fn propagate_carry(&mut self) {
        // The coded interval always stays inside [0, 1), so the carry stops before the first word.
        for w in self.words.iter_mut().rev() {
            let (v, c) = w.overflowing_add(1);
            *w = v;
            if !c {
                return;
            }
        }
        debug_assert!(false, "carry past the first word");
    }

    /// Ends the message and returns the code words (most significant first, trailing zero words
    /// removed). An empty message gives an empty vector.
    pub fn finish(mut self) -> Vec<u32> {
        // Choose the value in [low, low + range) with the most trailing zero bits. range >= 2^32,
        // so it has at least 32 of them and only its upper word needs to be written.
        let lo = self.low as u128;
        let hi = lo + self.range as u128;
        let mut value = lo;
        for k in (32..=64u32).rev() {
            let mask = (1u128 << k) - 1;
            let v = (lo + mask) & !mask;
            if v < hi {
                value = v;
                break;
            }
        }
        if value >> 64 != 0 {
            self.propagate_carry();
        }
        self.words.push((value >> 32) as u32);
        while self.words.last() == Some(&0) {
            self.words.pop();
        }
        self.words
    }

    /// Like [`finish`](Self::finish), as bytes: each word big-endian, trailing zero bytes removed.
    pub fn finish_bytes(self) -> Vec<u8> {
        words_to_bytes(&self.finish())
    }
}

/// Serialises code words as [`Encoder::finish_bytes`] does (big-endian words, trailing zero
/// bytes removed).
pub fn words_to_bytes(words: &[u32]) -> Vec<u8> {
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

/// Decodes what an [`Encoder`] wrote, symbol by symbol: [`target`](Self::target) (or
/// [`target_with_total`](Self::target_with_total)) gives a value in the table's range, the
/// caller finds the symbol whose slice `[cum_low, cum_low + freq)` contains it, and
/// [`advance`](Self::advance) consumes that symbol.
#[derive(Clone, Debug)]
pub struct Decoder {
    words: Vec<u32>,
    /// Length of the stream in bytes as given (words * 4 for [`Decoder::new`]).
    byte_len: usize,
    /// Next word to read; reads past the end give 0.
    pos: usize,
    /// (code value - low), the top 64 bits.
    diff: u64,
    range: u64,
    precision: u32,
    /// Set by `target*`: the scale, the table total and the target, consumed by `advance`.
    scale: u64,
    total: u64,
    target: u64,
}

impl Decoder {
    /// A decoder over code words as returned by [`Encoder::finish`].
    pub fn new(words: Vec<u32>, precision: u32) -> Result<Self> {
        check_precision(precision)?;
        let byte_len = words.len() * 4;
        let mut d = Decoder {
            words,
            byte_len,
            pos: 0,
            diff: 0,
            range: u64::MAX,
            precision,
            scale: 0,
            total: 0,
            target: 0,
        };
        d.diff = ((d.next_word() as u64) << 32) | d.next_word() as u64;
        Ok(d)
    }

    /// A decoder over bytes as returned by [`Encoder::finish_bytes`].
    pub fn from_bytes(bytes: &[u8], precision: u32) -> Result<Self> {
        let words = bytes
            .chunks(4)
            .map(|c| {
                let mut b = [0u8; 4];
                b[..c.len()].copy_from_slice(c);
                u32::from_be_bytes(b)
            })
            .collect();
        let mut d = Self::new(words, precision)?;
        d.byte_len = bytes.len();
        Ok(d)
    }

    /// The precision given at construction.
    pub fn precision(&self) -> u32 {
        self.precision
    }

    #[inline]
    fn next_word(&mut self) -> u32 {
        let w = self.words.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        w
    }

    /// The next symbol's target in `[0, 2^precision)`: the symbol to decode is the one whose slice
    /// `[cum_low, cum_low + freq)` contains it. Pass that slice to [`advance`](Self::advance).
    /// Errors with `CorruptStream` if the stream points outside the table.
    #[inline]
    pub fn target(&mut self) -> Result<u32> {
        let scale = self.range >> self.precision;
        self.set_target(scale, 1u64 << self.precision)
    }

    /// Like [`target`](Self::target) for a table summing to `total` (`1..=2^24`); the answer is
    /// in `[0, total)`.
    #[inline]
    pub fn target_with_total(&mut self, total: u32) -> Result<u32> {
        if total == 0 || total > MAX_TOTAL {
            return invalid(format!("table total must be in 1..={MAX_TOTAL}, got {total}"));
        }
        let scale = self.range / total as u64;
        self.set_target(scale, total as u64)
    }

    #[inline]
    fn set_target(&mut self, scale: u64, total: u64) -> Result<u32> {
        let t = self.diff / scale;
        if t >= total {
            self.total = 0;
            return corrupt("coded stream is corrupt: target outside the table");
        }
        self.scale = scale;
        self.total = total;
        self.target = t;
        Ok(t as u32)
    }

    /// Consumes the symbol whose slice is `[cum_low, cum_low + freq)`; the slice must contain the
    /// value the last `target*` call returned (else `InvalidInput`, nothing consumed).
    #[inline]
    pub fn advance(&mut self, cum_low: u32, freq: u32) -> Result<()> {
        if self.total == 0 {
            return invalid("Decoder::advance called without a preceding target()");
        }
        check_slice(cum_low, freq, self.total)?;
        let (lo, t) = (cum_low as u64, self.target);
        if t < lo || t >= lo + freq as u64 {
            return invalid(format!(
                "slice [{cum_low}, {cum_low} + {freq}) does not contain the decoder target {t}"
            ));
        }
        // t < cum_low + freq gives diff < scale * (cum_low + freq): diff stays below range.
        self.diff -= self.scale * lo;
        self.range = self.scale * freq as u64;
        if self.range < RANGE_MIN {
            self.diff = (self.diff << 32) | self.next_word() as u64;
            self.range <<= 32;
        }
        self.total = 0;
        Ok(())
    }

    /// Checks that the message ended where the stream ends: no unread trailing words and no
    /// trailing zero bytes the encoder would have removed. Errors with `CorruptStream` otherwise
    /// (typically: data after the message, or fewer symbols decoded than were encoded).
    pub fn finish(&self) -> Result<()> {
        // The encoder wrote one word per renormalisation plus one at the flush; the decoder read
        // two at the start plus one per renormalisation.
        let written = self.pos.saturating_sub(1);
        if self.byte_len > written * 4 {
            return corrupt("coded stream has trailing data after the message");
        }
        let last_byte = if self.byte_len == 0 {
            None
        } else {
            let i = self.byte_len - 1;
            Some(self.words[i / 4].to_be_bytes()[i % 4])
        };
        if last_byte == Some(0) {
            return corrupt("coded stream ends with a zero byte (not produced by the encoder)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_message_is_empty() {
        let enc = Encoder::new(24).unwrap();
        assert!(enc.finish().is_empty());
        let d = Decoder::from_bytes(&[], 24).unwrap();
        d.finish().unwrap();
    }

    #[test]
    fn rejects_bad_slices() {
        let mut enc = Encoder::new(4).unwrap();
        assert!(enc.encode(0, 0).is_err());
        assert!(enc.encode(10, 7).is_err());
        assert!(enc.encode(0, 16).is_ok());
        assert!(enc.encode_with_total(2, 2, 3).is_err());
        assert!(enc.encode_with_total(0, 1, 0).is_err());
        assert!(Encoder::new(0).is_err());
        assert!(Encoder::new(25).is_err());
    }

    #[test]
    fn certain_symbols_cost_nothing() {
        let mut enc = Encoder::new(24).unwrap();
        for _ in 0..1000 {
            enc.encode(0, 1 << 24).unwrap();
        }
        assert!(enc.finish().is_empty());
    }

    #[test]
    fn mixed_totals_round_trip() {
        let mut enc = Encoder::new(12).unwrap();
        let msg: Vec<(u32, u32, u32)> = (0..5000u32).map(|i| ((i * 7) % 13, 1 + i % 3, 17 + i % 5)).collect();
        for (i, &(c, f, t)) in msg.iter().enumerate() {
            if i % 2 == 0 {
                enc.encode(c, f).unwrap();
            } else {
                enc.encode_with_total(c % t.saturating_sub(f).max(1), f, t).unwrap();
            }
        }
        let bytes = enc.finish_bytes();
        let mut dec = Decoder::from_bytes(&bytes, 12).unwrap();
        for (i, &(c, f, t)) in msg.iter().enumerate() {
            if i % 2 == 0 {
                let x = dec.target().unwrap();
                assert!(x >= c && x < c + f);
                dec.advance(c, f).unwrap();
            } else {
                let c = c % t.saturating_sub(f).max(1);
                let x = dec.target_with_total(t).unwrap();
                assert!(x >= c && x < c + f);
                dec.advance(c, f).unwrap();
            }
        }
        dec.finish().unwrap();
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x1234_5678_9abc_def0u64;
        for len in 0..200usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let mut dec = Decoder::from_bytes(&bytes, 3).unwrap();
            for _ in 0..100 {
                match dec.target() {
                    Ok(t) => {
                        let (c, f) = if t < 5 { (0, 5) } else { (5, 3) };
                        dec.advance(c, f).unwrap();
                    }
                    Err(_) => break,
                }
            }
            let _ = dec.finish();
        }
    }
}
