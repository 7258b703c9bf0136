//! `seqkv_ppm::decode` on arbitrary payloads (small vocabularies, orders 0..=4, with and
//! without a primer): never panics or hangs; decoded tokens are in the vocabulary and
//! re-encode to a payload that decodes to the same tokens.
#![no_main]
use libfuzzer_sys::fuzz_target;
use seqkv_ppm::{decode, encode, Model, Params};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let vocab = [2u32, 17, 300, 50_000][(data[0] % 4) as usize];
    let order = data[1] % 5;
    let n = (u16::from_le_bytes([data[2], data[3]]) % 2048) as usize;
    let payload = &data[4..];
    let mut model = Model::with_params(&Params::new(vocab, order).unwrap()).unwrap();
    if data[0] & 0x80 != 0 {
        model.prime(&[1 % vocab, 0, 1 % vocab, 0, 1 % vocab]).unwrap();
    }
    if let Ok(tokens) = decode(&model, &[(payload, n)]) {
        assert_eq!(tokens.len(), n);
        assert!(tokens.iter().all(|&t| t < vocab));
        let enc = encode(&model, &tokens, n.max(1)).unwrap();
        let blocks: Vec<(&[u8], usize)> = enc.iter().map(|p| (p.as_slice(), n)).collect();
        assert_eq!(decode(&model, &blocks).unwrap(), tokens);
    }
});
