//! `seqkv_ppm::decode` on arbitrary payloads (small vocabularies, orders 0..=4, with and
//! without a primer): never panics or hangs; decoded tokens are in the vocabulary and
//! re-encode to a payload that decodes to the same tokens.
//! The check itself is `seqkv_fuzz::ppm_decode` (src/lib.rs), also replayed by tests/replay.rs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| seqkv_fuzz::ppm_decode(data));
