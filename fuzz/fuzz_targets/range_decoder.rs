//! The range decoder on arbitrary bytes under a few tables (static, per-row, adaptive):
//! never panics or hangs; whatever decodes re-encodes and decodes to the same symbols.
//! The check itself is `seqkv_fuzz::range_decoder` (src/lib.rs), also replayed by tests/replay.rs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| seqkv_fuzz::range_decoder(data));
