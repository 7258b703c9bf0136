//! Helpers the engine's integration tests share: deterministic values, bit patterns, the ISAs
//! this CPU runs.

// each test binary compiles this module and uses a subset of it
#![allow(dead_code)]

use seqkv_engine::{Isa, Model, Sequence};

/// Scalar, and AVX2+FMA where this CPU has it.
pub fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Scalar];
    if Isa::Avx2Fma.available() {
        v.push(Isa::Avx2Fma);
    }
    v
}

/// `n` values in `[-scale, scale)` from an xorshift seeded by `seed`.
pub fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every layer's keys then values of `s`, as bit patterns.
pub fn kv_bits(m: &Model, s: &Sequence) -> Vec<u32> {
    (0..m.config().num_layers)
        .flat_map(|l| {
            let (k, v) = s.export_layer(m.kv_layout(), l);
            k.into_iter()
                .chain(v)
                .map(|x| x.to_bits())
                .collect::<Vec<_>>()
        })
        .collect()
}
