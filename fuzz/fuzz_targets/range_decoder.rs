//! The range decoder on arbitrary bytes under a few tables (static, per-row, adaptive):
//! never panics or hangs; whatever decodes re-encodes and decodes to the same symbols.
#![no_main]
use libfuzzer_sys::fuzz_target;
use seqkv_coder::{adaptive, table};

/// A static table of `len` symbols summing to `2^precision`, shaped by `skew`.
fn make_table(len: usize, precision: u32, skew: u8) -> Vec<u32> {
    let total = 1u64 << precision;
    let mut f: Vec<u32> = (0..len).map(|i| 1 + ((i as u32 * skew as u32) % 7)).collect();
    let sum: u64 = f.iter().map(|&x| x as u64).sum();
    f[0] += (total - sum) as u32;
    f
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (sel, skew, n, bytes) = (data[0], data[1], data[2] as usize * 8, &data[3..]);
    match sel % 4 {
        0 | 1 => {
            let (len, precision) = [(2usize, 1u32), (5, 12), (256, 16), (1000, 24)][(sel / 4 % 4) as usize];
            let freqs = make_table(len, precision, skew);
            if let Ok(s) = table::decode_static(bytes, &freqs, n, precision) {
                let enc = table::encode_static(&s, &freqs, precision).unwrap();
                assert_eq!(table::decode_static(&enc, &freqs, n, precision).unwrap(), s);
            }
        }
        2 => {
            let (v, precision) = (3usize, 8u32 + (sel as u32 / 4) % 17);
            let rows = n.min(256);
            let freqs: Vec<u32> =
                (0..rows).flat_map(|r| make_table(v, precision, skew.wrapping_add(r as u8))).collect();
            if let Ok(s) = table::decode_rows(bytes, &freqs, v, precision) {
                let enc = table::encode_rows(&s, &freqs, v, precision).unwrap();
                assert_eq!(table::decode_rows(&enc, &freqs, v, precision).unwrap(), s);
            }
        }
        _ => {
            let alphabet = 1 + skew as usize;
            let (inc, limit) = (1 + (sel as u32 / 4) % 32, 1u32 << 16);
            if let Ok(s) = adaptive::decode_symbols(bytes, alphabet, n, inc, limit) {
                let enc = adaptive::encode_symbols(&s, alphabet, inc, limit).unwrap();
                assert_eq!(adaptive::decode_symbols(&enc, alphabet, n, inc, limit).unwrap(), s);
            }
        }
    }
});
