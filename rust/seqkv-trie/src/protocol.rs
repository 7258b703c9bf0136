//! The pin/evict protocol on one node's state word.
//!
//! A node's state is one `u64`: the low 63 bits count pins, the top bit says
//! the node is dead (evicted). Every transition is a single compare-and-swap
//! on that word, so exactly one of two racing operations wins:
//!
//! * `try_pin`: `alive, k pins -> alive, k+1 pins`; fails once the node is dead.
//! * `try_kill`: `alive, 0 pins -> dead`; fails while any pin is held.
//! * `unpin`: `alive, k pins -> alive, k-1 pins`; fails at 0 (double unpin).
//!
//! Dead is final. Because a pinner and an evictor race on the same word,
//! "evict a node while another thread pins it" cannot happen: either the pin
//! lands first (the kill CAS sees a non-zero count and fails) or the kill lands
//! first (the pin sees `DEAD` and fails, and the caller matches again).
//! Ancestors are protected structurally: only childless nodes are killed, and
//! a live node stays linked under its parent.
//!
//! The functions are generic over [`Word`] so that the loom model check
//! (`tests/loom_protocol.rs`) runs this very code on loom's atomics.

use std::sync::atomic::Ordering;

/// Top bit of the state word: the node has been evicted (final).
pub const DEAD: u64 = 1 << 63;
/// Mask of the pin count.
pub const COUNT: u64 = DEAD - 1;

/// The atomic word the protocol runs on (std's `AtomicU64`, or loom's in the model check).
pub trait Word {
    fn load_word(&self, order: Ordering) -> u64;
    fn cas_word(&self, current: u64, new: u64) -> Result<u64, u64>;
}

impl Word for std::sync::atomic::AtomicU64 {
    #[inline]
    fn load_word(&self, order: Ordering) -> u64 {
        self.load(order)
    }
    #[inline]
    fn cas_word(&self, current: u64, new: u64) -> Result<u64, u64> {
        self.compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire)
    }
}

/// Why a pin or unpin was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinError {
    /// The node was evicted; match again.
    Dead,
    /// `unpin` with no pin held.
    NotPinned,
    /// 2^63 - 1 pins: refused rather than wrapped.
    Overflow,
}

/// Adds one pin unless the node is dead.
#[inline]
pub fn try_pin<W: Word>(w: &W) -> Result<(), PinError> {
    let mut s = w.load_word(Ordering::Acquire);
    loop {
        if s & DEAD != 0 {
            return Err(PinError::Dead);
        }
        if s & COUNT == COUNT {
            return Err(PinError::Overflow);
        }
        match w.cas_word(s, s + 1) {
            Ok(_) => return Ok(()),
            Err(actual) => s = actual,
        }
    }
}

/// Removes one pin; refuses when none is held.
#[inline]
pub fn unpin<W: Word>(w: &W) -> Result<(), PinError> {
    let mut s = w.load_word(Ordering::Acquire);
    loop {
        if s & COUNT == 0 {
            return Err(PinError::NotPinned);
        }
        match w.cas_word(s, s - 1) {
            Ok(_) => return Ok(()),
            Err(actual) => s = actual,
        }
    }
}

/// Marks an unpinned live node dead. `true` iff this call killed it.
#[inline]
pub fn try_kill<W: Word>(w: &W) -> bool {
    let mut s = w.load_word(Ordering::Acquire);
    loop {
        if s != 0 {
            return false; // pinned or already dead
        }
        match w.cas_word(0, DEAD) {
            Ok(_) => return true,
            Err(actual) => s = actual,
        }
    }
}

#[inline]
pub fn is_dead<W: Word>(w: &W) -> bool {
    w.load_word(Ordering::Acquire) & DEAD != 0
}

#[inline]
pub fn pins<W: Word>(w: &W) -> u64 {
    w.load_word(Ordering::Acquire) & COUNT
}
