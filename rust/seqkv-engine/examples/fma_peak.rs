//! Peak f32 FMA throughput of this machine: `cargo run --release --example fma_peak`.
fn main() {
    let p = seqkv_engine::probe::fma_peak(50_000_000, 3);
    println!(
        "threads {}, peak {:.1} GMAC/s",
        rayon::current_num_threads(),
        p / 1e9
    );
}
