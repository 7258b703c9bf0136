//! Rough single-thread and bulk timings of the fused logits model: `cargo run --release --example speed`.
use seqkv_coder::quantize::{self, LogitsRowModel, Path};
use std::time::Instant;

fn main() {
    let (n, v) = (512usize, 49152usize);
    let mut seed = 1u64;
    let mut rnd = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 11) as f64 / (1u64 << 53) as f64) as f32
    };
    // Zipf-like: logit = -1.2 ln(rank) + noise, ranks shuffled per row.
    let x: Vec<f32> = (0..n * v).map(|i| -1.2 * (((i % v) as f32 * 7919.0) % v as f32 + 1.0).ln() * 3.0 + rnd()).collect();
    let symbols: Vec<u32> = (0..n).map(|i| ((i * 7919) % v) as u32).collect();
    for path in [Path::Scalar, Path::Avx2] {
        let mut m = LogitsRowModel::with_path(path);
        let t = Instant::now();
        let mut acc = 0u64;
        for (r, row) in x.chunks(v).enumerate() {
            m.load(row, 24).unwrap();
            acc += m.range_of(row, symbols[r] as usize).unwrap().0 as u64;
        }
        let dt = t.elapsed().as_secs_f64();
        println!("{path:?}: {:.1} us/row, {:.0} rows/s (acc {acc})", dt / n as f64 * 1e6, n as f64 / dt);
    }
    let mut out = vec![0u32; n * v];
    let t = Instant::now();
    quantize::quantize_rows(&x, v, 24, &mut out).unwrap();
    println!("quantize_rows: {:.0} rows/s", n as f64 / t.elapsed().as_secs_f64());
    let t = Instant::now();
    let bytes = quantize::encode_logits(&symbols, &x, v, 24).unwrap();
    println!("encode_logits: {:.0} rows/s, {} bytes", n as f64 / t.elapsed().as_secs_f64(), bytes.len());
    let t = Instant::now();
    let dec = quantize::decode_logits(&bytes, &x, v, 24).unwrap();
    println!("decode_logits: {:.0} rows/s", n as f64 / t.elapsed().as_secs_f64());
    assert_eq!(dec, symbols);
}
