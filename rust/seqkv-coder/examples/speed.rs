//! Rough timings of the fused logits model, single thread (thread CPU time) and bulk (wall):
//! `cargo run --release --example speed [-- FILE.f32]` (FILE: float32 rows of 49,152 logits).
use seqkv_coder::quantize::{self, LogitsRowModel, Path};
use std::time::Instant;

#[cfg(target_os = "linux")]
fn thread_cpu() -> f64 {
    extern "C" {
        fn clock_gettime(clk: i32, tp: *mut [i64; 2]) -> i32;
    }
    let mut t = [0i64; 2];
    // SAFETY: CLOCK_THREAD_CPUTIME_ID = 3 writes a timespec.
    unsafe { clock_gettime(3, &mut t) };
    t[0] as f64 + t[1] as f64 * 1e-9
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

fn main() {
    let v = 49152usize;
    let x: Vec<f32> = match std::env::args().nth(1) {
        Some(path) => std::fs::read(path).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        None => {
            let mut seed = 1u64;
            (0..256 * v)
                .map(|i| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let noise = ((seed >> 11) as f64 / (1u64 << 53) as f64) as f32;
                    -2.75 * (((i % v) as f32 * 7919.0) % v as f32 + 1.0).ln() + noise
                })
                .collect()
        }
    };
    let n = x.len() / v;
    let symbols: Vec<u32> = (0..n).map(|i| ((i * 7919) % v) as u32).collect();
    for path in [Path::Scalar, Path::Avx2] {
        let mut m = LogitsRowModel::with_path(path);
        let t = thread_cpu();
        let mut acc = 0u64;
        for (r, row) in x.chunks(v).enumerate() {
            m.load(row, 24).unwrap();
            acc += m.range_of(row, symbols[r] as usize).unwrap().0 as u64;
        }
        let dt = thread_cpu() - t;
        println!("{path:?}: {:.1} us/row thread CPU (checksum {acc})", dt / n as f64 * 1e6);
    }
    {
        let (mut st, mut scratch) = (quantize::RowStats::default(), Vec::new());
        let t = thread_cpu();
        let mut acc = 0u64;
        for (r, row) in x.chunks(v).enumerate() {
            let next = x.get((r + 1) * v..(r + 2) * v).unwrap_or(&[]);
            st.compute_prefetching(row, 24, Path::Avx2, &mut scratch, next).unwrap();
            acc += st.range_of(row, symbols[r] as usize).unwrap().0 as u64;
        }
        let dt = thread_cpu() - t;
        println!("Avx2 + prefetch: {:.1} us/row thread CPU (checksum {acc})", dt / n as f64 * 1e6);
    }
    {
        let mut stats = vec![quantize::RowStats::default(); 8];
        let mut bufs = [Vec::new(), Vec::new()];
        let t = thread_cpu();
        let mut acc = 0u64;
        for (g, rows) in x.chunks(8 * v).enumerate() {
            let k = rows.len() / v;
            let next = x.get((g + 1) * 8 * v..((g + 1) * 8 + 1) * v).unwrap_or(&[]);
            quantize::compute_rows(rows, v, 24, Path::Avx2, &mut stats[..k], &mut bufs, next).unwrap();
            for (j, st) in stats[..k].iter().enumerate() {
                acc += st.range_of(&rows[j * v..(j + 1) * v], symbols[g * 8 + j] as usize).unwrap().0 as u64;
            }
        }
        let dt = thread_cpu() - t;
        println!("Avx2 pipelined: {:.1} us/row thread CPU (checksum {acc})", dt / n as f64 * 1e6);
    }
    let t = Instant::now();
    let bytes = quantize::encode_logits(&symbols, &x, v, 24).unwrap();
    println!("encode_logits: {:.0} rows/s wall, {} bytes", n as f64 / t.elapsed().as_secs_f64(), bytes.len());
    let t = Instant::now();
    let dec = quantize::decode_logits(&bytes, &x, v, 24).unwrap();
    println!("decode_logits: {:.0} rows/s wall", n as f64 / t.elapsed().as_secs_f64());
    assert_eq!(dec, symbols);
}
