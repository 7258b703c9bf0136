//! Bulk coding of `n` logits rows with the fused model, parallel over rows.

use super::*;
use rayon::prelude::*;

pub(super) fn check_rows(x: &[f32], v: usize, precision: u32) -> Result<usize> {
    check_shape(v, precision)?;
    if x.len() % v != 0 {
        return invalid(format!("logits length {} is not a multiple of the row size {v}", x.len()));
    }
    Ok(x.len() / v)
}

/// Row `i + 1` of `x` (empty past the end): what a worker most likely processes next.
pub(super) fn next_row(x: &[f32], v: usize, i: usize) -> &[f32] {
    x.get((i + 1) * v..(i + 2) * v).unwrap_or(&[])
}

/// Encodes `symbols[i]` under the table of logits row `i` (`x` holds `n` rows of `v`), without
/// materialising tables; rows are analysed in parallel. Returns [`Encoder::finish_bytes`].
pub fn encode_logits(symbols: &[u32], x: &[f32], v: usize, precision: u32) -> Result<Vec<u8>> {
    let n = check_rows(x, v, precision)?;
    if symbols.len() != n {
        return invalid(format!("{} symbols for {n} rows of logits", symbols.len()));
    }
    let path = Path::best();
    let slices: Vec<(u32, u32)> = x
        .par_chunks(RUN * v)
        .zip(symbols.par_chunks(RUN))
        .enumerate()
        .map_init(
            || (vec![RowStats::default(); RUN], [Vec::new(), Vec::new()]),
            |(stats, bufs), (g, (rows, syms))| {
                let stats = &mut stats[..syms.len()];
                compute_rows(rows, v, precision, path, stats, bufs, next_row(x, v, (g + 1) * RUN - 1))?;
                stats.iter().zip(rows.chunks(v)).zip(syms).map(|((st, row), &s)| st.range_of(row, s as usize)).collect()
            },
        )
        .collect::<Result<Vec<Vec<(u32, u32)>>>>()?
        .concat();
    let mut enc = Encoder::new(precision)?;
    for (c, f) in slices {
        enc.encode(c, f)?;
    }
    Ok(enc.finish_bytes())
}

/// Rows analysed per parallel batch while decoding.
pub(super) const DECODE_BATCH: usize = 256;
/// Consecutive rows one worker analyses in a software pipeline ([`compute_rows`]).
pub(super) const RUN: usize = 8;

/// Decodes one symbol per logits row (`x` holds `n` rows of `v`) from bytes written by
/// [`encode_logits`] (or any encoder using the same tables); checks the stream ends there.
pub fn decode_logits(bytes: &[u8], x: &[f32], v: usize, precision: u32) -> Result<Vec<u32>> {
    let n = check_rows(x, v, precision)?;
    let path = Path::best();
    let mut dec = Decoder::from_bytes(bytes, precision)?;
    let mut out = Vec::with_capacity(n);
    let batch = |b: usize| &x[b * DECODE_BATCH * v..((b + 1) * DECODE_BATCH * v).min(x.len())];
    // Row statistics of batch b, in parallel.
    let analyse = |b: usize, stats: &mut Vec<RowStats>| -> Result<()> {
        let xs = batch(b);
        stats.resize_with(xs.len() / v, RowStats::default);
        stats
            .par_chunks_mut(RUN)
            .zip(xs.par_chunks(RUN * v))
            .enumerate()
            .map_init(
                || [Vec::new(), Vec::new()],
                |bufs, (g, (st, rows))| {
                    let last = b * DECODE_BATCH + g * RUN + st.len() - 1;
                    compute_rows(rows, v, precision, path, st, bufs, next_row(x, v, last))
                },
            )
            .collect()
    };
    let batches = n.div_ceil(DECODE_BATCH);
    let (mut cur, mut next) = (Vec::new(), Vec::new());
    if batches > 0 {
        analyse(0, &mut cur)?;
    }
    for b in 0..batches {
        // Decoding batch b (sequential) overlaps with the analysis of batch b + 1.
        let (decoded, analysed) = rayon::join(
            || -> Result<()> {
                for (row, st) in batch(b).chunks(v).zip(&cur) {
                    let t = dec.target()?;
                    let (s, c, f) = st.find(row, t);
                    dec.advance(c, f)?;
                    out.push(s as u32);
                }
                Ok(())
            },
            || if b + 1 < batches { analyse(b + 1, &mut next) } else { Ok(()) },
        );
        decoded?;
        analysed?;
        std::mem::swap(&mut cur, &mut next);
    }
    dec.finish()?;
    Ok(out)
}
