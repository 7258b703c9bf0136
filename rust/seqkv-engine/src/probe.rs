//! Machine probes used by benchmarks: streaming read bandwidth and peak f32 FMA throughput.

use crate::isa::Isa;
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

/// Peak f32 multiply-add throughput of the pool's threads, in multiply-adds per second:
/// every thread runs `iters` rounds of 12 independent 8-lane FMA chains (AVX2+FMA; scalar
/// `mul_add` chains elsewhere), timed by its own CPU clock (so other processes on the
/// machine do not lower it), best of `repeats` per thread, summed over threads — the most
/// a matmul kernel could do here when it has every core, the bound of a compute-bound
/// (batched) step.
pub fn fma_peak(iters: usize, repeats: usize) -> f64 {
    let threads = rayon::current_num_threads().max(1);
    let iters = iters.max(1000);
    (0..threads)
        .into_par_iter()
        .map(|i| {
            let mut best = 0f64;
            for _ in 0..repeats.max(1) {
                let t0 = cpu_seconds(CpuClock::Thread);
                let macs = fma_chains(iters, i as f32);
                best = best.max(macs / (cpu_seconds(CpuClock::Thread) - t0).max(1e-9));
            }
            best
        })
        .sum()
}

/// Which CPU clock [`cpu_seconds`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuClock {
    /// CPU time of the calling thread.
    Thread,
    /// CPU time of the whole process (all threads).
    Process,
}

/// CPU seconds of `clock` (Linux): robust to other jobs sharing the machine. Wall-clock seconds
/// since the first call elsewhere.
#[cfg(target_os = "linux")]
pub fn cpu_seconds(clock: CpuClock) -> f64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clk: i32, ts: *mut Timespec) -> i32;
    }
    // CLOCK_THREAD_CPUTIME_ID = 3, CLOCK_PROCESS_CPUTIME_ID = 2
    let id = match clock {
        CpuClock::Thread => 3,
        CpuClock::Process => 2,
    };
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { clock_gettime(id, &mut ts) };
    ts.sec as f64 + ts.nsec as f64 * 1e-9
}

#[cfg(not(target_os = "linux"))]
pub fn cpu_seconds(_clock: CpuClock) -> f64 {
    use std::sync::OnceLock;
    static T0: OnceLock<Instant> = OnceLock::new();
    T0.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// Runs the FMA chains of [`fma_peak`] on this thread; returns the multiply-adds done.
fn fma_chains(iters: usize, seed: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx2Fma.available() {
        // SAFETY: AVX2 and FMA are available (checked above).
        return unsafe { fma_chains_avx2(iters, seed) };
    }
    let mut acc = [seed; 12];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = a.mul_add(0.999_999, 1e-7);
        }
    }
    std::hint::black_box(acc);
    (iters * 12) as f64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains_avx2(iters: usize, seed: f32) -> f64 {
    use std::arch::x86_64::*;
    let m = _mm256_set1_ps(0.999_999);
    let c = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(seed); 12];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, m, c);
        }
    }
    std::hint::black_box(acc);
    (iters * 12 * 8) as f64
}

/// Number of worker threads the kernels use (rayon's global pool).
pub fn threads() -> usize {
    rayon::current_num_threads()
}
