//! Fixed-width bit packing: `n` values of `bits` bits each (1..=32) into `ceil(n * bits / 8)`
//! bytes, the last byte padded with zero bits.
//!
//! The values form one bit stream, value 0 first. Two bit orders:
//!
//! * [`BitOrder::Msb`]: each value's bits most significant first, and the stream fills each
//!   byte from its most significant bit (`numpy.packbits` of the value bits, `bitorder="big"`).
//!   This is the `raw` codec's payload (`seqkv.codecs.raw.pack_bits`).
//! * [`BitOrder::Lsb`]: each value's bits least significant first, and the stream fills each
//!   byte from its least significant bit (`numpy.packbits(..., bitorder="little")`): value `i`
//!   occupies stream bits `i * bits .. (i + 1) * bits`, i.e. the little-endian integer made of
//!   all the bytes holds `value[i] << (i * bits)` (the KV quantizers' and residual's layout).

use crate::error::{corrupt, invalid, Result};

/// Bit order of [`pack_bits`] / [`unpack_bits`] (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitOrder {
    Msb,
    Lsb,
}

impl BitOrder {
    /// `"msb"` or `"lsb"`.
    pub fn parse(name: &str) -> Option<BitOrder> {
        match name {
            "msb" => Some(BitOrder::Msb),
            "lsb" => Some(BitOrder::Lsb),
            _ => None,
        }
    }
}

/// Bytes that `n` values of `bits` bits take.
pub fn packed_len(n: usize, bits: u32) -> usize {
    ((n as u128 * bits as u128).div_ceil(8)) as usize
}

fn check_bits(bits: u32) -> Result<()> {
    if !(1..=32).contains(&bits) {
        return invalid(format!("bits must be in 1..=32, got {bits}"));
    }
    Ok(())
}

/// Packs `values` (each `< 2^bits`) into `packed_len(values.len(), bits)` bytes.
pub fn pack_bits(values: &[u32], bits: u32, order: BitOrder) -> Result<Vec<u8>> {
    check_bits(bits)?;
    let max = if bits == 32 { u32::MAX as u64 } else { (1u64 << bits) - 1 };
    if let Some(i) = values.iter().position(|&v| v as u64 > max) {
        return invalid(format!("value[{i}] = {} does not fit in {bits} bits", values[i]));
    }
    let mut out = Vec::with_capacity(packed_len(values.len(), bits));
    // `acc` holds `have` pending bits: the next stream bits, in stream order from its top
    // (Msb) or its bottom (Lsb).
    let mut acc: u64 = 0;
    let mut have: u32 = 0;
    match order {
        BitOrder::Msb => {
            for &v in values {
                acc = (acc << bits) | v as u64;
                have += bits;
                while have >= 8 {
                    have -= 8;
                    out.push((acc >> have) as u8);
                }
                acc &= (1u64 << have) - 1;
            }
            if have > 0 {
                out.push((acc << (8 - have)) as u8);
            }
        }
        BitOrder::Lsb => {
            for &v in values {
                acc |= (v as u64) << have;
                have += bits;
                while have >= 8 {
                    out.push(acc as u8);
                    acc >>= 8;
                    have -= 8;
                }
            }
            if have > 0 {
                out.push(acc as u8);
            }
        }
    }
    Ok(out)
}

/// Inverse of [`pack_bits`]: `n` values of `bits` bits from exactly `packed_len(n, bits)`
/// bytes (`CorruptStream` otherwise). Padding bits are ignored.
pub fn unpack_bits(data: &[u8], n: usize, bits: u32, order: BitOrder) -> Result<Vec<u32>> {
    check_bits(bits)?;
    let need = packed_len(n, bits);
    if data.len() != need {
        return corrupt(format!("bit-packed data has {} bytes, expected {need}", data.len()));
    }
    let mask = if bits == 32 { u32::MAX as u64 } else { (1u64 << bits) - 1 };
    let mut out = Vec::with_capacity(n);
    let mut bytes = data.iter();
    let mut acc: u64 = 0;
    let mut have: u32 = 0;
    for _ in 0..n {
        while have < bits {
            // `need` bytes are present, so the stream never runs out here.
            let b = *bytes.next().expect("length checked above") as u64;
            match order {
                BitOrder::Msb => acc = (acc << 8) | b,
                BitOrder::Lsb => acc |= b << have,
            }
            have += 8;
        }
        match order {
            BitOrder::Msb => {
                have -= bits;
                out.push(((acc >> have) & mask) as u32);
                acc &= (1u64 << have) - 1;
            }
            BitOrder::Lsb => {
                out.push((acc & mask) as u32);
                acc >>= bits;
                have -= bits;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_layouts() {
        // 3 values of 3 bits: 0b101, 0b001, 0b110.
        let v = [5u32, 1, 6];
        // MSB: stream 101 001 110 -> 10100111 0(0000000)
        assert_eq!(pack_bits(&v, 3, BitOrder::Msb).unwrap(), vec![0b1010_0111, 0b0000_0000]);
        // LSB: stream bits (value bit 0 first) 101 100 011; byte bit 0 first:
        // byte0 bits0..8 = 1,0,1,1,0,0,0,1 -> 0b1000_1101; byte1 bit0 = 1.
        assert_eq!(pack_bits(&v, 3, BitOrder::Lsb).unwrap(), vec![0b1000_1101, 0b0000_0001]);
        assert_eq!(pack_bits(&[], 7, BitOrder::Msb).unwrap(), Vec::<u8>::new());
        assert_eq!(pack_bits(&[0xdead_beef], 32, BitOrder::Msb).unwrap(), vec![0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(pack_bits(&[0xdead_beef], 32, BitOrder::Lsb).unwrap(), vec![0xef, 0xbe, 0xad, 0xde]);
    }

    #[test]
    fn errors() {
        assert!(matches!(pack_bits(&[8], 3, BitOrder::Msb), Err(crate::Error::InvalidInput(_))));
        assert!(matches!(pack_bits(&[0], 0, BitOrder::Msb), Err(crate::Error::InvalidInput(_))));
        assert!(matches!(pack_bits(&[0], 33, BitOrder::Lsb), Err(crate::Error::InvalidInput(_))));
        assert!(matches!(unpack_bits(&[0, 0, 0], 3, 3, BitOrder::Msb), Err(crate::Error::CorruptStream(_))));
        assert!(matches!(unpack_bits(&[0], 3, 3, BitOrder::Lsb), Err(crate::Error::CorruptStream(_))));
    }

    /// The MSB layout against its definition, bit by bit (numpy.packbits, bitorder="big").
    fn reference_msb(values: &[u32], bits: u32) -> Vec<u8> {
        let mut stream = Vec::new();
        for &v in values {
            for j in (0..bits).rev() {
                stream.push((v >> j) & 1);
            }
        }
        stream.chunks(8).map(|c| c.iter().enumerate().fold(0u8, |b, (k, &x)| b | ((x as u8) << (7 - k)))).collect()
    }

    /// The LSB layout against its definition (numpy.packbits, bitorder="little").
    fn reference_lsb(values: &[u32], bits: u32) -> Vec<u8> {
        let mut stream = Vec::new();
        for &v in values {
            for j in 0..bits {
                stream.push((v >> j) & 1);
            }
        }
        stream.chunks(8).map(|c| c.iter().enumerate().fold(0u8, |b, (k, &x)| b | ((x as u8) << k))).collect()
    }

    proptest! {
        #[test]
        fn round_trip(bits in 1u32..=32, raw in proptest::collection::vec(any::<u32>(), 0..200)) {
            let values: Vec<u32> = raw.iter().map(|&v| if bits == 32 { v } else { v & ((1 << bits) - 1) }).collect();
            for order in [BitOrder::Msb, BitOrder::Lsb] {
                let packed = pack_bits(&values, bits, order).unwrap();
                prop_assert_eq!(packed.len(), packed_len(values.len(), bits));
                let want = match order {
                    BitOrder::Msb => reference_msb(&values, bits),
                    BitOrder::Lsb => reference_lsb(&values, bits),
                };
                prop_assert_eq!(&packed, &want);
                prop_assert_eq!(unpack_bits(&packed, values.len(), bits, order).unwrap(), values.clone());
            }
        }
    }
}
