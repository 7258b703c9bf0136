//! `seqkv_coder::container::unpack` on arbitrary bytes: never panics; whatever it accepts
//! packs back into a container that unpacks to the same value.
//! The check itself is `seqkv_fuzz::container` (src/lib.rs), also replayed by tests/replay.rs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| seqkv_fuzz::container(data));
