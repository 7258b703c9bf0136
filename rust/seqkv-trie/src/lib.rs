//! seqkv-trie (in progress)
