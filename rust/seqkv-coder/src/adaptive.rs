//! Adaptive frequency model: counts over `n` symbols in a Fenwick tree, updated after each coded
//! symbol, with a deterministic rescale.
//!
//! Encoder and decoder keep identical models by making the same calls in the same order:
//! [`AdaptiveModel::encode`] codes a symbol then [`update`](AdaptiveModel::update)s;
//! [`AdaptiveModel::decode`] mirrors it. Everything is integer arithmetic, so both ends agree on
//! every machine. `cdf`, `find` and `update` cost `O(log n)`; a rescale costs `O(n)`.
//!
//! Update rule: `count[s] += increment`; then, while `total > limit`, every count becomes
//! `(count + 1) / 2` (a count of 0 stays 0, a positive count stays positive).
//!
//! ```
//! use seqkv_coder::adaptive::AdaptiveModel;
//! use seqkv_coder::range::{Decoder, Encoder};
//! let message = [3usize, 3, 3, 1, 3, 0, 3, 3];
//! let mut model = AdaptiveModel::new(4).unwrap();
//! let mut enc = Encoder::new(24).unwrap();
//! for &s in &message {
//!     model.encode(&mut enc, s).unwrap();
//! }
//! let bytes = enc.finish_bytes();
//!
//! let mut model = AdaptiveModel::new(4).unwrap();
//! let mut dec = Decoder::from_bytes(&bytes, 24).unwrap();
//! let decoded: Vec<usize> = (0..message.len()).map(|_| model.decode(&mut dec).unwrap()).collect();
//! assert_eq!(decoded, message);
//! ```

use crate::error::{invalid, Result};
use crate::range::{Decoder, Encoder, MAX_TOTAL};

/// Default count added to a symbol each time it is coded.
pub const DEFAULT_INCREMENT: u32 = 24;
/// Default bound on the total before counts are halved.
pub const DEFAULT_LIMIT: u32 = 1 << 16;

/// Counts over `n` symbols with cumulative lookups; see the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdaptiveModel {
    /// Fenwick tree, 1-based: `tree[i]` sums `counts[i - lowbit(i) .. i]`.
    tree: Vec<u32>,
    counts: Vec<u32>,
    total: u32,
    increment: u32,
    limit: u32,
    /// Largest power of two <= n.
    top: usize,
}

impl AdaptiveModel {
    /// `n` symbols (`1..=2^24`), every count 1, [`DEFAULT_INCREMENT`], [`DEFAULT_LIMIT`] (raised
    /// to `n + increment` when `n` is large).
    pub fn new(n: usize) -> Result<Self> {
        let limit = DEFAULT_LIMIT.max((n as u64 + DEFAULT_INCREMENT as u64).min(MAX_TOTAL as u64) as u32);
        Self::with_params(n, DEFAULT_INCREMENT, limit)
    }

    /// `n` symbols, every count 1, the given increment and limit
    /// (`n + increment <= limit <= 2^24`).
    pub fn with_params(n: usize, increment: u32, limit: u32) -> Result<Self> {
        if n == 0 || n > MAX_TOTAL as usize {
            return invalid(format!("adaptive model size must be in 1..={MAX_TOTAL}, got {n}"));
        }
        Self::from_counts(&vec![1; n], increment, limit)
    }

    /// A model primed with `counts` (zeros allowed: such symbols cannot be coded until counted
    /// elsewhere; the sum must be in `1..=limit`). Requires `n + increment <= limit <= 2^24`,
    /// which guarantees that one halving brings the total back under the limit.
    pub fn from_counts(counts: &[u32], increment: u32, limit: u32) -> Result<Self> {
        let n = counts.len();
        if n == 0 || n > MAX_TOTAL as usize {
            return invalid(format!("adaptive model size must be in 1..={MAX_TOTAL}, got {n}"));
        }
        if limit > MAX_TOTAL || (n as u64 + increment as u64) > limit as u64 {
            return invalid(format!(
                "adaptive model needs n + increment <= limit <= {MAX_TOTAL} (n = {n}, increment = {increment}, limit = {limit})"
            ));
        }
        let total: u64 = counts.iter().map(|&c| c as u64).sum();
        if total == 0 || total > limit as u64 {
            return invalid(format!("initial counts must sum to 1..={limit}, got {total}"));
        }
        let mut m = AdaptiveModel {
            tree: vec![0; n + 1],
            counts: counts.to_vec(),
            total: total as u32,
            increment,
            limit,
            top: 1 << (usize::BITS - 1 - n.leading_zeros()),
        };
        m.rebuild();
        Ok(m)
    }

    fn rebuild(&mut self) {
        let n = self.counts.len();
        self.tree[1..].copy_from_slice(&self.counts);
        self.tree[0] = 0;
        for i in 1..=n {
            let j = i + (i & i.wrapping_neg());
            if j <= n {
                self.tree[j] += self.tree[i];
            }
        }
        self.total = self.counts.iter().sum();
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Always false (a model has at least one symbol).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Sum of all counts (the table total passed to the coder).
    pub fn total(&self) -> u32 {
        self.total
    }

    /// The current counts.
    pub fn counts(&self) -> &[u32] {
        &self.counts
    }

    /// Count of `symbol` (0 if out of range).
    pub fn freq(&self, symbol: usize) -> u32 {
        self.counts.get(symbol).copied().unwrap_or(0)
    }

    /// Sum of the counts of the symbols below `symbol` (`symbol <= n`).
    pub fn cdf(&self, symbol: usize) -> u32 {
        let mut i = symbol.min(self.counts.len());
        let mut s = 0;
        while i > 0 {
            s += self.tree[i];
            i &= i - 1;
        }
        s
    }

    /// `(symbol, cum_low, freq)` of the symbol whose slice contains `target` (`< total`).
    pub fn find(&self, target: u32) -> (usize, u32, u32) {
        let n = self.counts.len();
        let (mut pos, mut rem) = (0usize, target);
        let mut step = self.top;
        while step > 0 {
            let next = pos + step;
            if next <= n && self.tree[next] <= rem {
                pos = next;
                rem -= self.tree[next];
            }
            step >>= 1;
        }
        // Out-of-range targets (only from a misuse) clamp to the last symbol.
        let pos = pos.min(n - 1);
        (pos, target - rem, self.counts[pos])
    }

    /// Adds `increment` to `symbol`'s count, halving all counts when the total passes the limit.
    pub fn update(&mut self, symbol: usize) {
        if symbol >= self.counts.len() || self.increment == 0 {
            return;
        }
        self.counts[symbol] += self.increment;
        self.total += self.increment;
        let mut i = symbol + 1;
        while i < self.tree.len() {
            self.tree[i] += self.increment;
            i += i & i.wrapping_neg();
        }
        while self.total > self.limit {
            for c in &mut self.counts {
                *c = c.div_ceil(2);
            }
            self.rebuild();
        }
    }

    /// Encodes `symbol` under the current counts, then updates the model.
    pub fn encode(&mut self, encoder: &mut Encoder, symbol: usize) -> Result<()> {
        if symbol >= self.counts.len() {
            return invalid(format!("symbol {symbol} out of range for an adaptive model of {} symbols", self.len()));
        }
        encoder.encode_with_total(self.cdf(symbol), self.counts[symbol], self.total)?;
        self.update(symbol);
        Ok(())
    }

    /// Decodes one symbol under the current counts, then updates the model.
    pub fn decode(&mut self, decoder: &mut Decoder) -> Result<usize> {
        let target = decoder.target_with_total(self.total)?;
        let (symbol, cum, freq) = self.find(target);
        decoder.advance(cum, freq)?;
        self.update(symbol);
        Ok(symbol)
    }
}

/// Codes `symbols` (each `< n`) with a fresh [`AdaptiveModel::with_params`] model; returns bytes
/// as [`Encoder::finish_bytes`].
pub fn encode_symbols(symbols: &[u32], n: usize, increment: u32, limit: u32) -> Result<Vec<u8>> {
    let mut model = AdaptiveModel::with_params(n, increment, limit)?;
    let mut enc = Encoder::new(24)?;
    for &s in symbols {
        model.encode(&mut enc, s as usize)?;
    }
    Ok(enc.finish_bytes())
}

/// Decodes `count` symbols written by [`encode_symbols`] with the same parameters; checks that
/// the stream ends there.
pub fn decode_symbols(bytes: &[u8], n: usize, count: usize, increment: u32, limit: u32) -> Result<Vec<u32>> {
    let mut model = AdaptiveModel::with_params(n, increment, limit)?;
    let mut dec = Decoder::from_bytes(bytes, 24)?;
    // A likely symbol can cost almost nothing, so `count` is not bounded by the stream length:
    // reserve at most 1 Mi entries up front and let the vector grow from there.
    let mut out = Vec::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        out.push(model.decode(&mut dec)? as u32);
    }
    dec.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_and_find_agree() {
        let counts: Vec<u32> = (0..37).map(|i| (i * 7 % 5) as u32).collect();
        let m = AdaptiveModel::from_counts(&counts, 3, 1000).unwrap();
        let mut cum = 0;
        for (s, &c) in counts.iter().enumerate() {
            assert_eq!(m.cdf(s), cum);
            for t in cum..cum + c {
                assert_eq!(m.find(t), (s, cum, c));
            }
            cum += c;
        }
        assert_eq!(m.total(), cum);
    }

    #[test]
    fn halving_keeps_positive_counts() {
        let mut m = AdaptiveModel::with_params(10, 50, 200).unwrap();
        for i in 0..1000 {
            m.update(i % 3);
            assert!(m.total() <= 200);
            assert!(m.counts().iter().all(|&c| c >= 1));
            assert_eq!(m.cdf(10), m.total());
        }
    }

    #[test]
    fn bulk_round_trip() {
        let symbols: Vec<u32> = (0..20000u32).map(|i| (i * i + i / 7) % 256 % ((i % 13) + 1)).collect();
        let bytes = encode_symbols(&symbols, 256, 24, 1 << 16).unwrap();
        assert!(bytes.len() < symbols.len());
        assert_eq!(decode_symbols(&bytes, 256, symbols.len(), 24, 1 << 16).unwrap(), symbols);
        assert!(decode_symbols(&bytes, 256, symbols.len() - 100, 24, 1 << 16).is_err());
    }
}
