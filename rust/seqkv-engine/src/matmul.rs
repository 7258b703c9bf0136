//! Row-invariant matrix product `out[r, n] = sum_k x[r, k] * w[k, n]`.
//!
//! **The definition** (what every code path computes, bit for bit): for each
//! output element, one fused multiply-add chain over `k = 0, 1, ..., K-1` in
//! increasing order, starting from `+0.0`:
//! `acc = fma(x[r, k], w[k, n], acc)`. Nothing else touches the value, so the
//! result of a row depends only on that row and the weights — not on how many
//! rows are in the product, where the row sits, which thread computes it, how
//! the columns are split into tasks, or which instruction set runs.
//!
//! Weights are packed once into panels of [`NR`] = 16 columns, `[panel][k][16]`,
//! in f32 or bf16 (widened exactly to f32 on load). The AVX2 form keeps a tile
//! of up to 6 rows x 16 columns (or 1 row x 64 columns for decode) of
//! accumulators in registers, one broadcast of `x[r, k]` per row and one load
//! of the weight row per k — the per-element chain is the same as the scalar
//! definition's.

use crate::bf16::{bf16_to_f32, f32_to_bf16};
use crate::isa::Isa;
use crate::quant::{self, BlockType, QBlock, QK};
use rayon::prelude::*;

/// Columns per packed panel.
pub const NR: usize = 16;

/// Where column `j` of a panel's k-row sits in bf16 storage: 32-bit word `i`
/// holds columns `i` and `i + 8`, so both halves widen with one shift or mask.
#[inline]
pub(crate) fn bf16_slot(j: usize) -> usize {
    if j < 8 {
        2 * j
    } else {
        2 * (j - 8) + 1
    }
}

/// Storage type of packed weights: f32, bf16 (rounded), or GGUF blocks ([`crate::quant`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightDtype {
    F32,
    Bf16,
    Blocks(BlockType),
}

impl WeightDtype {
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::Bf16 => "bf16",
            WeightDtype::Blocks(b) => b.name(),
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Some(WeightDtype::F32),
            "bf16" | "bfloat16" => Some(WeightDtype::Bf16),
            other => BlockType::parse(other).map(WeightDtype::Blocks),
        }
    }
    /// How values given as f32 are stored: bf16 for a bf16 model, else exactly (f32).
    pub fn float_storage(self) -> WeightDtype {
        match self {
            WeightDtype::Bf16 => WeightDtype::Bf16,
            _ => WeightDtype::F32,
        }
    }
    /// Rounds a value given as f32 to what this dtype stores it as (identity but for bf16).
    pub fn round(self, x: f32) -> f32 {
        match self {
            WeightDtype::Bf16 => crate::bf16::round_to_bf16(x),
            _ => x,
        }
    }
    /// Bytes per value of a float storage (a block model stores float tables in f32).
    pub fn bytes(self) -> usize {
        match self {
            WeightDtype::Bf16 => 2,
            _ => 4,
        }
    }
}

#[derive(Clone)]
enum Buf {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    /// Tiles of 16 columns x 32 k, `[panel][k / 32]` ([`crate::quant`]).
    Blocks(BlockType, Vec<u8>),
}

/// Stored values as they lie in memory: what [`PackedMatrix::packed`] lends and
/// [`PackedMatrix::from_packed`] takes back (also used for the model's vectors and tables).
#[derive(Clone, Copy, Debug)]
pub enum Stored<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
    /// Block bytes (re-blocked tiles of a matrix, raw GGUF rows of a table); the block type
    /// follows from the length, which differs between types for a given shape.
    Blocks(&'a [u8]),
}

impl Stored<'_> {
    pub fn len(&self) -> usize {
        match self {
            Stored::F32(v) => v.len(),
            Stored::Bf16(v) => v.len(),
            Stored::Blocks(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The storage's name for messages: `f32`, `bf16` or `blocks`.
    pub fn kind(&self) -> &'static str {
        match self {
            Stored::F32(_) => "f32",
            Stored::Bf16(_) => "bf16",
            Stored::Blocks(_) => "blocks",
        }
    }
}

/// A `[K, N]` weight matrix packed into column panels.
#[derive(Clone)]
pub struct PackedMatrix {
    k: usize,
    n: usize,
    panels: usize,
    buf: Buf,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedMatrix({}x{}, {})",
            self.k,
            self.n,
            self.dtype().name()
        )
    }
}

impl PackedMatrix {
    /// Packs `w` given as `[N][K]` row-major (the layout of a `torch.nn.Linear` weight).
    pub fn from_nk(w: &[f32], n: usize, k: usize, dtype: WeightDtype) -> Self {
        assert_eq!(
            w.len(),
            n * k,
            "weight has {} values, expected {n}x{k}",
            w.len()
        );
        Self::pack(n, k, dtype, |col, kk| w[col * k + kk])
    }

    /// Packs `w` given as `[K][N]` row-major.
    pub fn from_kn(w: &[f32], k: usize, n: usize, dtype: WeightDtype) -> Self {
        assert_eq!(
            w.len(),
            n * k,
            "weight has {} values, expected {k}x{n}",
            w.len()
        );
        Self::pack(n, k, dtype, |col, kk| w[kk * n + col])
    }

    fn pack(
        n: usize,
        k: usize,
        dtype: WeightDtype,
        get: impl Fn(usize, usize) -> f32 + Sync,
    ) -> Self {
        assert!(n > 0 && k > 0, "empty matrix");
        let panels = n.div_ceil(NR);
        let value = |p: usize, kk: usize, j: usize| {
            let col = p * NR + j;
            if col < n {
                get(col, kk)
            } else {
                0.0
            }
        };
        let buf = match dtype {
            WeightDtype::F32 => {
                let mut v = vec![0f32; panels * k * NR];
                v.par_chunks_mut(k * NR).enumerate().for_each(|(p, panel)| {
                    for kk in 0..k {
                        for j in 0..NR {
                            panel[kk * NR + j] = value(p, kk, j);
                        }
                    }
                });
                Buf::F32(v)
            }
            WeightDtype::Bf16 => {
                let mut v = vec![0u16; panels * k * NR];
                v.par_chunks_mut(k * NR).enumerate().for_each(|(p, panel)| {
                    for kk in 0..k {
                        for j in 0..NR {
                            panel[kk * NR + bf16_slot(j)] = f32_to_bf16(value(p, kk, j));
                        }
                    }
                });
                Buf::Bf16(v)
            }
            WeightDtype::Blocks(_) => unreachable!("pack takes float dtypes"),
        };
        PackedMatrix { k, n, panels, buf }
    }

    /// Re-blocks GGUF blocks given as `[N][K / 32]` raw blocks (a `[N, K]` GGUF tensor,
    /// `torch.nn.Linear` layout).
    pub fn from_blocks(bt: BlockType, raw: &[u8], n: usize, k: usize) -> Result<Self, String> {
        if n == 0 || k == 0 || k % QK != 0 {
            return Err(format!(
                "a {} matrix needs K a multiple of {QK}, got {n}x{k}",
                bt.name()
            ));
        }
        let row = (k / QK) * bt.raw_bytes();
        if raw.len() != n * row {
            return Err(format!(
                "{n}x{k} {} blocks take {} bytes, got {}",
                bt.name(),
                n * row,
                raw.len()
            ));
        }
        Ok(Self::pack_blocks(bt, n, k, |col, b| {
            QBlock::from_raw(bt, &raw[col * row + b * bt.raw_bytes()..][..bt.raw_bytes()])
        }))
    }

    fn pack_blocks(
        bt: BlockType,
        n: usize,
        k: usize,
        get: impl Fn(usize, usize) -> QBlock + Sync,
    ) -> Self {
        let panels = n.div_ceil(NR);
        let kb = k / QK;
        let tb = bt.tile_bytes();
        let mut v = vec![0u8; panels * kb * tb];
        v.par_chunks_mut(kb * tb)
            .enumerate()
            .for_each(|(p, panel)| {
                for (b, tile) in panel.chunks_mut(tb).enumerate() {
                    for j in 0..NR {
                        let col = p * NR + j;
                        let blk = if col < n { get(col, b) } else { QBlock::ZERO };
                        quant::put_tile_column(bt, tile, j, &blk);
                    }
                }
            });
        PackedMatrix {
            k,
            n,
            panels,
            buf: Buf::Blocks(bt, v),
        }
    }

    /// Column `col`'s block `b` (block matrices only).
    fn block(&self, col: usize, b: usize) -> QBlock {
        match &self.buf {
            Buf::Blocks(bt, v) => {
                let tb = bt.tile_bytes();
                let kb = self.k / QK;
                let tile = &v[((col / NR) * kb + b) * tb..][..tb];
                quant::tile_column(*bt, tile, col % NR)
            }
            _ => unreachable!("block of a float matrix"),
        }
    }

    /// The packed panels as stored: `[panel][k][NR]`, bf16 columns in [`bf16_slot`] order;
    /// block matrices as their tiles.
    pub fn packed(&self) -> Stored<'_> {
        match &self.buf {
            Buf::F32(v) => Stored::F32(v),
            Buf::Bf16(v) => Stored::Bf16(v),
            Buf::Blocks(_, v) => Stored::Blocks(v),
        }
    }

    /// Rebuilds a `[K, N]` matrix from the storage [`PackedMatrix::packed`] returned for it.
    pub fn from_packed(k: usize, n: usize, data: Stored<'_>) -> Result<Self, String> {
        let panels = n.div_ceil(NR);
        if let Stored::Blocks(v) = data {
            let bt = BlockType::from_packed_len(k, n, v.len()).ok_or_else(|| {
                format!(
                    "{} bytes are the tiles of no block type for a {k}x{n} matrix",
                    v.len()
                )
            })?;
            return Ok(PackedMatrix {
                k,
                n,
                panels,
                buf: Buf::Blocks(bt, v.to_vec()),
            });
        }
        if k == 0 || n == 0 || data.len() != panels * k * NR {
            return Err(format!(
                "packed {k}x{n} matrix needs {} values, got {}",
                panels * k * NR,
                data.len()
            ));
        }
        let buf = match data {
            Stored::F32(v) => Buf::F32(v.to_vec()),
            Stored::Bf16(v) => Buf::Bf16(v.to_vec()),
            Stored::Blocks(_) => unreachable!(),
        };
        Ok(PackedMatrix { k, n, panels, buf })
    }

    /// Concatenates matrices with the same K along N (fused projections). Parts of different
    /// storage are concatenated as f32 (their exact values).
    pub fn concat_n(parts: &[&PackedMatrix]) -> Self {
        let k = parts[0].k;
        let mut dtype = parts[0].dtype();
        if parts.iter().any(|p| p.dtype() != dtype) {
            dtype = WeightDtype::F32;
        }
        let n: usize = parts.iter().map(|p| p.n).sum();
        let mut offsets = Vec::new();
        let mut acc = 0;
        for p in parts {
            assert_eq!(p.k, k, "concat_n: different K");
            offsets.push(acc);
            acc += p.n;
        }
        let locate = |col: usize| {
            let i = offsets.partition_point(|&o| o <= col) - 1;
            (i, col - offsets[i])
        };
        match dtype {
            WeightDtype::Blocks(bt) => Self::pack_blocks(bt, n, k, |col, b| {
                let (i, c) = locate(col);
                parts[i].block(c, b)
            }),
            _ => Self::pack(n, k, dtype, |col, kk| {
                let (i, c) = locate(col);
                parts[i].get(kk, c)
            }),
        }
    }

    pub fn k(&self) -> usize {
        self.k
    }
    pub fn n(&self) -> usize {
        self.n
    }
    pub fn dtype(&self) -> WeightDtype {
        match self.buf {
            Buf::F32(_) => WeightDtype::F32,
            Buf::Bf16(_) => WeightDtype::Bf16,
            Buf::Blocks(bt, _) => WeightDtype::Blocks(bt),
        }
    }
    /// Bytes of packed storage (what one pass over the matrix reads).
    pub fn nbytes(&self) -> usize {
        match &self.buf {
            Buf::F32(v) => v.len() * 4,
            Buf::Bf16(v) => v.len() * 2,
            Buf::Blocks(_, v) => v.len(),
        }
    }

    /// The stored value of `w[kk, col]` as f32 (a block weight de-quantized by its definition).
    pub fn get(&self, kk: usize, col: usize) -> f32 {
        let row = ((col / NR) * self.k + kk) * NR;
        match &self.buf {
            Buf::F32(v) => v[row + col % NR],
            Buf::Bf16(v) => bf16_to_f32(v[row + bf16_slot(col % NR)]),
            Buf::Blocks(bt, _) => {
                let b = self.block(col, kk / QK);
                bt.value(quant::f16_to_f32(b.d), quant::f16_to_f32(b.m), b.q[kk % QK])
            }
        }
    }

    /// Bytes of the stored matrix in canonical `[K][N]` order, for fingerprints (block
    /// weights as their f32 values).
    pub fn canonical_bytes(&self, mut sink: impl FnMut(&[u8])) {
        let mut row = Vec::with_capacity(self.n * 4);
        for kk in 0..self.k {
            row.clear();
            for col in 0..self.n {
                match &self.buf {
                    Buf::F32(_) | Buf::Blocks(..) => {
                        row.extend_from_slice(&self.get(kk, col).to_le_bytes())
                    }
                    Buf::Bf16(v) => {
                        let idx = ((col / NR) * self.k + kk) * NR + bf16_slot(col % NR);
                        row.extend_from_slice(&v[idx].to_le_bytes())
                    }
                }
            }
            sink(&row);
        }
    }
}

/// `out[rows, n] = x[rows, k] @ w` (see the module docs for the exact definition).
///
/// `x` holds `rows * w.k()` values, `out` at least `rows * w.n()`.
pub fn matmul(isa: Isa, x: &[f32], rows: usize, w: &PackedMatrix, out: &mut [f32]) {
    assert!(x.len() >= rows * w.k, "matmul: x too short");
    assert!(out.len() >= rows * w.n, "matmul: out too short");
    if rows == 0 {
        return;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma if Isa::Avx2Fma.available() => avx2::matmul(x, rows, w, out),
        _ => scalar_matmul(x, rows, w, out),
    }
}

/// The reference definition, used on machines without AVX2+FMA.
fn scalar_matmul(x: &[f32], rows: usize, w: &PackedMatrix, out: &mut [f32]) {
    let (k, n) = (w.k, w.n);
    out[..rows * n]
        .par_chunks_mut(n)
        .enumerate()
        .for_each(|(r, orow)| {
            let xr = &x[r * k..(r + 1) * k];
            let mut acc = [0f32; NR];
            for p in 0..w.panels {
                acc.fill(0.0);
                match &w.buf {
                    Buf::F32(v) => {
                        let panel = &v[p * k * NR..(p + 1) * k * NR];
                        for kk in 0..k {
                            let xv = xr[kk];
                            for j in 0..NR {
                                acc[j] = xv.mul_add(panel[kk * NR + j], acc[j]);
                            }
                        }
                    }
                    Buf::Bf16(v) => {
                        let panel = &v[p * k * NR..(p + 1) * k * NR];
                        for kk in 0..k {
                            let xv = xr[kk];
                            for j in 0..NR {
                                acc[j] =
                                    xv.mul_add(bf16_to_f32(panel[kk * NR + bf16_slot(j)]), acc[j]);
                            }
                        }
                    }
                    Buf::Blocks(bt, v) => {
                        let (bt, tb, kb) = (*bt, bt.tile_bytes(), k / QK);
                        for (b, tile) in v[p * kb * tb..(p + 1) * kb * tb].chunks(tb).enumerate() {
                            let (d, m) = quant::tile_scales(bt, tile);
                            let qs = &tile[bt.quant_offset()..];
                            for kk in 0..QK {
                                let xv = xr[b * QK + kk];
                                for j in 0..NR {
                                    let w = bt.value(d[j], m[j], quant::tile_quant(bt, qs, kk, j));
                                    acc[j] = xv.mul_add(w, acc[j]);
                                }
                            }
                        }
                    }
                }
                let c0 = p * NR;
                let valid = (n - c0).min(NR);
                orow[c0..c0 + valid].copy_from_slice(&acc[..valid]);
            }
        });
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    struct Ptrs {
        x: *const f32,
        w: *const u8,
        out: *mut f32,
    }
    // SAFETY: `Ptrs` only carries the buffers of one `matmul` call to its rayon tasks, which all
    // finish before `matmul` returns (the buffers outlive them); tasks only read `x` and `w`
    // and write disjoint blocks of `out`.
    unsafe impl Send for Ptrs {}
    // SAFETY: as for `Send`: shared access only reads `x`/`w` and writes disjoint `out` blocks.
    unsafe impl Sync for Ptrs {}

    /// Loads one k-row of a panel (16 weights) as two f32 vectors: columns 0..8 and 8..16.
    /// bf16 rows are stored so that 32-bit word `i` holds columns `i` (low half) and
    /// `i + 8` (high half): one load, one shift and one mask widen them exactly.
    #[inline(always)]
    unsafe fn load16<const BF: bool>(w: *const u8, idx: usize) -> (__m256, __m256) {
        // SAFETY: AVX2 is enabled in every caller; `w` points at packed weights (bf16 if `BF`, else f32)
        // with 16 elements readable from element `idx` (one k-row of a panel).
        unsafe {
            if BF {
                let v = _mm256_loadu_si256((w as *const u16).add(idx) as *const __m256i);
                let lo = _mm256_slli_epi32::<16>(v);
                let hi = _mm256_and_si256(v, _mm256_set1_epi32(0xffff0000u32 as i32));
                (_mm256_castsi256_ps(lo), _mm256_castsi256_ps(hi))
            } else {
                let p = (w as *const f32).add(idx);
                (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
            }
        }
    }

    /// Stores a row of 16 accumulators, or its first `ncols`.
    #[inline(always)]
    unsafe fn store16(dst: *mut f32, a: __m256, b: __m256, ncols: usize) {
        // SAFETY: AVX2 is enabled in every caller; `dst` is writable for `min(ncols, 16)` f32 (an output row
        // of the caller's tile) and `tmp` is a local 16-element array.
        unsafe {
            if ncols >= NR {
                _mm256_storeu_ps(dst, a);
                _mm256_storeu_ps(dst.add(8), b);
            } else {
                let mut tmp = [0f32; NR];
                _mm256_storeu_ps(tmp.as_mut_ptr(), a);
                _mm256_storeu_ps(tmp.as_mut_ptr().add(8), b);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, ncols);
            }
        }
    }

    #[inline(always)]
    unsafe fn load_acc(src: *const f32, ncols: usize) -> (__m256, __m256) {
        // SAFETY: AVX2 is enabled in every caller; `src` is readable for `min(ncols, 16)` f32 (an output row
        // of the caller's tile) and `tmp` is a local 16-element array.
        unsafe {
            if ncols >= NR {
                (_mm256_loadu_ps(src), _mm256_loadu_ps(src.add(8)))
            } else {
                let mut tmp = [0f32; NR];
                std::ptr::copy_nonoverlapping(src, tmp.as_mut_ptr(), ncols);
                (
                    _mm256_loadu_ps(tmp.as_ptr()),
                    _mm256_loadu_ps(tmp.as_ptr().add(8)),
                )
            }
        }
    }

    /// Storage of the weights an AVX2 kernel is instantiated for.
    const F32: u8 = 0;
    const BF16: u8 = 1;
    const Q4_0: u8 = 2;
    const Q4_1: u8 = 3;
    const Q8_0: u8 = 4;

    fn block_type(f: u8) -> BlockType {
        match f {
            Q4_0 => BlockType::Q4_0,
            Q4_1 => BlockType::Q4_1,
            _ => BlockType::Q8_0,
        }
    }

    /// `d` and `m` (zero unless Q4_1) of a tile's 16 columns, as two f32 vectors each.
    #[inline(always)]
    unsafe fn tile_scales<const F: u8>(t: *const u8) -> [__m256; 4] {
        // SAFETY: AVX2 and F16C are enabled in every caller; `t` is a tile of `block_type(F)`,
        // whose first 32 bytes are `d` (16 f16) and, for Q4_1, the next 32 `m`.
        unsafe {
            let half = |at: usize| _mm256_cvtph_ps(_mm_loadu_si128(t.add(at) as *const __m128i));
            let (d0, d1) = (half(0), half(16));
            if F == Q4_1 {
                [d0, d1, half(32), half(48)]
            } else {
                [d0, d1, _mm256_setzero_ps(), _mm256_setzero_ps()]
            }
        }
    }

    /// Q4_x weights of 8 columns from their nibbles `q` (in the low 4 bits of each lane).
    #[inline(always)]
    unsafe fn nibbles<const F: u8>(q: __m256i, d: __m256, m: __m256) -> __m256 {
        // SAFETY: AVX2 and FMA are enabled in every caller; register operations only.
        unsafe {
            if F == Q4_1 {
                _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q), m)
            } else {
                _mm256_mul_ps(
                    d,
                    _mm256_cvtepi32_ps(_mm256_sub_epi32(q, _mm256_set1_epi32(8))),
                )
            }
        }
    }

    /// Q8_0 weights of a tile's 16 columns at one k (`row`: 16 `i8`).
    #[inline(always)]
    unsafe fn bytes16(row: *const u8, d0: __m256, d1: __m256) -> (__m256, __m256) {
        // SAFETY: AVX2 is enabled in every caller; `row` has 16 readable bytes.
        unsafe {
            let lo = _mm256_cvtepi8_epi32(_mm_loadl_epi64(row as *const __m128i));
            let hi = _mm256_cvtepi8_epi32(_mm_loadl_epi64(row.add(8) as *const __m128i));
            (
                _mm256_mul_ps(d0, _mm256_cvtepi32_ps(lo)),
                _mm256_mul_ps(d1, _mm256_cvtepi32_ps(hi)),
            )
        }
    }

    /// Few-row tile of a block matrix (decode): `MR` rows x `NP` panels, full K, each weight
    /// de-quantized in registers once for all `MR` rows. `w` is the first panel's first tile.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_direct_q<const F: u8, const MR: usize, const NP: usize>(
        k: usize,
        x: *const f32,
        ldx: usize,
        w: *const u8,
        out: *mut f32,
        ldo: usize,
        ncols: usize,
    ) {
        // SAFETY: AVX2, FMA and F16C are available (caller); `x` holds `MR` rows of `k` f32 at
        // stride `ldx`, `w` the `k / 32` tiles of `NP` consecutive panels, and `out` `MR` rows of
        // `min(ncols, 16 * NP)` writable f32 at stride `ldo` (`block_direct_q`'s tile).
        unsafe {
            let bt = block_type(F);
            let (tb, qo, kb) = (bt.tile_bytes(), bt.quant_offset(), k / QK);
            let mut acc = [[[_mm256_setzero_ps(); 2]; NP]; MR];
            let mask = _mm256_set1_epi32(0xf);
            for b in 0..kb {
                let mut sc = [[_mm256_setzero_ps(); 4]; NP];
                for p in 0..NP {
                    sc[p] = tile_scales::<F>(w.add((p * kb + b) * tb));
                }
                let xb0 = x.add(b * QK);
                if F == Q8_0 {
                    for kk in 0..QK {
                        for p in 0..NP {
                            let qs = w.add((p * kb + b) * tb + qo);
                            let (w0, w1) = bytes16(qs.add(kk * NR), sc[p][0], sc[p][1]);
                            for r in 0..MR {
                                let xb = _mm256_broadcast_ss(&*xb0.add(r * ldx + kk));
                                acc[r][p][0] = _mm256_fmadd_ps(xb, w0, acc[r][p][0]);
                                acc[r][p][1] = _mm256_fmadd_ps(xb, w1, acc[r][p][1]);
                            }
                        }
                    }
                } else {
                    for g in 0..QK / 8 {
                        let mut v = [[_mm256_setzero_si256(); 2]; NP];
                        for p in 0..NP {
                            let qs = w.add((p * kb + b) * tb + qo + g * 64);
                            v[p] = [
                                _mm256_loadu_si256(qs as *const __m256i),
                                _mm256_loadu_si256(qs.add(32) as *const __m256i),
                            ];
                        }
                        for j in 0..8 {
                            for p in 0..NP {
                                let [d0, d1, m0, m1] = sc[p];
                                let w0 = nibbles::<F>(_mm256_and_si256(v[p][0], mask), d0, m0);
                                let w1 = nibbles::<F>(_mm256_and_si256(v[p][1], mask), d1, m1);
                                v[p][0] = _mm256_srli_epi32::<4>(v[p][0]);
                                v[p][1] = _mm256_srli_epi32::<4>(v[p][1]);
                                for r in 0..MR {
                                    let xb = _mm256_broadcast_ss(&*xb0.add(r * ldx + g * 8 + j));
                                    acc[r][p][0] = _mm256_fmadd_ps(xb, w0, acc[r][p][0]);
                                    acc[r][p][1] = _mm256_fmadd_ps(xb, w1, acc[r][p][1]);
                                }
                            }
                        }
                    }
                }
            }
            for r in 0..MR {
                for p in 0..NP {
                    if p * NR < ncols {
                        store16(
                            out.add(r * ldo + p * NR),
                            acc[r][p][0],
                            acc[r][p][1],
                            ncols - p * NR,
                        );
                    }
                }
            }
        }
    }

    /// Rows `[r0, r1)` (at most 4) x panels `[p0, p1)` of a block matrix, straight from memory.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_direct_q<const F: u8>(
        ptr: Ptrs,
        k: usize,
        n: usize,
        rows: (usize, usize),
        panels: (usize, usize),
    ) {
        // SAFETY: AVX2, FMA and F16C are available (`matmul`'s caller checked); `ptr.x` holds
        // `rows * k` f32, `ptr.w` the tiles of `panels` panels (`k / 32` each) and `ptr.out`
        // `rows * n` f32; `rows` and `panels` lie inside them, and a tile of 2 panels is only
        // taken when 2 are left.
        unsafe {
            let (r0, r1) = rows;
            let x = ptr.x.add(r0 * k);
            let panel_bytes = (k / QK) * block_type(F).tile_bytes();
            let mut p = panels.0;
            while p < panels.1 {
                let w = ptr.w.add(p * panel_bytes);
                let out = ptr.out.add(r0 * n + p * NR);
                let ncols = n - p * NR;
                macro_rules! go {
                    ($mr:literal, $np:literal) => {{
                        tile_direct_q::<F, $mr, $np>(k, x, k, w, out, n, ncols);
                        p += $np;
                    }};
                }
                match (r1 - r0, panels.1 - p) {
                    (1, 2..) => go!(1, 2),
                    (1, _) => go!(1, 1),
                    (2, _) => go!(2, 1),
                    (3, _) => go!(3, 1),
                    _ => go!(4, 1),
                }
            }
        }
    }

    /// Rows `[k0, k0 + kc)` of panel `p` of a block matrix de-quantized into `wf` (`[kc][16]` f32).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen_q<const F: u8>(
        w: *const u8,
        k: usize,
        p: usize,
        k0: usize,
        kc: usize,
        wf: *mut f32,
    ) {
        // SAFETY: AVX2, FMA and F16C are available (caller); `w` holds the tiles of panel `p`
        // (`k / 32` of them), `k0 + kc <= k`, and `wf` has `kc * 16` writable f32.
        unsafe {
            let bt = block_type(F);
            let tb = bt.tile_bytes();
            let panel = w.add(p * (k / QK) * tb);
            let mask = _mm256_set1_epi32(0xf);
            for i in 0..kc {
                let kk = k0 + i;
                let t = panel.add((kk / QK) * tb);
                let [d0, d1, m0, m1] = tile_scales::<F>(t);
                let qs = t.add(bt.quant_offset());
                let r = kk % QK;
                let (w0, w1) = if F == Q8_0 {
                    bytes16(qs.add(r * NR), d0, d1)
                } else {
                    let shift = _mm_cvtsi32_si128(4 * (r % 8) as i32);
                    let g = qs.add((r / 8) * 64);
                    let v0 = _mm256_srl_epi32(_mm256_loadu_si256(g as *const __m256i), shift);
                    let v1 =
                        _mm256_srl_epi32(_mm256_loadu_si256(g.add(32) as *const __m256i), shift);
                    (
                        nibbles::<F>(_mm256_and_si256(v0, mask), d0, m0),
                        nibbles::<F>(_mm256_and_si256(v1, mask), d1, m1),
                    )
                };
                _mm256_storeu_ps(wf.add(i * NR), w0);
                _mm256_storeu_ps(wf.add(i * NR + 8), w1);
            }
        }
    }

    /// Few-row tile straight from the packed weights (decode): `MR` rows x `NP`
    /// panels, full K. `w0` is the element index of the first panel's start.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_direct<const BF: bool, const MR: usize, const NP: usize>(
        k: usize,
        x: *const f32,
        ldx: usize,
        w: *const u8,
        w0: usize,
        out: *mut f32,
        ldo: usize,
        ncols: usize,
    ) {
        // SAFETY: AVX2 and FMA are available (caller); `x` holds `MR` rows of `k` f32 at stride `ldx`, `w`
        // holds `NP` panels of `k * 16` weights from element `w0`, and `out` has `MR` rows of
        // `min(ncols, 16)` writable f32 per panel at stride `ldo` (`block_direct`'s tile).
        unsafe {
            let mut acc = [[[_mm256_setzero_ps(); 2]; NP]; MR];
            let pstride = k * NR;
            for kk in 0..k {
                let mut wv = [[_mm256_setzero_ps(); 2]; NP];
                for p in 0..NP {
                    let (a, b) = load16::<BF>(w, w0 + p * pstride + kk * NR);
                    wv[p] = [a, b];
                }
                for r in 0..MR {
                    let xb = _mm256_broadcast_ss(&*x.add(r * ldx + kk));
                    for p in 0..NP {
                        acc[r][p][0] = _mm256_fmadd_ps(xb, wv[p][0], acc[r][p][0]);
                        acc[r][p][1] = _mm256_fmadd_ps(xb, wv[p][1], acc[r][p][1]);
                    }
                }
            }
            for r in 0..MR {
                for p in 0..NP {
                    let c = p * NR;
                    if c < ncols {
                        store16(out.add(r * ldo + c), acc[r][p][0], acc[r][p][1], ncols - c);
                    }
                }
            }
        }
    }

    /// Many-row tile over one K block: `MR` rows of packed x (`[k][MR]`) times one
    /// f32 panel block (`[k][16]`), continuing the accumulators stored in `out`
    /// unless `first`. Storing and reloading an f32 is exact, so the chain per
    /// output is the same as in one pass over K.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_block<const MR: usize>(
        kc: usize,
        xp: *const f32,
        wf: *const f32,
        out: *mut f32,
        ldo: usize,
        ncols: usize,
        first: bool,
    ) {
        // SAFETY: AVX2 and FMA are available (caller); `xp` holds `kc * MR` packed f32, `wf` `kc * 16` f32,
        // and `out` has `MR` rows of `min(ncols, 16)` writable f32 at stride `ldo` (`block_packed`'s tile).
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            if !first {
                for r in 0..MR {
                    let (a, b) = load_acc(out.add(r * ldo), ncols);
                    acc[r] = [a, b];
                }
            }
            for kk in 0..kc {
                let w0 = _mm256_loadu_ps(wf.add(kk * NR));
                let w1 = _mm256_loadu_ps(wf.add(kk * NR + 8));
                for r in 0..MR {
                    let xb = _mm256_broadcast_ss(&*xp.add(kk * MR + r));
                    acc[r][0] = _mm256_fmadd_ps(xb, w0, acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(xb, w1, acc[r][1]);
                }
            }
            for r in 0..MR {
                store16(out.add(r * ldo), acc[r][0], acc[r][1], ncols);
            }
        }
    }

    /// Rows `[r0, r1)` x panels `[p0, p1)` for few rows (at most 4): straight from memory.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_direct<const BF: bool>(
        ptr: Ptrs,
        k: usize,
        n: usize,
        rows: (usize, usize),
        panels: (usize, usize),
    ) {
        // SAFETY: AVX2 and FMA are available (`matmul`'s caller checked); `ptr.x` holds `rows * k` f32,
        // `ptr.w` the packed weights (`panels * k * 16` elements) and `ptr.out` `rows * n` f32; `rows` and
        // `panels` lie inside them and a tile of NP panels is only taken when NP panels are left.
        unsafe {
            let (r0, r1) = rows;
            let m = r1 - r0;
            let x = ptr.x.add(r0 * k);
            let mut p = panels.0;
            while p < panels.1 {
                let left = panels.1 - p;
                let out = ptr.out.add(r0 * n + p * NR);
                let ncols = n - p * NR;
                let w0 = p * k * NR;
                macro_rules! go {
                    ($mr:literal, $np:literal) => {{
                        tile_direct::<BF, $mr, $np>(k, x, k, ptr.w, w0, out, n, ncols);
                        p += $np;
                    }};
                }
                match (m, left) {
                    (1, 4..) => go!(1, 4),
                    (1, _) => go!(1, 1),
                    (2, 2..) => go!(2, 2),
                    (2, _) => go!(2, 1),
                    (3, 2..) => go!(3, 2),
                    (3, _) => go!(3, 1),
                    _ => go!(4, 1),
                }
            }
        }
    }

    /// Longest K block of the many-row path (a 16-column f32 panel block of it, 20 KiB,
    /// fits in L1 beside the x tile).
    const KC: usize = 320;

    /// Balanced tiles of at most 6 rows for a block of `m` rows (8 rows -> 4 + 4, not 6 + 2):
    /// `(first row, rows)` of each, relative to the block.
    fn row_tiles(m: usize) -> impl Iterator<Item = (usize, usize)> {
        let n_tiles = m.div_ceil(6);
        let mut t0 = 0;
        (0..n_tiles).map(move |t| {
            let mr = m / n_tiles + usize::from(t < m % n_tiles);
            let tile = (t0, mr);
            t0 += mr;
            tile
        })
    }

    /// x packed for the many-row path, once per product: each row block of `rb` rows is cut
    /// into [`row_tiles`] and tile `(t0, mr)` of the block at `r0` holds rows
    /// `r0+t0..r0+t0+mr` as `[k][mr]`, at offset `(r0 + t0) * k`.
    fn pack_x(x: &[f32], rows: usize, k: usize, rb: usize) -> Vec<f32> {
        let mut xp = vec![0f32; rows * k];
        let mut parts: Vec<(usize, usize, &mut [f32])> = Vec::new();
        let mut rest: &mut [f32] = &mut xp;
        for r0 in (0..rows).step_by(rb) {
            for (t0, mr) in row_tiles(rb.min(rows - r0)) {
                let (tile, tail) = std::mem::take(&mut rest).split_at_mut(mr * k);
                parts.push((r0 + t0, mr, tile));
                rest = tail;
            }
        }
        let fill = |(row, mr, tile): (usize, usize, &mut [f32])| {
            for r in 0..mr {
                let src = &x[(row + r) * k..(row + r + 1) * k];
                for (kk, &v) in src.iter().enumerate() {
                    tile[kk * mr + r] = v;
                }
            }
        };
        if rows * k < (1 << 15) {
            parts.into_iter().for_each(fill);
        } else {
            parts.into_par_iter().for_each(fill);
        }
        xp
    }

    /// Rows `[r0, r1)` x panels `[p0, p1)` for many rows: x packed by [`pack_x`] (`ptr.x`),
    /// each panel's K block widened (or de-quantized) to f32 once and reused by every row tile.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_packed<const F: u8>(
        ptr: Ptrs,
        k: usize,
        n: usize,
        rows: (usize, usize),
        panels: (usize, usize),
    ) {
        // SAFETY: AVX2, FMA and F16C are available (`matmul`'s caller checked); `ptr.x` is x packed by
        // `pack_x` (`rows * k` f32), `ptr.w` the packed weights (`panels * k * 16` elements, or the
        // tiles of `panels` panels) and `ptr.out` the
        // `rows * n` outputs, and `rows`/`panels` lie inside them, so each tile reads and writes in bounds;
        // `wf` is a local `KC * 16` array and `kc <= kcb <= KC`.
        unsafe {
            let (r0, r1) = rows;
            let tiles: Vec<(usize, usize)> = row_tiles(r1 - r0).collect();
            let mut wf = [0f32; KC * NR];
            // K blocks of equal length (576 -> 288 + 288, not 256 + 256 + 64): fewer
            // accumulator store/reload rounds, none of them short.
            let n_kb = k.div_ceil(KC);
            let kcb = k.div_ceil(n_kb);
            // Panel-major: each panel is read front to back in one sweep (a sequential stream
            // for the prefetcher); the K blocks of every output still run in increasing order.
            for p in panels.0..panels.1 {
                for kb in 0..n_kb {
                    let k0 = kb * kcb;
                    let kc = (k - k0).min(kcb);
                    let src = p * k * NR + k0 * NR;
                    let wblock: *const f32 = match F {
                        F32 => (ptr.w as *const f32).add(src),
                        BF16 => {
                            for kk in 0..kc {
                                let (a, b) = load16::<true>(ptr.w, src + kk * NR);
                                _mm256_storeu_ps(wf.as_mut_ptr().add(kk * NR), a);
                                _mm256_storeu_ps(wf.as_mut_ptr().add(kk * NR + 8), b);
                            }
                            wf.as_ptr()
                        }
                        _ => {
                            widen_q::<F>(ptr.w, k, p, k0, kc, wf.as_mut_ptr());
                            wf.as_ptr()
                        }
                    };
                    let ncols = n - p * NR;
                    for &(t0, mr) in &tiles {
                        let xt = ptr.x.add((r0 + t0) * k + k0 * mr);
                        let out = ptr.out.add((r0 + t0) * n + p * NR);
                        let first = kb == 0;
                        match mr {
                            6 => tile_block::<6>(kc, xt, wblock, out, n, ncols, first),
                            5 => tile_block::<5>(kc, xt, wblock, out, n, ncols, first),
                            4 => tile_block::<4>(kc, xt, wblock, out, n, ncols, first),
                            3 => tile_block::<3>(kc, xt, wblock, out, n, ncols, first),
                            2 => tile_block::<2>(kc, xt, wblock, out, n, ncols, first),
                            _ => tile_block::<1>(kc, xt, wblock, out, n, ncols, first),
                        }
                    }
                }
            }
        }
    }

    pub(super) fn matmul(x: &[f32], rows: usize, w: &PackedMatrix, out: &mut [f32]) {
        let (k, n, panels) = (w.k, w.n, w.panels);
        let (wp, fmt) = match &w.buf {
            Buf::F32(v) => (v.as_ptr() as *const u8, F32),
            Buf::Bf16(v) => (v.as_ptr() as *const u8, BF16),
            Buf::Blocks(BlockType::Q4_0, v) => (v.as_ptr(), Q4_0),
            Buf::Blocks(BlockType::Q4_1, v) => (v.as_ptr(), Q4_1),
            Buf::Blocks(BlockType::Q8_0, v) => (v.as_ptr(), Q8_0),
        };
        // Task plan: row blocks whose x fits in L2 (as equal as possible), panel chunks so
        // that there are several tasks per thread. The plan never changes any output's
        // arithmetic.
        let direct = rows <= 4;
        let rb = if direct {
            rows
        } else {
            let fit = (98304 / k).max(6);
            rows.div_ceil(rows.div_ceil(fit))
        };
        let n_rb = rows.div_ceil(rb);
        let packed = if direct {
            Vec::new()
        } else {
            pack_x(x, rows, k, rb)
        };
        let ptr = Ptrs {
            x: if direct { x.as_ptr() } else { packed.as_ptr() },
            w: wp,
            out: out.as_mut_ptr(),
        };
        let threads = rayon::current_num_threads().max(1);
        let want = 4 * threads;
        let n_pc_target = want.div_ceil(n_rb).max(1);
        let mut pc = panels.div_ceil(n_pc_target).max(1);
        if direct {
            pc = pc.div_ceil(4) * 4;
        }
        let n_pc = panels.div_ceil(pc);
        let run = move |t: usize| {
            let (bi, ci) = (t / n_pc, t % n_pc);
            let rows = (bi * rb, ((bi + 1) * rb).min(rows));
            let pans = (ci * pc, ((ci + 1) * pc).min(panels));
            // SAFETY: tasks write disjoint (row, column) blocks of `out`; AVX2+FMA+F16C
            // availability was checked by the caller.
            unsafe {
                match (direct, fmt) {
                    (true, F32) => block_direct::<false>(ptr, k, n, rows, pans),
                    (true, BF16) => block_direct::<true>(ptr, k, n, rows, pans),
                    (true, Q4_0) => block_direct_q::<Q4_0>(ptr, k, n, rows, pans),
                    (true, Q4_1) => block_direct_q::<Q4_1>(ptr, k, n, rows, pans),
                    (true, _) => block_direct_q::<Q8_0>(ptr, k, n, rows, pans),
                    (false, F32) => block_packed::<F32>(ptr, k, n, rows, pans),
                    (false, BF16) => block_packed::<BF16>(ptr, k, n, rows, pans),
                    (false, Q4_0) => block_packed::<Q4_0>(ptr, k, n, rows, pans),
                    (false, Q4_1) => block_packed::<Q4_1>(ptr, k, n, rows, pans),
                    (false, _) => block_packed::<Q8_0>(ptr, k, n, rows, pans),
                }
            }
        };
        let tasks = n_rb * n_pc;
        let work = rows * panels * NR * k;
        if tasks == 1 || work < (1 << 16) {
            (0..tasks).for_each(run);
        } else {
            (0..tasks).into_par_iter().for_each(run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn matches_f64_reference() {
        let mut s = 7u64;
        let (k, n, rows) = (37, 45, 9);
        let w: Vec<f32> = (0..k * n).map(|_| lcg(&mut s)).collect();
        let x: Vec<f32> = (0..rows * k).map(|_| lcg(&mut s)).collect();
        let pm = PackedMatrix::from_kn(&w, k, n, WeightDtype::F32);
        for isa in [Isa::Scalar, Isa::detect()] {
            let mut out = vec![0f32; rows * n];
            matmul(isa, &x, rows, &pm, &mut out);
            for r in 0..rows {
                for c in 0..n {
                    let want: f64 = (0..k)
                        .map(|kk| x[r * k + kk] as f64 * w[kk * n + c] as f64)
                        .sum();
                    assert!((out[r * n + c] as f64 - want).abs() < 1e-4);
                }
            }
        }
    }

    #[test]
    fn concat_is_columnwise() {
        let mut s = 3u64;
        let a: Vec<f32> = (0..5 * 7).map(|_| lcg(&mut s)).collect();
        let b: Vec<f32> = (0..5 * 20).map(|_| lcg(&mut s)).collect();
        let pa = PackedMatrix::from_nk(&a, 7, 5, WeightDtype::Bf16);
        let pb = PackedMatrix::from_nk(&b, 20, 5, WeightDtype::Bf16);
        let pc = PackedMatrix::concat_n(&[&pa, &pb]);
        assert_eq!(pc.n(), 27);
        let back = PackedMatrix::from_packed(5, 27, pc.packed()).unwrap();
        assert_eq!(back.get(3, 26), pc.get(3, 26));
        assert!(PackedMatrix::from_packed(5, 28, pc.packed()).is_ok());
        assert!(PackedMatrix::from_packed(5, 33, pc.packed()).is_err());
        for kk in 0..5 {
            for c in 0..7 {
                assert_eq!(pc.get(kk, c), pa.get(kk, c));
            }
            for c in 0..20 {
                assert_eq!(pc.get(kk, 7 + c), pb.get(kk, c));
            }
        }
    }
}
