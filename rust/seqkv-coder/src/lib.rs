//! seqkv-coder (in progress)
