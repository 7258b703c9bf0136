//! What the model needs from an entropy coder, as one trait: the model is written
//! once, generic over [`Channel`], and the encoder, the decoder and the cost meter
//! (ideal code length, for statistics and tuning) implement it.
//!
//! Every call codes one slice `[cum, cum + freq)` of a table with an arbitrary
//! total `<= 2^24` through `seqkv_coder::range` (`encode_with_total`).

use seqkv_coder::range::{Decoder, Encoder};

use crate::fenwick::Fenwick;
use crate::Error;

/// Totals of binary decisions.
const BIT_TOTAL: u32 = 1 << 16;

/// One coding step of the model, seen from the coder's side.
pub trait Channel {
    /// Codes whether the symbol is an "escape" (for the encoder: `is_escape(symbol)`),
    /// with `p_esc` = P(escape) in units of 2^-16 (`1..65535`). Returns true on escape.
    fn escape(&mut self, p_esc: u32, is_escape: &dyn Fn(u32) -> bool) -> Result<bool, Error>;

    /// Codes one of `syms` under `freqs` (each >= 1); returns its index.
    fn choose(&mut self, syms: &[u32], freqs: &[u32]) -> Result<usize, Error>;

    /// Codes a token under the weights of `table` minus the tokens of `excl` (distinct
    /// tokens with their weights in `table`, in any order: the decoder sorts them);
    /// `avail` = table total − Σ excluded.
    fn choose_excluding(&mut self, table: &Fenwick, excl: &mut [(u32, u32)], avail: u32) -> Result<u32, Error>;

    /// Codes a token under the weights of `table` (the token must have weight > 0).
    fn choose_static(&mut self, table: &Fenwick) -> Result<u32, Error> {
        self.choose_excluding(table, &mut [], table.total())
    }

    /// Tells the channel which part of the model codes next (statistics only).
    fn note(&mut self, _tag: usize) {}
}

fn map_coder(e: seqkv_coder::Error) -> Error {
    match e {
        seqkv_coder::Error::CorruptStream(m) => Error::CorruptStream(m),
        // The model only offers valid slices; a decoder target that fits no slice is
        // reported by the coder as invalid input, which here means a corrupt stream.
        seqkv_coder::Error::InvalidInput(m) | seqkv_coder::Error::FormatVersion(m) => Error::CorruptStream(m),
    }
}

/// Encoder side: knows the symbol being coded.
pub struct EncodeChannel<'a> {
    pub enc: &'a mut Encoder,
    pub sym: u32,
}

impl EncodeChannel<'_> {
    #[inline]
    fn put(&mut self, cum: u32, freq: u32, total: u32) -> Result<(), Error> {
        self.enc.encode_with_total(cum, freq, total).map_err(|e| match e {
            seqkv_coder::Error::InvalidInput(m) => Error::Internal(m),
            other => map_coder(other),
        })
    }
}

impl Channel for EncodeChannel<'_> {
    fn escape(&mut self, p_esc: u32, is_escape: &dyn Fn(u32) -> bool) -> Result<bool, Error> {
        let esc = is_escape(self.sym);
        if esc {
            self.put(0, p_esc, BIT_TOTAL)?;
        } else {
            self.put(p_esc, BIT_TOTAL - p_esc, BIT_TOTAL)?;
        }
        Ok(esc)
    }

    fn choose(&mut self, syms: &[u32], freqs: &[u32]) -> Result<usize, Error> {
        let i = syms.iter().position(|&s| s == self.sym).ok_or_else(|| Error::Internal("symbol is not among the candidates".into()))?;
        let cum: u32 = freqs[..i].iter().sum();
        let total = cum + freqs[i..].iter().sum::<u32>();
        self.put(cum, freqs[i], total)?;
        Ok(i)
    }

    fn choose_excluding(&mut self, table: &Fenwick, excl: &mut [(u32, u32)], avail: u32) -> Result<u32, Error> {
        let s = self.sym;
        let w = table.weight(s as usize);
        if w == 0 || excl.iter().any(|&(u, _)| u == s) {
            return Err(Error::Internal("symbol has no weight in the table".into()));
        }
        let below: u32 = excl.iter().filter(|&&(u, _)| u < s).map(|&(_, f)| f).sum();
        self.put(table.prefix(s as usize) - below, w, avail)?;
        Ok(s)
    }
}

/// Decoder side.
pub struct DecodeChannel<'a> {
    pub dec: &'a mut Decoder,
}

impl DecodeChannel<'_> {
    #[inline]
    fn target(&mut self, total: u32) -> Result<u32, Error> {
        self.dec.target_with_total(total).map_err(map_coder)
    }

    #[inline]
    fn advance(&mut self, cum: u32, freq: u32) -> Result<(), Error> {
        self.dec.advance(cum, freq).map_err(map_coder)
    }
}

impl Channel for DecodeChannel<'_> {
    fn escape(&mut self, p_esc: u32, _is_escape: &dyn Fn(u32) -> bool) -> Result<bool, Error> {
        let t = self.target(BIT_TOTAL)?;
        if t < p_esc {
            self.advance(0, p_esc)?;
            Ok(true)
        } else {
            self.advance(p_esc, BIT_TOTAL - p_esc)?;
            Ok(false)
        }
    }

    fn choose(&mut self, _syms: &[u32], freqs: &[u32]) -> Result<usize, Error> {
        let t = self.target(freqs.iter().sum())?;
        let mut cum = 0u32;
        for (i, &f) in freqs.iter().enumerate() {
            if t < cum + f {
                self.advance(cum, f)?;
                return Ok(i);
            }
            cum += f;
        }
        Err(Error::CorruptStream("decoded value outside the table".into()))
    }

    fn choose_excluding(&mut self, table: &Fenwick, excl: &mut [(u32, u32)], avail: u32) -> Result<u32, Error> {
        excl.sort_unstable();
        let t = self.target(avail)?;
        let mut offset = 0u32;
        for &(u, f) in excl.iter() {
            if t + offset < table.prefix(u as usize) {
                break;
            }
            offset += f;
        }
        let full = t + offset;
        if full >= table.total() {
            return Err(Error::CorruptStream("decoded value outside the table".into()));
        }
        let (s, cum) = table.find(full);
        let w = table.weight(s);
        if w == 0 || full >= cum + w {
            return Err(Error::CorruptStream("decoded value outside the table".into()));
        }
        self.advance(cum - offset, w)?;
        Ok(s as u32)
    }
}

/// Sums the ideal code length (-log2 p) of what would be coded.
#[derive(Default)]
pub struct CostChannel {
    pub sym: u32,
    pub bits: f64,
    pub tag: usize,
    /// Per tag: (bits for symbols, count, bits for escapes, count).
    pub stats: Vec<(f64, u32, f64, u32)>,
}

impl CostChannel {
    fn add(&mut self, b: f64, esc: bool) {
        self.bits += b;
        if self.stats.len() <= self.tag {
            self.stats.resize(self.tag + 1, (0.0, 0, 0.0, 0));
        }
        let e = &mut self.stats[self.tag];
        if esc {
            e.2 += b;
            e.3 += 1;
        } else {
            e.0 += b;
            e.1 += 1;
        }
    }
}

impl Channel for CostChannel {
    fn note(&mut self, tag: usize) {
        self.tag = tag;
    }

    fn escape(&mut self, p_esc: u32, is_escape: &dyn Fn(u32) -> bool) -> Result<bool, Error> {
        let esc = is_escape(self.sym);
        let p = if esc { p_esc } else { BIT_TOTAL - p_esc };
        self.add((BIT_TOTAL as f64 / p as f64).log2(), esc);
        Ok(esc)
    }

    fn choose(&mut self, syms: &[u32], freqs: &[u32]) -> Result<usize, Error> {
        let i = syms.iter().position(|&s| s == self.sym).ok_or_else(|| Error::Internal("symbol is not among the candidates".into()))?;
        let total: u32 = freqs.iter().sum();
        self.add((total as f64 / freqs[i] as f64).log2(), false);
        Ok(i)
    }

    fn choose_excluding(&mut self, table: &Fenwick, _excl: &mut [(u32, u32)], avail: u32) -> Result<u32, Error> {
        let w = table.weight(self.sym as usize);
        if w == 0 {
            return Err(Error::Internal("symbol has no weight in the table".into()));
        }
        self.add((avail as f64 / w as f64).log2(), false);
        Ok(self.sym)
    }
}
