//! Materialised tables: steps 1–8 of `docs/numerics.md` for one row or many.

use super::*;
use rayon::prelude::*;

/// Steps 1–8 for one row, on a chosen [`Path`]: writes `f[0..V)` into `out` (`out.len() == V`).
pub fn quantize_row_with(x: &[f32], precision: u32, out: &mut [u32], path: Path) -> Result<()> {
    let v = x.len();
    check_shape(v, precision)?;
    if out.len() != v {
        return invalid(format!("output row has {} entries, logits {v}", out.len()));
    }
    let path = path.checked();
    let r = (1u64 << precision) - v as u64;
    let (s, a) = match row_max(x, path)? {
        Some(m) => (row_weights(x, m, out, path, &[]), row_first_equal(x, m, path)),
        None => {
            out.fill(1);
            (v as u64, 0)
        }
    };
    let k = scale_factor(r, s);
    let g = row_floors(out, k, path);
    out[a] += (r - g) as u32;
    Ok(())
}

/// [`quantize_row_with`] on the fastest path.
pub fn quantize_row(x: &[f32], precision: u32, out: &mut [u32]) -> Result<()> {
    quantize_row_with(x, precision, out, Path::best())
}

/// Quantizes `n` rows of `v` logits (`x.len() == out.len() == n * v`), parallel over rows.
pub fn quantize_rows(x: &[f32], v: usize, precision: u32, out: &mut [u32]) -> Result<()> {
    check_shape(v, precision)?;
    if x.len() % v != 0 || out.len() != x.len() {
        return invalid(format!("logits ({}) and output ({}) must both hold n rows of {v}", x.len(), out.len()));
    }
    let path = Path::best();
    x.par_chunks(v)
        .zip(out.par_chunks_mut(v))
        .with_min_len(4)
        .try_for_each(|(row, o)| quantize_row_with(row, precision, o, path))
}
