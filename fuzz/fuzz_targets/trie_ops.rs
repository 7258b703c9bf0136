//! A sequence of insert / match / match_and_pin / unpin / evict / next_counts operations on
//! one `seqkv_trie::Trie`, decoded from the input, checked after every step against a
//! reference model: per namespace, a prefix-closed map from stored token path to its value.
//!
//! Checked: matches return the longest stored page-aligned prefix and its values; insert
//! returns the number of new tokens; `len()` equals the model's size and never exceeds
//! `max_tokens`; pinned paths survive every eviction; unpinning an unpinned node fails;
//! `next_counts` lists exactly the stored continuations.
//! The check itself is `seqkv_fuzz::trie_ops` (src/lib.rs), also replayed by tests/replay.rs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| seqkv_fuzz::trie_ops(data));
