//! Coding with explicit integer frequency tables summing to `2^precision`: one static table for
//! every symbol ([`StaticTable`], [`encode_static`]), or one table per step ([`TableRow`],
//! [`encode_rows`], the LM case with materialised tables). A zero frequency is allowed in a table
//! but coding a symbol whose frequency is 0 is an error.

use rayon::prelude::*;

use crate::error::{invalid, Result};
use crate::quantize::{check_shape, BLOCK};
use crate::range::{Decoder, Encoder};

fn check_sum(sum: u64, precision: u32) -> Result<()> {
    if sum != 1u64 << precision {
        return invalid(format!("frequency table sums to {sum}, not 2^{precision} = {}", 1u64 << precision));
    }
    Ok(())
}

fn check_symbol(symbol: usize, v: usize) -> Result<()> {
    if symbol >= v {
        return invalid(format!("symbol {symbol} out of range for a table of {v} entries"));
    }
    Ok(())
}

fn nonzero(symbol: usize, cum: u64, f: u32) -> Result<(u32, u32)> {
    if f == 0 {
        return invalid(format!("symbol {symbol} has frequency 0"));
    }
    Ok((cum as u32, f))
}

/// One table for every symbol, with its cumulative sums.
#[derive(Clone, Debug)]
pub struct StaticTable {
    /// `cdf[i]` = sum of the frequencies below `i`; `cdf[V] = 2^precision`.
    cdf: Vec<u32>,
}

impl StaticTable {
    /// Validates `freqs` (`1 <= V <= 2^precision`, sum exactly `2^precision`).
    pub fn new(freqs: &[u32], precision: u32) -> Result<Self> {
        check_shape(freqs.len(), precision)?;
        let mut cdf = Vec::with_capacity(freqs.len() + 1);
        let mut sum = 0u64;
        for &f in freqs {
            cdf.push(sum.min(u32::MAX as u64) as u32);
            sum += f as u64;
        }
        check_sum(sum, precision)?;
        cdf.push(sum as u32);
        Ok(StaticTable { cdf })
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.cdf.len() - 1
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// `(cum_low, freq)` of `symbol`; errors if it is out of range or has frequency 0.
    pub fn range_of(&self, symbol: usize) -> Result<(u32, u32)> {
        check_symbol(symbol, self.len())?;
        let c = self.cdf[symbol];
        nonzero(symbol, c as u64, self.cdf[symbol + 1] - c)
    }

    /// `(symbol, cum_low, freq)` of the symbol whose slice contains `target` (`< 2^precision`).
    pub fn find(&self, target: u32) -> (usize, u32, u32) {
        let s = (self.cdf.partition_point(|&c| c <= target) - 1).min(self.len() - 1);
        (s, self.cdf[s], self.cdf[s + 1] - self.cdf[s])
    }
}

/// Encodes `symbols` under one static table.
pub fn encode_static(symbols: &[u32], freqs: &[u32], precision: u32) -> Result<Vec<u8>> {
    let table = StaticTable::new(freqs, precision)?;
    let mut enc = Encoder::new(precision)?;
    for &s in symbols {
        let (c, f) = table.range_of(s as usize)?;
        enc.encode(c, f)?;
    }
    Ok(enc.finish_bytes())
}

/// Decodes `n` symbols coded by [`encode_static`] with the same table; checks the stream ends there.
pub fn decode_static(bytes: &[u8], freqs: &[u32], n: usize, precision: u32) -> Result<Vec<u32>> {
    let table = StaticTable::new(freqs, precision)?;
    let mut dec = Decoder::from_bytes(bytes, precision)?;
    let mut out = Vec::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        let (s, c, f) = table.find(dec.target()?);
        dec.advance(c, f)?;
        out.push(s as u32);
    }
    dec.finish()?;
    Ok(out)
}

/// `(cum_low, freq)` of `symbol` in one table row, validating the row (one pass).
pub fn row_range(row: &[u32], symbol: usize, precision: u32) -> Result<(u32, u32)> {
    check_shape(row.len(), precision)?;
    check_symbol(symbol, row.len())?;
    let below: u64 = row[..symbol].iter().map(|&f| f as u64).sum();
    let rest: u64 = row[symbol..].iter().map(|&f| f as u64).sum();
    check_sum(below + rest, precision)?;
    nonzero(symbol, below, row[symbol])
}

/// A validated table row with one prefix sum per [`BLOCK`] entries, for decoding.
#[derive(Clone, Debug, Default)]
pub struct TableRow {
    prefix: Vec<u64>,
}

impl TableRow {
    /// Validates `row` and computes its block sums.
    pub fn compute(&mut self, row: &[u32], precision: u32) -> Result<()> {
        check_shape(row.len(), precision)?;
        self.prefix.clear();
        let mut total = 0u64;
        for block in row.chunks(BLOCK) {
            self.prefix.push(total);
            total += block.iter().map(|&f| f as u64).sum::<u64>();
        }
        self.prefix.push(total);
        check_sum(total, precision)
    }

    /// `(symbol, cum_low, freq)` of the symbol whose slice contains `target`; `row` is the row
    /// given to [`compute`](Self::compute).
    pub fn find(&self, row: &[u32], target: u32) -> (usize, u32, u32) {
        let t = target as u64;
        // Last block whose start is <= t (block 0 starts at 0).
        let b = (self.prefix[..self.prefix.len() - 1].partition_point(|&c| c <= t)).max(1) - 1;
        let base = b * BLOCK;
        let mut cum = self.prefix[b];
        let block = &row[base..(base + BLOCK).min(row.len())];
        for (j, &f) in block.iter().enumerate() {
            if t < cum + f as u64 || j + 1 == block.len() {
                return (base + j, cum as u32, f);
            }
            cum += f as u64;
        }
        unreachable!("a block has at least one entry")
    }
}

fn check_table_rows(freqs: &[u32], v: usize, precision: u32) -> Result<usize> {
    check_shape(v, precision)?;
    if freqs.len() % v != 0 {
        return invalid(format!("tables length {} is not a multiple of the row size {v}", freqs.len()));
    }
    Ok(freqs.len() / v)
}

/// Encodes `symbols[i]` under table row `i` (`freqs` holds `n` rows of `v`); rows are validated
/// in parallel.
pub fn encode_rows(symbols: &[u32], freqs: &[u32], v: usize, precision: u32) -> Result<Vec<u8>> {
    let n = check_table_rows(freqs, v, precision)?;
    if symbols.len() != n {
        return invalid(format!("{} symbols for {n} table rows", symbols.len()));
    }
    let slices: Vec<(u32, u32)> = freqs
        .par_chunks(v)
        .zip(symbols.par_iter())
        .with_min_len(4)
        .map(|(row, &s)| row_range(row, s as usize, precision))
        .collect::<Result<_>>()?;
    let mut enc = Encoder::new(precision)?;
    for (c, f) in slices {
        enc.encode(c, f)?;
    }
    Ok(enc.finish_bytes())
}

/// Decodes one symbol per table row (`freqs` holds `n` rows of `v`); checks the stream ends there.
pub fn decode_rows(bytes: &[u8], freqs: &[u32], v: usize, precision: u32) -> Result<Vec<u32>> {
    let n = check_table_rows(freqs, v, precision)?;
    let mut dec = Decoder::from_bytes(bytes, precision)?;
    let mut out = Vec::with_capacity(n);
    let mut rows: Vec<TableRow> = Vec::new();
    for batch in freqs.chunks(256 * v) {
        rows.resize_with(batch.len() / v, TableRow::default);
        batch
            .par_chunks(v)
            .zip(rows.par_iter_mut())
            .map(|(row, r)| r.compute(row, precision))
            .collect::<Result<()>>()?;
        for (row, r) in batch.chunks(v).zip(&rows) {
            let (s, c, f) = r.find(row, dec.target()?);
            dec.advance(c, f)?;
            out.push(s as u32);
        }
    }
    dec.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_frequency_symbols_are_skipped_and_rejected() {
        let freqs = [0u32, 3, 0, 0, 5, 0, 8, 0];
        let t = StaticTable::new(&freqs, 4).unwrap();
        assert!(t.range_of(0).is_err());
        assert!(t.range_of(8).is_err());
        for target in 0..16 {
            let (s, c, f) = t.find(target);
            assert!(f > 0 && c <= target && target < c + f, "{target} -> {s}");
        }
        let mut r = TableRow::default();
        r.compute(&freqs, 4).unwrap();
        for target in 0..16 {
            assert_eq!(r.find(&freqs, target), t.find(target));
        }
        assert!(row_range(&freqs, 2, 4).is_err());
        assert!(row_range(&[1, 2], 0, 4).is_err());
    }
}
