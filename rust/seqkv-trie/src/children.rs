//! Copy-on-write child tables.
//!
//! A node's children are an immutable table published through one atomic
//! pointer (`crossbeam_epoch::Atomic`). Readers load it under an epoch guard
//! and binary-search it without taking any lock. A writer (holding the node's
//! lock) builds a new table and swaps it in; the old table is retired to the
//! epoch collector and freed once no reader can still hold it.
//!
//! Up to [`SMALL_MAX`] children live in one sorted array. Past that the node
//! switches to [`BUCKETS`] independently published sorted buckets (hashed by
//! first token), so an insert under a node with tens of thousands of children
//! copies one bucket (~1/256 of them), not the whole table.
//!
//! Entries point at links (`L`, the trie's `Link`) by raw pointer. Tables never own links: a link is
//! owned by the live table that contains it, and whoever unlinks it (eviction,
//! split, log-prob upgrade) retires it to the collector.

use crossbeam_epoch::{Atomic, Guard, Owned, Shared};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

pub(crate) const SMALL_MAX: usize = 32;
pub(crate) const BUCKETS: usize = 256;

/// One child: the first token of its edge and a pointer to the edge (the trie's `Link`).
/// Generic over the pointee so that this module depends on nothing else in the crate.
pub(crate) struct Entry<L> {
    pub first: u32,
    pub link: *mut L,
}

impl<L> Clone for Entry<L> {
    #[inline]
    fn clone(&self) -> Self {
        *self
    }
}
impl<L> Copy for Entry<L> {}
// SAFETY: an entry is a plain pointer into the trie; all access to the
// pointee follows the epoch protocol described in `trie.rs`.
unsafe impl<L> Send for Entry<L> {}
// SAFETY: as for `Send`.
unsafe impl<L> Sync for Entry<L> {}

pub(crate) struct Bucket<L>(pub Box<[Entry<L>]>);

pub(crate) enum Children<L> {
    Small(Box<[Entry<L>]>),
    Big(Box<[Atomic<Bucket<L>>]>),
}

impl<L> Drop for Children<L> {
    fn drop(&mut self) {
        if let Children::Big(buckets) = self {
            for b in buckets.iter() {
                // SAFETY: the table is being destroyed, so nobody can reach its buckets.
                unsafe {
                    let g = crossbeam_epoch::unprotected();
                    let s = b.load(Relaxed, g);
                    if !s.is_null() {
                        drop(s.into_owned());
                    }
                }
            }
        }
    }
}

#[inline]
pub(crate) fn bucket_of(first: u32) -> usize {
    (first.wrapping_mul(0x9E37_79B1) >> 24) as usize
}

/// Entries that may start with `first` (all entries with that first token are in the returned slice).
#[inline]
pub(crate) fn candidates<'g, L>(slot: &Atomic<Children<L>>, first: u32, guard: &'g Guard) -> &'g [Entry<L>] {
    let c = slot.load(Acquire, guard);
    // SAFETY: loaded under `guard`; tables are retired through the collector.
    match unsafe { c.as_ref() } {
        None => &[],
        Some(Children::Small(e)) => e,
        Some(Children::Big(b)) => {
            let s = b[bucket_of(first)].load(Acquire, guard);
            // SAFETY: the table/bucket was loaded under `guard`; tables and buckets are retired only through the
            // collector (`defer_destroy`), so it outlives `guard`.
            match unsafe { s.as_ref() } {
                None => &[],
                Some(bucket) => &bucket.0,
            }
        }
    }
}

/// Index of the first entry with `e.first >= first`.
#[inline]
pub(crate) fn lower_bound<L>(entries: &[Entry<L>], first: u32) -> usize {
    if entries.len() <= 8 {
        entries.iter().position(|e| e.first >= first).unwrap_or(entries.len())
    } else {
        entries.partition_point(|e| e.first < first)
    }
}

/// Calls `f` for every entry of the table (in first-token order for small tables).
pub(crate) fn for_each<L>(slot: &Atomic<Children<L>>, guard: &Guard, mut f: impl FnMut(Entry<L>)) {
    let c = slot.load(Acquire, guard);
    // SAFETY: the table/bucket was loaded under `guard`; tables and buckets are retired only through the
    // collector (`defer_destroy`), so it outlives `guard`.
    match unsafe { c.as_ref() } {
        None => {}
        Some(Children::Small(e)) => e.iter().copied().for_each(&mut f),
        Some(Children::Big(b)) => {
            for bucket in b.iter() {
                let s = bucket.load(Acquire, guard);
                // SAFETY: the table/bucket was loaded under `guard`; tables and buckets are retired only through the
                // collector (`defer_destroy`), so it outlives `guard`.
                if let Some(bk) = unsafe { s.as_ref() } {
                    bk.0.iter().copied().for_each(&mut f);
                }
            }
        }
    }
}

/// Sorted copy of `entries` with `e` inserted after the entries of equal first token.
fn with_inserted<L>(entries: &[Entry<L>], e: Entry<L>) -> Box<[Entry<L>]> {
    let at = entries.partition_point(|x| x.first <= e.first);
    let mut v = Vec::with_capacity(entries.len() + 1);
    v.extend_from_slice(&entries[..at]);
    v.push(e);
    v.extend_from_slice(&entries[at..]);
    v.into_boxed_slice()
}

/// Adds an entry. Caller holds the owning node's lock.
///
/// # Safety
/// `guard` must be pinned; the caller must hold the node's writer lock.
pub(crate) unsafe fn insert<L>(slot: &Atomic<Children<L>>, e: Entry<L>, guard: &Guard) {
    // SAFETY: the caller holds the owning node's lock, so no other writer touches `slot`, and `guard` is
    // pinned: the loaded table is protected, and each replaced table or bucket is unlinked (its
    // slot stored over) before `defer_destroy` retires it, once.
    unsafe {
        let cur = slot.load(Acquire, guard);
        match cur.as_ref() {
            None => slot.store(Owned::new(Children::Small(vec![e].into_boxed_slice())), Release),
            Some(Children::Small(entries)) if entries.len() < SMALL_MAX => {
                slot.store(Owned::new(Children::Small(with_inserted(entries, e))), Release);
                guard.defer_destroy(cur);
            }
            Some(Children::Small(entries)) => {
                let mut per: Vec<Vec<Entry<L>>> = (0..BUCKETS).map(|_| Vec::new()).collect();
                for x in entries.iter().copied().chain(std::iter::once(e)) {
                    per[bucket_of(x.first)].push(x);
                }
                let table: Box<[Atomic<Bucket<L>>]> = per
                    .into_iter()
                    .map(|mut v| {
                        if v.is_empty() {
                            Atomic::null()
                        } else {
                            v.sort_by_key(|x| x.first); // stable: equal first tokens keep their order
                            Atomic::new(Bucket(v.into_boxed_slice()))
                        }
                    })
                    .collect();
                slot.store(Owned::new(Children::Big(table)), Release);
                guard.defer_destroy(cur);
            }
            Some(Children::Big(b)) => {
                let bs = &b[bucket_of(e.first)];
                let old = bs.load(Acquire, guard);
                let new = match old.as_ref() {
                    None => vec![e].into_boxed_slice(),
                    Some(bk) => with_inserted(&bk.0, e),
                };
                bs.store(Owned::new(Bucket(new)), Release);
                if !old.is_null() {
                    guard.defer_destroy(old);
                }
            }
        }
    }
}

fn rebuilt<L>(entries: &[Entry<L>], target: *mut L, replacement: Option<Entry<L>>) -> Option<Box<[Entry<L>]>> {
    let i = entries.iter().position(|x| x.link == target)?;
    let mut v: Vec<Entry<L>> = entries.to_vec();
    match replacement {
        Some(r) => {
            debug_assert_eq!(r.first, v[i].first);
            v[i] = r;
        }
        None => {
            v.remove(i);
        }
    }
    Some(v.into_boxed_slice())
}

/// Replaces (`Some`) or removes (`None`) the entry pointing at `target`, whose first token is
/// `first`. Returns false if no such entry exists. Caller holds the node's lock.
///
/// # Safety
/// As for [`insert`].
pub(crate) unsafe fn replace<L>(
    slot: &Atomic<Children<L>>,
    first: u32,
    target: *mut L,
    replacement: Option<Entry<L>>,
    guard: &Guard,
) -> bool {
    // SAFETY: the caller holds the owning node's lock, so no other writer touches `slot`, and `guard` is
    // pinned: the loaded table is protected, and each replaced table or bucket is unlinked (its
    // slot stored over) before `defer_destroy` retires it, once.
    unsafe {
        let cur = slot.load(Acquire, guard);
        match cur.as_ref() {
            None => false,
            Some(Children::Small(entries)) => match rebuilt(entries, target, replacement) {
                None => false,
                Some(v) => {
                    let next: Shared<'_, Children<L>> = if v.is_empty() {
                        Shared::null()
                    } else {
                        Owned::new(Children::Small(v)).into_shared(guard)
                    };
                    slot.store(next, Release);
                    guard.defer_destroy(cur);
                    true
                }
            },
            Some(Children::Big(b)) => {
                let bs = &b[bucket_of(first)];
                let old = bs.load(Acquire, guard);
                let Some(bk) = old.as_ref() else { return false };
                match rebuilt(&bk.0, target, replacement) {
                    None => false,
                    Some(v) => {
                        if v.is_empty() {
                            bs.store(Shared::null(), Release);
                        } else {
                            bs.store(Owned::new(Bucket(v)), Release);
                        }
                        guard.defer_destroy(old);
                        true
                    }
                }
            }
        }
    }
}

/// Bytes held by a table (for `stats()`): the table, its buckets and entry arrays.
pub(crate) fn heap_bytes<L>(slot: &Atomic<Children<L>>, guard: &Guard) -> usize {
    let c = slot.load(Acquire, guard);
    let e = std::mem::size_of::<Entry<L>>();
    // SAFETY: the table/bucket was loaded under `guard`; tables and buckets are retired only through the
    // collector (`defer_destroy`), so it outlives `guard`.
    match unsafe { c.as_ref() } {
        None => 0,
        Some(Children::Small(v)) => std::mem::size_of::<Children<L>>() + v.len() * e,
        Some(Children::Big(b)) => {
            let mut n = std::mem::size_of::<Children<L>>() + b.len() * std::mem::size_of::<Atomic<Bucket<L>>>();
            for bucket in b.iter() {
                let s = bucket.load(Acquire, guard);
                // SAFETY: the table/bucket was loaded under `guard`; tables and buckets are retired only through the
                // collector (`defer_destroy`), so it outlives `guard`.
                if let Some(bk) = unsafe { s.as_ref() } {
                    n += std::mem::size_of::<Bucket<L>>() + bk.0.len() * e;
                }
            }
            n
        }
    }
}
