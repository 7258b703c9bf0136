//! Which instruction set the kernels use.
//!
//! Every kernel has a scalar form (the *definition*: plain IEEE f32 operations
//! and `f32::mul_add`, which is a correctly rounded fused multiply-add on every
//! platform) and, on x86-64, an AVX2+FMA form (with F16C, for block scales) that performs the very same
//! operations per output element, eight or sixteen outputs at a time. The two
//! forms give identical bits (tested), so the choice only affects speed. The
//! choice is made once per process from CPUID and can be forced with the
//! environment variable `SEQKV_ENGINE_ISA=scalar`.

use std::sync::OnceLock;

/// Instruction set used by a kernel call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable scalar code (the reference definition).
    Scalar,
    /// x86-64 AVX2 with FMA3 (and F16C).
    Avx2Fma,
}

impl Isa {
    /// The name used in numerics profiles and by `SEQKV_ENGINE_ISA`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2Fma => "avx2-fma",
        }
    }

    /// Parses a name as written by [`Isa::name`] (also accepts `"avx2"`).
    pub fn parse(name: &str) -> Option<Isa> {
        match name.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(Isa::Scalar),
            "avx2" | "avx2-fma" | "avx2fma" => Some(Isa::Avx2Fma),
            _ => None,
        }
    }

    /// Whether this machine can run kernels of this ISA.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2Fma => avx2_fma_available(),
        }
    }

    /// The best ISA of this machine, or the one forced by `SEQKV_ENGINE_ISA`
    /// (when it names an available ISA). Fixed for the life of the process.
    pub fn detect() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            if let Ok(forced) = std::env::var("SEQKV_ENGINE_ISA") {
                if let Some(isa) = Isa::parse(&forced) {
                    if isa.available() {
                        return isa;
                    }
                }
            }
            if avx2_fma_available() {
                Isa::Avx2Fma
            } else {
                Isa::Scalar
            }
        })
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_fma_available() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_fma_available() -> bool {
    false
}
