//! Quick speed check of the matmul kernel on SmolLM2 shapes:
//! `cargo run --release --example matmul_speed` (`RAYON_NUM_THREADS=1` for one core).
//! Times are process CPU seconds divided by the thread count, so they show what the kernel
//! does with its cores even when other jobs share the machine.
#![allow(clippy::needless_range_loop)]

use seqkv_engine::probe::{cpu_seconds, CpuClock};
use seqkv_engine::quant::quantize;
use seqkv_engine::{matmul, BlockType, Isa, PackedMatrix, WeightDtype};

fn main() {
    let isa = Isa::detect();
    println!("isa {:?}, threads {}", isa, rayon::current_num_threads());
    let shapes = [
        (576usize, 960usize),
        (576, 576),
        (576, 3072),
        (1536, 576),
        (576, 49152),
    ];
    let dtypes = [
        WeightDtype::Blocks(BlockType::Q4_1),
        WeightDtype::Blocks(BlockType::Q8_0),
        WeightDtype::Bf16,
        WeightDtype::F32,
    ];
    let only = std::env::args().nth(1);
    for dtype in dtypes {
        if only.as_deref().is_some_and(|o| o != dtype.name()) {
            continue;
        }
        let mats: Vec<PackedMatrix> = shapes
            .iter()
            .map(|&(k, n)| {
                let w: Vec<f32> = (0..k * n)
                    .map(|i| ((i * 2654435761usize) % 1000) as f32 * 1e-3 - 0.5)
                    .collect();
                match dtype {
                    // (the values as [N][K]: only the speed matters here)
                    WeightDtype::Blocks(bt) => {
                        PackedMatrix::from_blocks(bt, &quantize(bt, &w, n, k), n, k).unwrap()
                    }
                    _ => PackedMatrix::from_kn(&w, k, n, dtype),
                }
            })
            .collect();
        for rows in [1usize, 8, 64, 256] {
            let mut macs = 0usize;
            let mut bytes = 0usize;
            let reps = if rows >= 64 { 3 } else { 20 };
            let mut outs: Vec<Vec<f32>> = mats.iter().map(|m| vec![0f32; rows * m.n()]).collect();
            let xs: Vec<Vec<f32>> = mats
                .iter()
                .map(|m| (0..rows * m.k()).map(|i| (i % 7) as f32 * 0.1).collect())
                .collect();
            // one model step = 30 layers of the first four + lm head
            let t = cpu_seconds(CpuClock::Process);
            for _ in 0..reps {
                for layer in 0..30 {
                    for i in 0..4 {
                        matmul(isa, &xs[i], rows, &mats[i], &mut outs[i]);
                        if layer == 0 {}
                    }
                }
                matmul(isa, &xs[4], rows, &mats[4], &mut outs[4]);
            }
            let dt = (cpu_seconds(CpuClock::Process) - t)
                / reps as f64
                / rayon::current_num_threads() as f64;
            for i in 0..4 {
                macs += 30 * rows * mats[i].k() * mats[i].n();
                bytes += 30 * mats[i].nbytes();
            }
            macs += rows * mats[4].k() * mats[4].n();
            bytes += mats[4].nbytes();
            println!(
                "{:?} rows {rows:4}: step {:7.2} ms  {:6.1} GMAC/s  {:5.1} GB/s  {:7.1} tok/s",
                dtype,
                dt * 1e3,
                macs as f64 / dt / 1e9,
                bytes as f64 / dt / 1e9,
                rows as f64 / dt
            );
        }
    }
}
