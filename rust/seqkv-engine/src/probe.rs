//! Machine probes used by benchmarks: streaming read bandwidth.

use rayon::prelude::*;
use std::time::Instant;

/// Best-of-`repeats` read bandwidth in bytes/s: every thread of the pool sums
/// its share of a `bytes`-long buffer (a streaming read, like a decode step's
/// pass over the weights).
pub fn read_bandwidth(bytes: usize, repeats: usize) -> f64 {
    let n = (bytes / 4).max(1 << 16);
    let buf: Vec<f32> = (0..n).into_par_iter().map(|i| (i & 1023) as f32).collect();
    let threads = rayon::current_num_threads().max(1);
    let chunk = n.div_ceil(threads * 4);
    let mut best = 0f64;
    let mut sink = 0f32;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let s: f32 = buf.par_chunks(chunk).map(sum_chunk).sum();
        let dt = t.elapsed().as_secs_f64();
        sink += s;
        best = best.max((n * 4) as f64 / dt);
    }
    std::hint::black_box(sink);
    best
}

fn sum_chunk(c: &[f32]) -> f32 {
    // Eight independent accumulators per lane group so the loop is load-bound.
    let mut acc = [0f32; 32];
    let mut it = c.chunks_exact(32);
    for blk in &mut it {
        for i in 0..32 {
            acc[i] += blk[i];
        }
    }
    acc.iter().sum::<f32>() + it.remainder().iter().sum::<f32>()
}

/// Number of worker threads the kernels use (rayon's global pool).
pub fn threads() -> usize {
    rayon::current_num_threads()
}
