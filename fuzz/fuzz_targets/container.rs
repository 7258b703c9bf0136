//! `seqkv_coder::container::unpack` on arbitrary bytes: never panics; whatever it accepts
//! packs back into a container that unpacks to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use seqkv_coder::container::{pack, unpack};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = unpack(data) {
        let again = pack(&c.header, &c.blocks).expect("an unpacked container must pack");
        let c2 = unpack(&again).expect("a packed container must unpack");
        assert_eq!(c, c2);
    }
});
