//! The trie itself: nodes, links, lock-free reads, per-node writer locks.
//!
//! # Layout
//! A node's *incoming edge* (token run, one value per token, optional
//! per-token log-probs) lives in an immutable [`Link`] owned by the parent's
//! child table, not in the node. Splitting an edge therefore changes one
//! table: the parent's entry `abcdef -> N` becomes `abc -> P` where the new
//! node `P` has the single child `def -> N`. Readers see the old table or the
//! new one, both consistent, and `N` keeps its identity (its pins, its
//! children, every `Match` that refers to it).
//!
//! # Memory reclamation
//! Tables and links are retired to `crossbeam_epoch`; a reader pins the epoch
//! for the duration of one call. Nodes are reference-counted ([`NodeArc`]) so
//! that a `Match` can refer to one after the call returns; a raw parent pointer is only
//! followed under an epoch guard for a node reached under that same guard.
//!
//! # Locks
//! Each node has a mutex guarding its child table (and counting children).
//! Writers lock at most a parent and then one of its children, always in
//! that order. Readers never lock.
//!
//! # Modules
//! * [`node`]: [`Link`], [`Node`], [`NodeArc`], [`NodeRef`] (layout and ownership).
//! * `lookup`: the lock-free walk (matching edges).
//! * `insert`: inserts, edge splits, log-prob upgrades.
//! * `evict`: eviction scans and leaf removal.
//! * `query`: `log_prob`, `d_t`, `next_counts`.
//! * `stats`: `stats`, `dump`.
//! * `restore`: the helpers `snapshot.rs` uses.
//!
//! This file is the facade: the [`Trie`] type, its construction, namespaces and pins.

mod evict;
mod insert;
mod lookup;
pub(crate) mod node;
mod query;
mod restore;
mod stats;

pub(crate) use node::{Link, Node, NodeArc};
use node::Children;
pub use node::NodeRef;

use crate::protocol::{self, PinError};
use crate::{EvictPolicy, TrieError};
use crossbeam_epoch::{self as epoch, Atomic, Guard, Owned};
use std::collections::HashMap;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

/// Result of [`Trie::match_prefix`] (the values go to the caller's buffer).
#[derive(Clone, Debug)]
pub struct Match {
    /// Number of leading tokens of the key found in the trie (a multiple of the page size).
    pub length: usize,
    /// Node whose incoming edge holds the last matched token (the namespace root when
    /// `length == 0`). Pinning it protects every matched value.
    pub node: NodeRef,
}

/// Counters and sizes, as reported by [`Trie::stats`].
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub tokens: u64,
    pub nodes: u64,
    pub leaves: u64,
    pub namespaces: u64,
    pub pinned_nodes: u64,
    pub pins: u64,
    pub tokens_with_logprobs: u64,
    /// Structural bytes: node, link, token/value/log-prob arrays and child tables (allocator overhead excluded).
    pub bytes: u64,
    pub page_size: u64,
    pub max_tokens: Option<u64>,
    pub inserts: u64,
    pub evictions: u64,
    pub evicted_tokens: u64,
    pub capacity_errors: u64,
    pub pending_evicted: u64,
}

/// A stored sequence, as listed by [`Trie::dump`]: the full path from the namespace root
/// to one leaf.
#[derive(Clone, Debug, PartialEq)]
pub struct DumpEntry {
    pub namespace: Option<Vec<u8>>,
    pub tokens: Vec<u32>,
    pub values: Vec<u64>,
}

pub(crate) struct NsTable {
    pub map: HashMap<Box<[u8]>, NodeArc>,
}

/// Construction parameters.
#[derive(Clone, Debug)]
pub struct TrieConfig {
    /// Matches and inserts are cut to whole pages of this many tokens (>= 1).
    pub page_size: usize,
    /// Bound on stored tokens; inserting past it evicts unpinned leaves.
    pub max_tokens: Option<u64>,
    /// Policy used by inserts that must evict.
    pub policy: EvictPolicy,
    /// Most values of insert-triggered evictions kept for [`Trie::take_evicted`]: once that
    /// many wait undrained, an insert that must evict fails with `Capacity` (nothing evicted,
    /// nothing lost) until the caller drains them. 0: evicted values are not kept at all.
    pub evicted_queue_limit: usize,
}

/// Default [`TrieConfig::evicted_queue_limit`]: 2^20 values (8 MiB).
pub const DEFAULT_EVICTED_QUEUE_LIMIT: usize = 1 << 20;

impl Default for TrieConfig {
    fn default() -> Self {
        TrieConfig { page_size: 1, max_tokens: None, policy: EvictPolicy::Lru, evicted_queue_limit: DEFAULT_EVICTED_QUEUE_LIMIT }
    }
}

/// The concurrent radix trie. All methods take `&self`; share it with `Arc`.
pub struct Trie {
    pub(crate) id: u64,
    pub(crate) page_size: usize,
    pub(crate) max_tokens: Option<u64>,
    pub(crate) policy: EvictPolicy,
    pub(crate) default_root: NodeArc,
    /// Root-like node handed out by matches in namespaces that do not exist.
    orphan: NodeArc,
    pub(crate) namespaces: Atomic<NsTable>,
    ns_lock: Mutex<()>,
    pub(crate) stored: AtomicU64,
    /// Stored tokens plus outstanding capacity reservations.
    used: AtomicU64,
    pub(crate) next_value: AtomicU64,
    pub(crate) next_node_id: AtomicU64,
    evicted_queue: Mutex<Vec<u64>>,
    pub(crate) evicted_queue_limit: usize,
    inserts: AtomicU64,
    evictions: AtomicU64,
    evicted_tokens: AtomicU64,
    capacity_errors: AtomicU64,
}

static NEXT_TRIE_ID: AtomicU64 = AtomicU64::new(1);

struct Restart;

fn capacity_err(msg: impl Into<String>) -> TrieError {
    TrieError::Capacity(msg.into())
}

impl Trie {
    /// Creates an empty trie.
    pub fn new(config: TrieConfig) -> Result<Trie, TrieError> {
        if config.page_size == 0 || config.page_size > (1 << 20) {
            return Err(TrieError::InvalidInput(format!("page_size must be in 1..=2^20, got {}", config.page_size)));
        }
        let id = NEXT_TRIE_ID.fetch_add(1, Relaxed);
        let root = NodeArc::new(Node::bare(0, id));
        let orphan = NodeArc::new(Node::bare(u64::MAX, id));
        Ok(Trie {
            id,
            page_size: config.page_size,
            max_tokens: config.max_tokens,
            policy: config.policy,
            default_root: root,
            orphan,
            namespaces: Atomic::new(NsTable { map: HashMap::new() }),
            ns_lock: Mutex::new(()),
            stored: AtomicU64::new(0),
            used: AtomicU64::new(0),
            next_value: AtomicU64::new(0),
            next_node_id: AtomicU64::new(1),
            evicted_queue: Mutex::new(Vec::new()),
            evicted_queue_limit: config.evicted_queue_limit,
            inserts: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            evicted_tokens: AtomicU64::new(0),
            capacity_errors: AtomicU64::new(0),
        })
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }
    pub fn max_tokens(&self) -> Option<u64> {
        self.max_tokens
    }
    pub fn policy(&self) -> EvictPolicy {
        self.policy
    }
    /// Unique id of this trie (nodes carry it; `pin` refuses nodes of other tries).
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Number of stored tokens.
    pub fn len(&self) -> u64 {
        self.stored.load(Acquire)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn aligned(&self, n: usize) -> usize {
        if self.page_size == 1 {
            n
        } else {
            n / self.page_size * self.page_size
        }
    }


    // ----- namespaces -------------------------------------------------------------------

    #[inline]
    fn root_for<'g>(&'g self, ns: Option<&[u8]>, guard: &'g Guard) -> Option<&'g Node> {
        match ns {
            None => Some(&self.default_root),
            Some(key) => {
                let t = self.namespaces.load(Acquire, guard);
                // SAFETY: tables are retired through the collector.
                unsafe { t.deref() }.map.get(key).map(|a| &**a)
            }
        }
    }

    fn root_or_create<'g>(&'g self, ns: Option<&[u8]>, guard: &'g Guard) -> &'g Node {
        if let Some(r) = self.root_for(ns, guard) {
            return r;
        }
        let key = ns.expect("default root always exists");
        let _l = self.ns_lock.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.namespaces.load(Acquire, guard);
        // SAFETY: `ns_lock` is held, so `cur` is the current table: never null, and `guard` pins the epoch.
        let table = unsafe { cur.deref() };
        if let Some(r) = table.map.get(key) {
            return r;
        }
        let mut map = table.map.clone();
        let root = NodeArc::new(Node::new(self, std::ptr::null(), 0, 0, 0, 0, 0));
        map.insert(key.into(), root);
        let new = Owned::new(NsTable { map }).into_shared(guard);
        self.namespaces.store(new, Release);
        // SAFETY: `cur` was replaced just above under `ns_lock`, so no new reader can reach it; readers that
        // loaded it hold guards that keep it alive.
        unsafe { guard.defer_destroy(cur) };
        // SAFETY: `new` was published just above and `guard` pins the epoch.
        unsafe { new.deref() }.map.get(key).map(|a| &**a).unwrap()
    }

    fn all_roots<'g>(&'g self, guard: &'g Guard) -> Vec<(Option<&'g [u8]>, &'g Node)> {
        let mut v: Vec<(Option<&[u8]>, &Node)> = vec![(None, &*self.default_root)];
        // SAFETY: the namespace table is never null while the trie lives and is retired only through the
        // collector; `guard` pins the epoch.
        let t = unsafe { self.namespaces.load(Acquire, guard).deref() };
        let mut named: Vec<_> = t.map.iter().map(|(k, n)| (Some(&**k), &**n)).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        v.extend(named);
        v
    }

    // ----- pins -------------------------------------------------------------------------

    fn check_owner(&self, node: &NodeRef) -> Result<(), TrieError> {
        if node.0.trie_id != self.id {
            return Err(TrieError::InvalidInput("node belongs to another trie".into()));
        }
        Ok(())
    }

    /// Pins `node`: while pinned, neither it nor any ancestor is evicted. Fails if the
    /// node was evicted after the match (match again, or use [`Trie::match_and_pin`]).
    pub fn pin(&self, node: &NodeRef) -> Result<(), TrieError> {
        self.check_owner(node)?;
        protocol::try_pin(&node.0.state).map_err(|e| match e {
            PinError::Dead => TrieError::InvalidInput("node was evicted; match again".into()),
            _ => TrieError::InvalidInput("too many pins".into()),
        })
    }

    /// Releases one pin; `InvalidInput` if the node holds none (double unpin).
    pub fn unpin(&self, node: &NodeRef) -> Result<(), TrieError> {
        self.check_owner(node)?;
        protocol::unpin(&node.0.state).map_err(|_| TrieError::InvalidInput("node is not pinned (double unpin?)".into()))
    }
}

/// Blocks until a node seen dead is unlinked. A node is killed and unlinked from its
/// parent's table under its own lock, so once that lock is free again no table holds
/// it: a retrying match then takes another path instead of spinning on the dead node
/// while its evictor waits to be scheduled.
fn wait_unlinked(n: &Node) {
    if n.is_dead() {
        drop(n.lock());
    }
}

/// Retires an unlinked link: freed once no reader can still see it.
unsafe fn retire_link(lp: *mut Link, guard: &Guard) {
    // SAFETY: `lp` came from `Box::into_raw` (every link does) and the caller has unlinked it, so
    // once every guard pinned now is dropped no reader can hold it; the deferred closure frees it once.
    unsafe {
        let addr = lp as usize;
        guard.defer_unchecked(move || drop(Box::from_raw(addr as *mut Link)));
    }
}

impl Drop for Trie {
    fn drop(&mut self) {
        // No other thread can use the trie: free every live link (and so every node
        // that nothing else refers to) without recursion.
        // SAFETY: `&mut self`: no other thread can use the trie, so `unprotected` is sound. Every table and
        // bucket came from `Owned::new` and every link from `Box::into_raw`; a link is owned by the one
        // live table that holds it, so each is freed exactly once here.
        unsafe {
            let g = epoch::unprotected();
            let mut stack: Vec<NodeArc> = vec![self.default_root.clone(), self.orphan.clone()];
            let t = self.namespaces.swap(epoch::Shared::null(), Relaxed, g);
            if !t.is_null() {
                let t = t.into_owned();
                stack.extend(t.map.values().cloned());
            }
            while let Some(node) = stack.pop() {
                let c = node.children.swap(epoch::Shared::null(), Relaxed, g);
                if c.is_null() {
                    continue;
                }
                let owned = c.into_owned();
                let mut links = Vec::new();
                match &*owned {
                    Children::Small(e) => links.extend(e.iter().map(|e| e.link)),
                    Children::Big(b) => {
                        for bucket in b.iter() {
                            if let Some(bk) = bucket.load(Relaxed, g).as_ref() {
                                links.extend(bk.0.iter().map(|e| e.link));
                            }
                        }
                    }
                }
                drop(owned);
                for l in links {
                    let link = Box::from_raw(l);
                    stack.push(link.node.clone());
                    drop(link);
                }
            }
        }
    }
}
