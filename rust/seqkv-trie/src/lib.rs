//! seqkv-trie: the concurrent probabilistic language trie.
//!
//! One radix trie over token ids (`u32`) shared by every session of a serving
//! process, so that a prefix many sessions share is stored once. Each stored
//! token carries a `u64` value (a KV slot or page id) and optionally the
//! model's log-probability of that token given its prefix, which gives
//! `d_T(a, b) = -log2 P_M(a ∧ b)`.
//!
//! * Reads (`match_prefix`, `next_counts`, `d_t`, `log_prob`) take no lock:
//!   child tables are copy-on-write and reclaimed by epochs
//!   (`crossbeam-epoch`).
//! * Writers lock one node (a parent, then possibly one child), never the
//!   whole trie.
//! * Pins are atomic refcounts in the same word as a `DEAD` bit; eviction
//!   marks a node dead only from "0 pins, alive" by compare-and-swap
//!   (see [`protocol`]), so a pinned node cannot be evicted.
//! * `max_tokens` bounds the stored tokens; inserts evict unpinned leaves
//!   (LRU or PLT policy) or fail with [`TrieError::Capacity`] storing nothing.
//! * Namespaces (tenant salts) have separate roots.
//!
//! `docs/trie.md` describes the design.

mod children;
pub mod protocol;
mod snapshot;
mod tokens;
mod trie;
mod values;

pub use trie::{DumpEntry, Match, NodeRef, Stats, Trie, TrieConfig, DEFAULT_EVICTED_QUEUE_LIMIT};

/// Pins the epoch for the caller's thread until the returned guard is dropped; trie reads
/// made meanwhile skip their own (nested pins are nearly free). For benchmarks that
/// separate the cost of epoch pinning from the rest of a read. Holding it blocks memory
/// reclamation, so never keep it for long.
#[doc(hidden)]
pub fn hold_epoch() -> impl Drop {
    crossbeam_epoch::pin()
}

/// Errors of the trie. The Python binding maps them onto `seqkv.errors`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrieError {
    /// Bad argument (lengths, values, unknown or foreign node, double unpin, missing log-probs).
    #[error("{0}")]
    InvalidInput(String),
    /// `max_tokens` reached and not enough unpinned tokens to evict.
    #[error("{0}")]
    Capacity(String),
    /// A snapshot failed validation.
    #[error("{0}")]
    Corrupt(String),
    /// A snapshot was written by a format version this build cannot read.
    #[error("{0}")]
    FormatVersion(String),
}

/// Which unpinned leaves go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictPolicy {
    /// Least recently matched or inserted first.
    Lru,
    /// Lowest expected reuse first: `visits + hits + 2^(-d_T(path)/|path|)` (the last term
    /// is the model's per-token geometric-mean probability of the path, 0 without
    /// log-probs), ties broken by LRU.
    Plt,
}

impl std::str::FromStr for EvictPolicy {
    type Err = TrieError;
    fn from_str(s: &str) -> Result<Self, TrieError> {
        match s {
            "lru" => Ok(EvictPolicy::Lru),
            "plt" => Ok(EvictPolicy::Plt),
            _ => Err(TrieError::InvalidInput(format!("unknown eviction policy {s:?} (expected \"lru\" or \"plt\")"))),
        }
    }
}

impl EvictPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            EvictPolicy::Lru => "lru",
            EvictPolicy::Plt => "plt",
        }
    }
}
