//! CRC-32C (Castagnoli; reflected polynomial `0x82F63B78`, initial value and final xor
//! `0xFFFFFFFF`; check value `crc32c(b"123456789") == 0xE3069283`). Uses the SSE4.2 `crc32`
//! instruction where the CPU has it, slicing-by-8 tables otherwise.

const POLY: u32 = 0x82F6_3B78;

const fn make_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut j = 1;
        while j < 8 {
            let prev = t[j - 1][i];
            t[j][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            j += 1;
        }
        i += 1;
    }
    t
}

static TABLES: [[u32; 256]; 8] = make_tables();

/// Raw (non-inverted) state update, slicing-by-8.
fn update_soft(mut state: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) ^ state;
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        state = TABLES[7][(lo & 0xff) as usize]
            ^ TABLES[6][((lo >> 8) & 0xff) as usize]
            ^ TABLES[5][((lo >> 16) & 0xff) as usize]
            ^ TABLES[4][(lo >> 24) as usize]
            ^ TABLES[3][(hi & 0xff) as usize]
            ^ TABLES[2][((hi >> 8) & 0xff) as usize]
            ^ TABLES[1][((hi >> 16) & 0xff) as usize]
            ^ TABLES[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        state = (state >> 8) ^ TABLES[0][((state ^ b as u32) & 0xff) as usize];
    }
    state
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn update_hw(state: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut s = state as u64;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        s = _mm_crc32_u64(s, u64::from_le_bytes(c.try_into().unwrap()));
    }
    let mut s = s as u32;
    for &b in chunks.remainder() {
        s = _mm_crc32_u8(s, b);
    }
    s
}

fn update(state: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE4.2.
        return unsafe { update_hw(state, data) };
    }
    update_soft(state, data)
}

/// CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_append(0, data)
}

/// Continues a CRC: `crc32c_append(crc32c(a), b) == crc32c(a ++ b)`.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    !update(!crc, data)
}

/// CRC-32C of token ids written as `u32` little-endian (the container's token checksums).
pub fn tokens_crc32c(tokens: &[u32]) -> u32 {
    let mut crc = 0;
    let mut buf = [0u8; 4096];
    for chunk in tokens.chunks(1024) {
        for (b, t) in buf.chunks_exact_mut(4).zip(chunk) {
            b.copy_from_slice(&t.to_le_bytes());
        }
        crc = crc32c_append(crc, &buf[..4 * chunk.len()]);
    }
    crc
}

/// `a * b` modulo the CRC polynomial (bit-reflected).
fn mult_mod(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut p = 0;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
        if m == 0 {
            break;
        }
    }
    p
}

/// `x^(8 * len)` modulo the polynomial.
fn x_pow_8n(mut len: u64) -> u32 {
    let mut x2k = 1u32 << 30; // x^1
    let mut p = 1u32 << 31; // x^0
    // Start at x^(2^3) = x^8 per byte.
    for _ in 0..3 {
        x2k = mult_mod(x2k, x2k);
    }
    while len != 0 {
        if len & 1 != 0 {
            p = mult_mod(x2k, p);
        }
        len >>= 1;
        x2k = mult_mod(x2k, x2k);
    }
    p
}

/// CRC of a concatenation from the CRCs of its parts: `crc32c_combine(crc32c(a), crc32c(b),
/// b.len()) == crc32c(a ++ b)`.
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    mult_mod(x_pow_8n(len_b), crc_a) ^ crc_b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_values() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        for split in [0, 1, 7, 8, 9, 500, 1000] {
            let (a, b) = data.split_at(split);
            assert_eq!(crc32c_append(crc32c(a), b), crc32c(&data));
            assert_eq!(crc32c_combine(crc32c(a), crc32c(b), b.len() as u64), crc32c(&data));
            assert_eq!(!update_soft(!0, &data), crc32c(&data));
        }
        assert_eq!(tokens_crc32c(&[1, 2]), crc32c(&[1, 0, 0, 0, 2, 0, 0, 0]));
    }
}
