//! The fused row model: slices and lookups from a logits row without materialising its table.

use super::*;

/// What the fused model keeps of one row after [`RowStats::compute`]: a few scalars and one
/// prefix sum per [`BLOCK`] symbols (no table). Lookups take the same logits row again and
/// recompute one block of weights.
#[derive(Clone, Debug, Default)]
pub struct RowStats {
    v: usize,
    precision: u32,
    path: Option<Path>,
    /// Max of the row (unused for all -inf rows).
    m: f32,
    /// First index of the max: it receives the remainder `L`.
    a: usize,
    k: u64,
    /// Remainder `L = R - Σ g`.
    l: u64,
    /// Every entry is -inf: the table is uniform up to `L` on symbol 0.
    uniform: bool,
    /// `prefix[b]` = `Σ g` over the blocks before `b`.
    prefix: Vec<u64>,
}

impl RowStats {
    /// Passes 1–3 over one row. `scratch` is resized to `V` and overwritten (keep one per thread).
    pub fn compute(&mut self, x: &[f32], precision: u32, path: Path, scratch: &mut Vec<u32>) -> Result<()> {
        self.compute_prefetching(x, precision, path, scratch, &[])
    }

    /// [`compute`](Self::compute), pulling `next` (the row to be processed next, may be empty)
    /// into the cache while the weights are computed.
    pub fn compute_prefetching(
        &mut self,
        x: &[f32],
        precision: u32,
        path: Path,
        scratch: &mut Vec<u32>,
        next: &[f32],
    ) -> Result<()> {
        let v = x.len();
        check_shape(v, precision)?;
        let path = path.checked();
        let r = (1u64 << precision) - v as u64;
        self.v = v;
        self.precision = precision;
        self.path = Some(path);
        match row_max(x, path)? {
            None => {
                self.uniform = true;
                self.a = 0;
                self.m = f32::NEG_INFINITY;
                self.k = scale_factor(r, v as u64);
                self.l = r - (self.k >> SCALE_SHIFT) * v as u64;
                self.prefix.clear();
            }
            Some(m) => {
                self.uniform = false;
                self.m = m;
                scratch.resize(v, 0);
                let s = row_weights(x, m, scratch, path, next);
                self.a = row_first_equal(x, m, path);
                self.k = scale_factor(r, s);
                let g = row_block_prefix(scratch, self.k, &mut self.prefix, path);
                self.l = r - g;
            }
        }
        Ok(())
    }

    /// Number of symbols of the row.
    pub fn len(&self) -> usize {
        self.v
    }

    /// True before the first [`compute`](Self::compute).
    pub fn is_empty(&self) -> bool {
        self.v == 0
    }

    fn block_weights<'b>(&self, x: &[f32], b: usize, buf: &'b mut [u32; BLOCK]) -> &'b [u32] {
        let start = b * BLOCK;
        let end = (start + BLOCK).min(self.v);
        let w = &mut buf[..end - start];
        row_weights(&x[start..end], self.m, w, self.path.unwrap_or(Path::Scalar), &[]);
        w
    }

    #[inline]
    fn freq_at(&self, i: usize, g: u64) -> u64 {
        1 + g + if i == self.a { self.l } else { 0 }
    }

    /// `(cum_low, freq)` of `symbol` in the row's table. `x` must be the row given to
    /// [`compute`](Self::compute).
    pub fn range_of(&self, x: &[f32], symbol: usize) -> Result<(u32, u32)> {
        if symbol >= self.v {
            return invalid(format!("symbol {symbol} out of range for a row of {} logits", self.v));
        }
        let after_a = if symbol > self.a { self.l } else { 0 };
        if self.uniform {
            let g0 = self.k >> SCALE_SHIFT;
            let cum = symbol as u64 * (1 + g0) + after_a;
            return Ok((cum as u32, self.freq_at(symbol, g0) as u32));
        }
        let b = symbol / BLOCK;
        let mut buf = [0u32; BLOCK];
        let w = self.block_weights(x, b, &mut buf);
        let off = symbol - b * BLOCK;
        let below: u64 = w[..off].iter().map(|&wi| floor_g(wi, self.k)).sum();
        let cum = symbol as u64 + self.prefix[b] + below + after_a;
        Ok((cum as u32, self.freq_at(symbol, floor_g(w[off], self.k)) as u32))
    }

    /// `(symbol, cum_low, freq)` of the symbol whose slice contains `target` (`< 2^precision`).
    pub fn find(&self, x: &[f32], target: u32) -> (usize, u32, u32) {
        let t = target as u64;
        if self.uniform {
            let g0 = self.k >> SCALE_SHIFT;
            let f0 = 1 + g0 + self.l;
            if t < f0 {
                return (0, 0, f0 as u32);
            }
            let s = (1 + (t - f0) / (1 + g0)).min(self.v as u64 - 1);
            return (s as usize, (f0 + (s - 1) * (1 + g0)) as u32, (1 + g0) as u32);
        }
        // Cumulative frequency at the start of block b.
        let start_cum = |b: usize| {
            let s = b * BLOCK;
            s as u64 + self.prefix[b] + if self.a < s { self.l } else { 0 }
        };
        let blocks = self.prefix.len() - 1;
        let (mut lo, mut hi) = (0usize, blocks); // start_cum(lo) <= t; answer in [lo, hi)
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if start_cum(mid) <= t {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let mut buf = [0u32; BLOCK];
        let w = self.block_weights(x, lo, &mut buf);
        let mut cum = start_cum(lo);
        let base = lo * BLOCK;
        for (j, &wi) in w.iter().enumerate() {
            let f = self.freq_at(base + j, floor_g(wi, self.k));
            if t < cum + f || j + 1 == w.len() {
                return (base + j, cum as u32, f as u32);
            }
            cum += f;
        }
        unreachable!("a block has at least one symbol")
    }
}

/// [`RowStats::compute`] for `stats.len()` consecutive rows of `x` (`stats.len() * v` logits),
/// software-pipelined on the AVX2 path: the floors of each row (pass 3) and the max of the row
/// after (pass 1) run inside the weights loop (pass 2) of the next. `next` (may be empty) is the row
/// that follows the run. Same results as computing the rows one by one.
pub fn compute_rows(
    x: &[f32],
    v: usize,
    precision: u32,
    path: Path,
    stats: &mut [RowStats],
    bufs: &mut [Vec<u32>; 2],
    next: &[f32],
) -> Result<()> {
    check_shape(v, precision)?;
    let n = stats.len();
    if x.len() != n * v {
        return invalid(format!("{} logits for {n} rows of {v}", x.len()));
    }
    let path = path.checked();
    let row = |i: usize| if i < n { &x[i * v..(i + 1) * v] } else { next };
    if path != Path::Avx2 {
        for (i, st) in stats.iter_mut().enumerate() {
            st.compute_prefetching(row(i), precision, path, &mut bufs[0], row(i + 1))?;
        }
        return Ok(());
    }
    let r = (1u64 << precision) - v as u64;
    let [b0, b1] = bufs;
    b0.resize(v, 0);
    b1.resize(v, 0);
    // The last row whose weights are computed but whose floors are not, and its buffer.
    let mut pending: Option<(usize, bool)> = None;
    // Pass 1 over row i, where the pass over row i - 1 did it.
    let mut next_max = None;
    for i in 0..n {
        let xi = row(i);
        let (done, rest) = stats.split_at_mut(i);
        let st = &mut rest[0];
        st.v = v;
        st.precision = precision;
        st.path = Some(path);
        let max = match next_max.take() {
            Some(max) => max,
            None => row_max(xi, path),
        };
        let Some(m) = max? else {
            st.compute_prefetching(xi, precision, path, b0, &[])?;
            continue;
        };
        st.uniform = false;
        st.m = m;
        // The buffer not holding the pending row's weights.
        let use_b1 = matches!(pending, Some((_, false)));
        let (cur, prev) = if use_b1 { (&mut *b1, &*b0) } else { (&mut *b0, &*b1) };
        let (xn, max_next) = (row(i + 1), i + 1 < n);
        let out = {
            let _csr = MxcsrGuard::new();
            // SAFETY: AVX2 is available (checked path); k < 2^32 for rows with a finite entry; the
            // rows of the run all have v entries.
            unsafe {
                match pending {
                    Some((j, _)) => {
                        let pj = &mut done[j];
                        let out = if max_next {
                            avx2::weights_pass::<true, true>(xi, m, cur, xn, prev, pj.k, &mut pj.prefix)
                        } else {
                            avx2::weights_pass::<true, false>(xi, m, cur, xn, prev, pj.k, &mut pj.prefix)
                        };
                        pj.l = r - out.g;
                        out
                    }
                    None if max_next => avx2::weights_pass::<false, true>(xi, m, cur, xn, &[], 0, &mut Vec::new()),
                    None => avx2::weights_pass::<false, false>(xi, m, cur, xn, &[], 0, &mut Vec::new()),
                }
            }
        };
        next_max = out.next_max;
        st.a = row_first_equal(xi, m, path);
        st.k = scale_factor(r, out.sum);
        pending = Some((i, use_b1));
    }
    if let Some((j, in_b1)) = pending {
        let pj = &mut stats[j];
        let g = row_block_prefix(if in_b1 { b1 } else { b0 }, pj.k, &mut pj.prefix, path);
        pj.l = r - g;
    }
    Ok(())
}

/// The fused logits row model with its own scratch: [`load`](Self::load) a row, then ask for
/// [`range_of`](Self::range_of) a symbol (encoding) or [`find`](Self::find) a target (decoding).
#[derive(Clone, Debug)]
pub struct LogitsRowModel {
    stats: RowStats,
    scratch: Vec<u32>,
    path: Path,
}

impl Default for LogitsRowModel {
    fn default() -> Self {
        Self::new()
    }
}

impl LogitsRowModel {
    /// A model on the fastest [`Path`].
    pub fn new() -> Self {
        Self::with_path(Path::best())
    }

    /// A model on a chosen path (falls back to scalar where unavailable).
    pub fn with_path(path: Path) -> Self {
        LogitsRowModel { stats: RowStats::default(), scratch: Vec::new(), path: path.checked() }
    }

    /// Analyses one row (NaN/+inf → `InvalidInput`).
    pub fn load(&mut self, x: &[f32], precision: u32) -> Result<()> {
        self.stats.compute(x, precision, self.path, &mut self.scratch)
    }

    /// The loaded row's statistics.
    pub fn stats(&self) -> &RowStats {
        &self.stats
    }

    /// `(cum_low, freq)` of `symbol`; `x` is the row given to [`load`](Self::load).
    pub fn range_of(&self, x: &[f32], symbol: usize) -> Result<(u32, u32)> {
        self.stats.range_of(x, symbol)
    }

    /// `(symbol, cum_low, freq)` for a decoder target; `x` is the row given to `load`.
    pub fn find(&self, x: &[f32], target: u32) -> (usize, u32, u32) {
        self.stats.find(x, target)
    }

    /// Loads `x` and encodes `symbol` under it.
    pub fn encode(&mut self, encoder: &mut Encoder, x: &[f32], symbol: usize) -> Result<()> {
        self.load(x, encoder.precision())?;
        let (c, f) = self.range_of(x, symbol)?;
        encoder.encode(c, f)
    }

    /// Loads `x` and decodes one symbol under it.
    pub fn decode(&mut self, decoder: &mut Decoder, x: &[f32]) -> Result<usize> {
        self.load(x, decoder.precision())?;
        let t = decoder.target()?;
        let (s, c, f) = self.find(x, t);
        decoder.advance(c, f)?;
        Ok(s)
    }
}
