//! What the model needs from an entropy coder: code one choice out of a list of
//! integer frequencies (plus an escape), or one token out of the order -1 table.
//!
//! The model is written once, generic over [`Channel`]; the encoder, the decoder
//! and the cost meter (ideal code length, for tuning) implement it.

use crate::fenwick::Fenwick;
use crate::Error;

/// One coding step of the model, seen from the coder's side.
pub trait Channel {
    /// The model offers `freqs[i]` for the i-th candidate and `esc` for "none of
    /// them" (`esc` may be 0 when the symbol must be a candidate). Total =
    /// `sum(freqs) + esc`. The encoder codes the candidate equal to its current
    /// symbol (or the escape) and returns its index; the decoder reads one.
    fn choose(&mut self, syms: &[u32], freqs: &[u32], esc: u32) -> Result<Option<usize>, Error>;

    /// Codes a token under the order -1 table (the token must have weight > 0).
    fn choose_static(&mut self, table: &Fenwick) -> Result<u32, Error>;

    /// Codes whether the symbol is outside `syms` ("escape"), with `p_esc` =
    /// P(escape) in units of 2^-16 (1..65535). Returns true on escape.
    fn escape(&mut self, p_esc: u32, syms: &[u32]) -> Result<bool, Error>;

    /// Tells the channel which part of the model codes next (statistics only).
    fn note(&mut self, _tag: usize) {}
}

/// An interval coder with arbitrary totals (each total < 2^24 here).
pub trait IntervalEncoder {
    fn encode(&mut self, cum: u32, freq: u32, total: u32);
}

/// The decoding side of [`IntervalEncoder`].
pub trait IntervalDecoder {
    /// A value in `0..total`; the caller finds the interval holding it and calls `advance`.
    fn target(&mut self, total: u32) -> Result<u32, Error>;
    fn advance(&mut self, cum: u32, freq: u32, total: u32) -> Result<(), Error>;
}

/// Encoder side: knows the symbol being coded.
pub struct EncodeChannel<'a, E: IntervalEncoder> {
    pub enc: &'a mut E,
    pub sym: u32,
}

impl<E: IntervalEncoder> Channel for EncodeChannel<'_, E> {
    fn choose(&mut self, syms: &[u32], freqs: &[u32], esc: u32) -> Result<Option<usize>, Error> {
        let mut cum = 0u32;
        let mut found = None;
        for (i, (&s, &f)) in syms.iter().zip(freqs).enumerate() {
            if s == self.sym {
                found = Some((i, cum, f));
            }
            cum += f;
        }
        let total = cum + esc;
        match found {
            Some((i, c, f)) => {
                self.enc.encode(c, f, total);
                Ok(Some(i))
            }
            None => {
                debug_assert!(esc > 0, "symbol not offered and no escape");
                self.enc.encode(cum, esc, total);
                Ok(None)
            }
        }
    }

    fn choose_static(&mut self, table: &Fenwick) -> Result<u32, Error> {
        let s = self.sym as usize;
        self.enc.encode(table.prefix(s), table.weight(s), table.total());
        Ok(self.sym)
    }

    fn escape(&mut self, p_esc: u32, syms: &[u32]) -> Result<bool, Error> {
        let esc = !syms.contains(&self.sym);
        if esc {
            self.enc.encode(0, p_esc, 1 << 16);
        } else {
            self.enc.encode(p_esc, (1 << 16) - p_esc, 1 << 16);
        }
        Ok(esc)
    }
}

/// Decoder side.
pub struct DecodeChannel<'a, D: IntervalDecoder> {
    pub dec: &'a mut D,
}

impl<D: IntervalDecoder> Channel for DecodeChannel<'_, D> {
    fn choose(&mut self, _syms: &[u32], freqs: &[u32], esc: u32) -> Result<Option<usize>, Error> {
        let total: u32 = freqs.iter().sum::<u32>() + esc;
        let t = self.dec.target(total)?;
        let mut cum = 0u32;
        for (i, &f) in freqs.iter().enumerate() {
            if t < cum + f {
                self.dec.advance(cum, f, total)?;
                return Ok(Some(i));
            }
            cum += f;
        }
        if esc == 0 {
            return Err(Error::Corrupt("decoded value outside the table"));
        }
        self.dec.advance(cum, esc, total)?;
        Ok(None)
    }

    fn choose_static(&mut self, table: &Fenwick) -> Result<u32, Error> {
        let total = table.total();
        let t = self.dec.target(total)?;
        let (i, cum) = table.find(t);
        let w = table.weight(i);
        if w == 0 || t >= cum + w {
            return Err(Error::Corrupt("decoded value outside the order -1 table"));
        }
        self.dec.advance(cum, w, total)?;
        Ok(i as u32)
    }

    fn escape(&mut self, p_esc: u32, _syms: &[u32]) -> Result<bool, Error> {
        let t = self.dec.target(1 << 16)?;
        if t < p_esc {
            self.dec.advance(0, p_esc, 1 << 16)?;
            Ok(true)
        } else {
            self.dec.advance(p_esc, (1 << 16) - p_esc, 1 << 16)?;
            Ok(false)
        }
    }
}

/// Sums the ideal code length (-log2 p) of what would be coded; used to tune and
/// to report model cross-entropy without an entropy coder.
#[derive(Default)]
pub struct CostChannel {
    pub sym: u32,
    pub bits: f64,
    pub tag: usize,
    /// Per tag: (bits for symbols, count, bits for escapes, count).
    pub stats: Vec<(f64, u32, f64, u32)>,
    /// (P(top candidate), hit) of every multi-candidate choice with tag 1
    pub calib: Vec<(f64, bool)>,
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

    fn choose(&mut self, syms: &[u32], freqs: &[u32], esc: u32) -> Result<Option<usize>, Error> {
        let total: u32 = freqs.iter().sum::<u32>() + esc;
        if esc > 0 && self.tag == std::env::var("CALIB").ok().and_then(|v| v.parse().ok()).unwrap_or(99) {
            self.calib.push((esc as f64 / total as f64, !syms.contains(&self.sym)));
        }
        let (f, r) = match syms.iter().position(|&s| s == self.sym) {
            Some(i) => (freqs[i], Some(i)),
            None => (esc, None),
        };
        self.add((total as f64 / f as f64).log2(), r.is_none());
        Ok(r)
    }

    fn choose_static(&mut self, table: &Fenwick) -> Result<u32, Error> {
        self.add((table.total() as f64 / table.weight(self.sym as usize) as f64).log2(), false);
        Ok(self.sym)
    }

    fn escape(&mut self, p_esc: u32, syms: &[u32]) -> Result<bool, Error> {
        let esc = !syms.contains(&self.sym);
        let p = if esc { p_esc } else { (1 << 16) - p_esc };
        self.add((65536.0 / p as f64).log2(), esc);
        Ok(esc)
    }
}
