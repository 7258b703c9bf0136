//! GGUF block-quantized weights (Q4_0, Q4_1, Q8_0), computed exactly.
//!
//! A GGUF block holds 32 consecutive weights of one matrix row (one output column of the
//! engine's `[K, N]` product, `K` the block's direction) and one or two f16 scales. Its
//! weights, as `gguf.quants.dequantize` (and so transformers) computes them in f32:
//!
//! - Q4_0: `d * f32(q - 8)`, `q` a 4-bit unsigned integer;
//! - Q4_1: `d * f32(q) + m` (numpy's two roundings: `d * q` is exact, since an f16 has 11
//!   significant bits and `q` 4, so this is `fma(d, q, m)`);
//! - Q8_0: `d * f32(q)`, `q` an 8-bit signed integer (exact).
//!
//! These are the definitions; every kernel computes a weight by exactly one of them, in
//! registers, and then runs the f32 engine's FMA chain ([`crate::matmul`]) on it. So an engine
//! on block weights gives the bits of the f32 engine on the de-quantized weights.
//!
//! For the kernels the blocks are re-blocked into *tiles* of 16 columns x 32 k (one k-block of
//! one panel), panel-major: `f16 d[16]`, for Q4_1 `f16 m[16]`, then the quants — for Q4_x four
//! groups of 8 k, each 16 `u32` whose nibble `j` (bits `4j..4j+4`) is column `c`'s `q` at
//! k `8g + j` (so AVX2 extracts 8 columns' `q` with one shift and one mask), for Q8_0 32 rows
//! of 16 `i8` (column order).

/// A GGUF block type the engine computes with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockType {
    Q4_0,
    Q4_1,
    Q8_0,
}

/// Weights per block (all three types).
pub const QK: usize = 32;
/// Columns per tile (one panel, [`crate::matmul::NR`]).
const TC: usize = 16;

impl BlockType {
    pub fn name(self) -> &'static str {
        match self {
            BlockType::Q4_0 => "q4_0",
            BlockType::Q4_1 => "q4_1",
            BlockType::Q8_0 => "q8_0",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "q4_0" => Some(BlockType::Q4_0),
            "q4_1" => Some(BlockType::Q4_1),
            "q8_0" => Some(BlockType::Q8_0),
            _ => None,
        }
    }

    pub const ALL: [BlockType; 3] = [BlockType::Q4_0, BlockType::Q4_1, BlockType::Q8_0];

    /// Bytes of one GGUF block (32 weights).
    pub fn raw_bytes(self) -> usize {
        match self {
            BlockType::Q4_0 => 18,
            BlockType::Q4_1 => 20,
            BlockType::Q8_0 => 34,
        }
    }

    /// Bytes of one re-blocked tile (16 columns x 32 k).
    pub fn tile_bytes(self) -> usize {
        self.quant_offset() + self.quant_bytes()
    }

    /// Offset of the quants in a tile (after `d` and, for Q4_1, `m`).
    pub(crate) fn quant_offset(self) -> usize {
        match self {
            BlockType::Q4_1 => 4 * TC,
            _ => 2 * TC,
        }
    }

    fn quant_bytes(self) -> usize {
        match self {
            BlockType::Q8_0 => QK * TC,
            _ => QK * TC / 2,
        }
    }

    /// The block type whose raw GGUF rows (`rows` rows of `k` weights) take `len` bytes.
    pub fn from_raw_len(rows: usize, k: usize, len: usize) -> Option<Self> {
        if k % QK != 0 {
            return None;
        }
        Self::ALL
            .into_iter()
            .find(|b| rows * (k / QK) * b.raw_bytes() == len)
    }

    /// The block type whose re-blocked `[K, N]` matrix takes `len` bytes (the tile sizes differ).
    pub fn from_packed_len(k: usize, n: usize, len: usize) -> Option<Self> {
        if k % QK != 0 {
            return None;
        }
        Self::ALL
            .into_iter()
            .find(|b| n.div_ceil(TC) * (k / QK) * b.tile_bytes() == len)
    }

    /// The weight a (d, m, q) triple stands for (see the module docs; `m` is ignored but by Q4_1,
    /// `q` is the stored integer: a nibble for Q4_x, `i8` bits for Q8_0).
    #[inline(always)]
    pub fn value(self, d: f32, m: f32, q: u8) -> f32 {
        match self {
            BlockType::Q4_0 => d * (q as i32 - 8) as f32,
            BlockType::Q4_1 => d.mul_add(q as f32, m),
            BlockType::Q8_0 => d * (q as i8) as f32,
        }
    }
}

/// One block decoded from its bytes: f16 bits of `d` and `m` (0 unless Q4_1), the 32 quants.
#[derive(Clone, Copy)]
pub(crate) struct QBlock {
    pub d: u16,
    pub m: u16,
    pub q: [u8; QK],
}

impl QBlock {
    pub const ZERO: QBlock = QBlock {
        d: 0,
        m: 0,
        q: [0; QK],
    };

    /// Decodes a GGUF block (`bt.raw_bytes()` bytes).
    pub fn from_raw(bt: BlockType, raw: &[u8]) -> QBlock {
        let d = u16::from_le_bytes([raw[0], raw[1]]);
        let mut q = [0u8; QK];
        match bt {
            BlockType::Q4_0 | BlockType::Q4_1 => {
                let (m, qs) = if bt == BlockType::Q4_1 {
                    (u16::from_le_bytes([raw[2], raw[3]]), &raw[4..20])
                } else {
                    (0, &raw[2..18])
                };
                for j in 0..QK / 2 {
                    q[j] = qs[j] & 0xf;
                    q[j + QK / 2] = qs[j] >> 4;
                }
                QBlock { d, m, q }
            }
            BlockType::Q8_0 => {
                q.copy_from_slice(&raw[2..34]);
                QBlock { d, m: 0, q }
            }
        }
    }

    /// The 32 weights as f32.
    pub fn values(&self, bt: BlockType, out: &mut [f32]) {
        let (d, m) = (f16_to_f32(self.d), f16_to_f32(self.m));
        for (o, &q) in out.iter_mut().zip(&self.q) {
            *o = bt.value(d, m, q);
        }
    }
}

/// Writes column `j` (0..16) of a tile from one block.
pub(crate) fn put_tile_column(bt: BlockType, tile: &mut [u8], j: usize, b: &QBlock) {
    tile[2 * j..2 * j + 2].copy_from_slice(&b.d.to_le_bytes());
    if bt == BlockType::Q4_1 {
        tile[2 * TC + 2 * j..2 * TC + 2 * j + 2].copy_from_slice(&b.m.to_le_bytes());
    }
    let qs = &mut tile[bt.quant_offset()..];
    match bt {
        BlockType::Q8_0 => {
            for kk in 0..QK {
                qs[kk * TC + j] = b.q[kk];
            }
        }
        _ => {
            for g in 0..QK / 8 {
                let mut word = 0u32;
                for i in 0..8 {
                    word |= ((b.q[8 * g + i] & 0xf) as u32) << (4 * i);
                }
                let at = (g * TC + j) * 4;
                qs[at..at + 4].copy_from_slice(&word.to_le_bytes());
            }
        }
    }
}

/// Reads column `j` of a tile back as a block.
pub(crate) fn tile_column(bt: BlockType, tile: &[u8], j: usize) -> QBlock {
    let d = u16::from_le_bytes([tile[2 * j], tile[2 * j + 1]]);
    let m = if bt == BlockType::Q4_1 {
        u16::from_le_bytes([tile[2 * TC + 2 * j], tile[2 * TC + 2 * j + 1]])
    } else {
        0
    };
    let qs = &tile[bt.quant_offset()..];
    let mut q = [0u8; QK];
    for kk in 0..QK {
        q[kk] = tile_quant(bt, qs, kk, j);
    }
    QBlock { d, m, q }
}

/// The quant of column `j` at k `kk` (0..32) of a tile's quant area.
#[inline(always)]
pub(crate) fn tile_quant(bt: BlockType, qs: &[u8], kk: usize, j: usize) -> u8 {
    match bt {
        BlockType::Q8_0 => qs[kk * TC + j],
        _ => {
            let at = ((kk / 8) * TC + j) * 4;
            let word = u32::from_le_bytes([qs[at], qs[at + 1], qs[at + 2], qs[at + 3]]);
            ((word >> (4 * (kk % 8))) & 0xf) as u8
        }
    }
}

/// `d` and `m` of every column of a tile, as f32.
#[inline(always)]
pub(crate) fn tile_scales(bt: BlockType, tile: &[u8]) -> ([f32; TC], [f32; TC]) {
    let mut d = [0f32; TC];
    let mut m = [0f32; TC];
    for j in 0..TC {
        d[j] = f16_to_f32(u16::from_le_bytes([tile[2 * j], tile[2 * j + 1]]));
        if bt == BlockType::Q4_1 {
            m[j] = f16_to_f32(u16::from_le_bytes([
                tile[2 * TC + 2 * j],
                tile[2 * TC + 2 * j + 1],
            ]));
        }
    }
    (d, m)
}

/// IEEE half (bits) to f32, exact (subnormals, infinities and NaN included), as F16C's
/// `vcvtph2ps` converts.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // subnormal: man * 2^-24, exact in f32
            let v = man as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// Rounds an f32 to the nearest f16 (ties to even; overflow to infinity), as numpy's
/// `astype(float16)`: for quantizing test weights.
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    if x.is_nan() {
        return sign | 0x7e00;
    }
    let a = x.abs();
    if a >= 65520.0 {
        return sign | 0x7c00;
    }
    if a < 6.103_515_6e-5 {
        // subnormal range: multiples of 2^-24, rounded to nearest even by the f32 add
        let v = (a * 16_777_216.0).round_ties_even() as u16;
        return sign | v;
    }
    let e = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let man = bits & 0x7f_ffff;
    let mut h = ((e as u32) << 10) | (man >> 13);
    let rest = man & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && (h & 1) == 1) {
        h += 1;
    }
    sign | h as u16
}

/// Quantizes `[rows][k]` f32 weights into GGUF blocks (llama.cpp's reference quantizers), for
/// tests and synthetic models.
pub fn quantize(bt: BlockType, w: &[f32], rows: usize, k: usize) -> Vec<u8> {
    assert!(k % QK == 0 && w.len() == rows * k);
    let mut out = Vec::with_capacity(rows * (k / QK) * bt.raw_bytes());
    for blk in w.chunks(QK) {
        match bt {
            BlockType::Q8_0 => {
                let amax = blk.iter().fold(0f32, |a, &x| a.max(x.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
                out.extend(blk.iter().map(|&x| ((x * id).round() as i8) as u8));
            }
            BlockType::Q4_0 => {
                let max = blk
                    .iter()
                    .fold(0f32, |a, &x| if x.abs() > a.abs() { x } else { a });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
                let q = |x: f32| ((x * id + 8.5) as i32).min(15) as u8;
                for j in 0..QK / 2 {
                    out.push(q(blk[j]) | (q(blk[j + QK / 2]) << 4));
                }
            }
            BlockType::Q4_1 => {
                let min = blk.iter().fold(f32::INFINITY, |a, &x| a.min(x));
                let max = blk.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
                out.extend_from_slice(&f32_to_f16(min).to_le_bytes());
                let q = |x: f32| (((x - min) * id + 0.5) as i32).min(15) as u8;
                for j in 0..QK / 2 {
                    out.push(q(blk[j]) | (q(blk[j + QK / 2]) << 4));
                }
            }
        }
    }
    out
}

/// De-quantizes GGUF blocks (`[rows][k/32]` blocks) to f32, by the definitions above.
pub fn dequantize(bt: BlockType, raw: &[u8], rows: usize, k: usize) -> Vec<f32> {
    assert!(k % QK == 0 && raw.len() == rows * (k / QK) * bt.raw_bytes());
    let mut out = vec![0f32; rows * k];
    for (o, r) in out.chunks_mut(QK).zip(raw.chunks(bt.raw_bytes())) {
        QBlock::from_raw(bt, r).values(bt, o);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_round_trip() {
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if f.is_nan() {
                continue;
            }
            assert_eq!(f32_to_f16(f), h, "{h:#x}");
        }
        assert_eq!(f32_to_f16(1.0 + 1.0 / 2048.0), 0x3c00); // tie to even
        assert_eq!(f32_to_f16(1.0 + 3.0 / 2048.0), 0x3c02);
    }

    #[test]
    fn tiles_round_trip_blocks() {
        for bt in BlockType::ALL {
            let w: Vec<f32> = (0..QK).map(|i| (i as f32 - 13.0) * 0.37).collect();
            let raw = quantize(bt, &w, 1, QK);
            let b = QBlock::from_raw(bt, &raw);
            let mut tile = vec![0u8; bt.tile_bytes()];
            put_tile_column(bt, &mut tile, 5, &b);
            let back = tile_column(bt, &tile, 5);
            assert_eq!((back.d, back.m, back.q), (b.d, b.m, b.q));
            let vals = dequantize(bt, &raw, 1, QK);
            for (v, x) in vals.iter().zip(&w) {
                assert!((v - x).abs() < 0.6, "{bt:?} {v} {x}");
            }
        }
    }
}
