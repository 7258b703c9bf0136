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

use crate::children::{self, Children, Entry};
use crate::protocol::{self, PinError};
use crate::tokens::{lcp_widened, EdgeTokens};
use crate::values::EdgeValues;
use crate::{EvictPolicy, TrieError};
use crossbeam_epoch::{self as epoch, Atomic, Guard, Owned};
use std::cell::Cell;
use std::collections::{BinaryHeap, HashMap};
use std::cmp::Reverse;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

/// An immutable edge: the tokens leading into `node`, one value per token,
/// optionally one natural-log model probability per token.
pub(crate) struct Link {
    pub tokens: EdgeTokens,
    pub values: EdgeValues,
    pub logprobs: Option<Box<[f32]>>,
    pub node: NodeArc,
}

/// A trie node (internal). See [`NodeRef`] for the public handle.
///
/// Layout: the fields that reads write (access stamp, hit count and handle count of the
/// node a match ends on) and the pin word sit in their own cache line; the fields that
/// reads only read (child table, parent, ...) start on the next one. Node is 64-byte
/// aligned, so no other allocation shares its cache lines: a match writes exactly one
/// line, and threads matching different sessions never invalidate the lines other
/// threads traverse.
#[repr(C, align(64))]
pub struct Node {
    /// Last access (monotonic ns), for LRU.
    pub(crate) stamp: AtomicU64,
    /// Number of matches that ended on this node's edge.
    pub(crate) hits: AtomicU64,
    /// Pin count and DEAD bit (see `protocol`).
    pub(crate) state: AtomicU64,
    /// Number of [`NodeArc`]s (see there).
    refs: AtomicUsize,
    _hot_pad: [u64; 4],
    pub(crate) children: Atomic<Children>,
    /// Parent node; null for roots. Changed only by a split of the incoming
    /// edge, under the (old) parent's lock.
    pub(crate) parent: AtomicPtr<Node>,
    /// First token of the incoming edge (changes with the parent pointer).
    pub(crate) first: AtomicU32,
    /// Number of inserts whose key ran through this node's edge.
    pub(crate) visits: AtomicU64,
    /// Writer lock; guards the child table and holds the number of children.
    pub(crate) lock: Mutex<usize>,
    pub(crate) id: u64,
    pub(crate) trie_id: u64,
}

// The written fields fill the first cache line; the read-mostly ones start on the next.
const _: () = assert!(std::mem::offset_of!(Node, children) == 64);
const _: () = assert!(std::mem::align_of::<Node>() == 64);

impl Node {
    fn new(trie: &Trie, parent: *const Node, first: u32, stamp: u64, visits: u64, hits: u64, n_children: usize) -> Node {
        Node {
            state: AtomicU64::new(0),
            refs: AtomicUsize::new(1),
            _hot_pad: [0; 4],
            children: Atomic::null(),
            parent: AtomicPtr::new(parent as *mut Node),
            first: AtomicU32::new(first),
            stamp: AtomicU64::new(stamp),
            visits: AtomicU64::new(visits),
            hits: AtomicU64::new(hits),
            lock: Mutex::new(n_children),
            id: trie.next_node_id.fetch_add(1, Relaxed),
            trie_id: trie.id,
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, usize> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[inline]
    fn is_dead(&self) -> bool {
        protocol::is_dead(&self.state)
    }

    #[inline]
    fn touch(&self, t: u64) {
        if self.stamp.load(Relaxed) < t {
            self.stamp.store(t, Relaxed);
        }
    }

    /// A match ended on this node's edge: its LRU stamp and hit count.
    #[inline]
    fn record_hit(&self) {
        self.touch(now());
        self.hits.fetch_add(1, Relaxed);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Frees the table itself; links are owned elsewhere (see children.rs).
        // SAFETY: the node is being dropped, so no thread can reach it or its table (`unprotected` is sound);
        // the table came from `Owned::new` and no other owner frees it.
        unsafe {
            let g = epoch::unprotected();
            let c = self.children.swap(epoch::Shared::null(), Relaxed, g);
            if !c.is_null() {
                drop(c.into_owned());
            }
        }
    }
}

/// Owning, counted pointer to a heap [`Node`]: `Arc<Node>` with the count kept inside the
/// node's written cache line. `Arc`'s counts sit in a line of their own ahead of a
/// 64-byte-aligned node, so a match that hands out a handle would write two lines the
/// next matching thread must fetch back; here it writes one (stamp, hit count and count
/// together).
pub(crate) struct NodeArc(NonNull<Node>);

// SAFETY: a `NodeArc` only gives `&Node`, and `Node` is `Send + Sync`; the count is atomic.
unsafe impl Send for NodeArc {}
// SAFETY: as for `Send`: shared `NodeArc`s only read the `Node` (which is `Sync`) and update its
// atomic count.
unsafe impl Sync for NodeArc {}

impl NodeArc {
    /// Moves `node` (count 1, as built by its constructors) to the heap.
    pub(crate) fn new(node: Node) -> NodeArc {
        debug_assert_eq!(node.refs.load(Relaxed), 1);
        NodeArc(NonNull::from(Box::leak(Box::new(node))))
    }

    pub(crate) fn as_ptr(this: &NodeArc) -> *const Node {
        this.0.as_ptr()
    }

    pub(crate) fn ptr_eq(a: &NodeArc, b: &NodeArc) -> bool {
        a.0 == b.0
    }
}

impl std::ops::Deref for NodeArc {
    type Target = Node;
    #[inline]
    fn deref(&self) -> &Node {
        // SAFETY: the node lives while any `NodeArc` to it does, and this is one.
        unsafe { self.0.as_ref() }
    }
}

impl Clone for NodeArc {
    #[inline]
    fn clone(&self) -> NodeArc {
        // Relaxed as in `Arc::clone`: a new handle is made from an existing one, which
        // already keeps the node alive. The bound guards against a count overflow.
        if self.refs.fetch_add(1, Relaxed) > isize::MAX as usize {
            std::process::abort();
        }
        NodeArc(self.0)
    }
}

impl Drop for NodeArc {
    #[inline]
    fn drop(&mut self) {
        if self.refs.fetch_sub(1, Release) != 1 {
            return;
        }
        // Every other handle's last use happens before the free (as in `Arc::drop`).
        std::sync::atomic::fence(Acquire);
        // SAFETY: this was the last handle; the node came from `Box` in `NodeArc::new`.
        unsafe { drop(Box::from_raw(self.0.as_ptr())) };
    }
}

/// A handle on a trie node, as returned in [`Match::node`]: what `pin` and
/// `unpin` take. Cheap to clone; keeps the node's memory (not its contents)
/// alive.
#[derive(Clone)]
pub struct NodeRef(pub(crate) NodeArc);

impl NodeRef {
    /// Whether the node has been evicted.
    pub fn is_dead(&self) -> bool {
        self.0.is_dead()
    }
    /// Current number of pins.
    pub fn pins(&self) -> u64 {
        protocol::pins(&self.0.state)
    }
    /// Identifier, unique within its trie.
    pub fn id(&self) -> u64 {
        self.0.id
    }
    /// Whether this is the root of a namespace.
    pub fn is_root(&self) -> bool {
        self.0.parent.load(Acquire).is_null()
    }
    /// Identifier of the trie the node belongs to.
    pub fn trie_id(&self) -> u64 {
        self.0.trie_id
    }
}

impl PartialEq for NodeRef {
    fn eq(&self, other: &Self) -> bool {
        NodeArc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for NodeRef {}
impl std::hash::Hash for NodeRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (NodeArc::as_ptr(&self.0) as usize).hash(state)
    }
}
impl std::fmt::Debug for NodeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeRef(id={}, pins={}, dead={})", self.0.id, self.pins(), self.is_dead())
    }
}

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
}

impl Default for TrieConfig {
    fn default() -> Self {
        TrieConfig { page_size: 1, max_tokens: None, policy: EvictPolicy::Lru }
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
    inserts: AtomicU64,
    evictions: AtomicU64,
    evicted_tokens: AtomicU64,
    capacity_errors: AtomicU64,
}

static NEXT_TRIE_ID: AtomicU64 = AtomicU64::new(1);

/// Strictly increasing per thread, monotonic nanoseconds.
#[inline]
pub(crate) fn now() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    thread_local! { static LAST: Cell<u64> = const { Cell::new(0) }; }
    let t = BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1;
    LAST.with(|l| {
        let v = t.max(l.get() + 1);
        l.set(v);
        v
    })
}

/// Asks for `p`'s cache line in a writable state ahead of a write, so that taking it
/// over from the core that wrote it last overlaps the work before the write. A hint: it
/// never faults. (`_mm_prefetch` with `_MM_HINT_ET0` compiles to a read prefetch unless
/// the build enables `prfchw`.)
#[inline(always)]
fn prefetch_for_write<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHW changes no architectural state and does not fault on any address.
    unsafe {
        std::arch::asm!("prefetchw [{0}]", in(reg) p, options(nostack, preserves_flags, readonly))
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

struct Restart;

fn capacity_err(msg: impl Into<String>) -> TrieError {
    TrieError::Capacity(msg.into())
}

/// One node seen by an eviction scan.
struct Scanned<'g> {
    node: &'g Node,
    parent: usize,
    len: usize,
    children_left: usize,
    protected: bool,
    lp_sum: f64,
    depth: usize,
    lp_ok: bool,
}

const NO_PARENT: usize = usize::MAX;

/// Eviction order: (policy score bits, stamp, node id), smallest first.
type EvictKey = (u64, u64, u64);

impl Trie {
    /// Creates an empty trie.
    pub fn new(config: TrieConfig) -> Result<Trie, TrieError> {
        if config.page_size == 0 || config.page_size > (1 << 20) {
            return Err(TrieError::InvalidInput(format!("page_size must be in 1..=2^20, got {}", config.page_size)));
        }
        let id = NEXT_TRIE_ID.fetch_add(1, Relaxed);
        let bare = |node_id: u64| {
            NodeArc::new(Node {
                state: AtomicU64::new(0),
                refs: AtomicUsize::new(1),
                _hot_pad: [0; 4],
                children: Atomic::null(),
                parent: AtomicPtr::new(std::ptr::null_mut()),
                first: AtomicU32::new(0),
                stamp: AtomicU64::new(0),
                visits: AtomicU64::new(0),
                hits: AtomicU64::new(0),
                lock: Mutex::new(0),
                id: node_id,
                trie_id: id,
            })
        };
        let root = bare(0);
        let orphan = bare(u64::MAX);
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

    // ----- lookup -----------------------------------------------------------------------

    /// The child link of `node` whose edge starts the remaining key `rest`
    /// (`rest.len() >= page_size`, a multiple of it).
    #[inline]
    fn find_child(&self, node: &Node, rest: &[u32], guard: &Guard) -> Option<*mut Link> {
        let first = rest[0];
        let entries = children::candidates(&node.children, first, guard);
        let mut i = children::lower_bound(entries, first);
        while i < entries.len() && entries[i].first == first {
            let link = entries[i].link;
            if self.page_size == 1 {
                return Some(link);
            }
            let ps = self.page_size;
            // SAFETY: reached under `guard`.
            if unsafe { (*link).tokens.starts_with(&rest[..ps]) } {
                return Some(link);
            }
            i += 1;
        }
        None
    }

    /// Longest stored prefix of `tokens` (cut to whole pages) in namespace `ns`; its
    /// values are appended to `values`. Takes no lock.
    pub fn match_prefix(&self, tokens: &[u32], ns: Option<&[u8]>, values: &mut Vec<u64>) -> Match {
        let guard = epoch::pin();
        let (length, node) = self.match_in(tokens, ns, values, &guard, true);
        Match { length, node: NodeRef(node) }
    }

    /// [`Trie::match_prefix`] and a pin on the returned node, atomically: if the node is
    /// evicted between the two, the match is repeated. The caller must `unpin` it.
    pub fn match_and_pin(&self, tokens: &[u32], ns: Option<&[u8]>, values: &mut Vec<u64>) -> Match {
        let start = values.len();
        loop {
            let m = self.match_prefix(tokens, ns, values);
            match protocol::try_pin(&m.node.0.state) {
                Ok(()) => return m,
                Err(_) => {
                    values.truncate(start);
                    wait_unlinked(&m.node.0);
                }
            }
        }
    }

    fn match_in(
        &self,
        tokens: &[u32],
        ns: Option<&[u8]>,
        values: &mut Vec<u64>,
        guard: &Guard,
        touch: bool,
    ) -> (usize, NodeArc) {
        let Some(root) = self.root_for(ns, guard) else {
            // Unknown namespace: hand back a detached, never-linked root (pinning it is
            // harmless and touches no tenant's data).
            return (0, self.orphan.clone());
        };
        let tokens = &tokens[..self.aligned(tokens.len())];
        let (pos, end) = self.walk(root, tokens, values, guard);
        match end {
            None => (0, self.root_arc(ns, guard)),
            Some(e) => {
                if touch {
                    e.record_hit();
                }
                (pos, e.clone())
            }
        }
    }

    /// Benchmark probe (the controls of `seqkv.Trie._read_bench`): the walk of
    /// [`match_prefix`](Self::match_prefix) in the default namespace alone, with the end
    /// node's LRU stamp and hit count updated (`touch`) or not, and no handle cloned.
    #[doc(hidden)]
    pub fn walk_probe(&self, tokens: &[u32], values: &mut Vec<u64>, touch: bool) -> usize {
        let guard = epoch::pin();
        let Some(root) = self.root_for(None, &guard) else { return 0 };
        let (pos, end) = self.walk(root, &tokens[..self.aligned(tokens.len())], values, &guard);
        if let (true, Some(e)) = (touch, end) {
            e.record_hit();
        }
        pos
    }

    fn root_arc(&self, ns: Option<&[u8]>, guard: &Guard) -> NodeArc {
        match ns {
            None => self.default_root.clone(),
            Some(k) => {
                // SAFETY: the namespace table is never null while the trie lives and is retired only through the
                // collector; `guard` pins the epoch.
                let t = unsafe { self.namespaces.load(Acquire, guard).deref() };
                t.map.get(k).cloned().unwrap_or_else(|| self.orphan.clone())
            }
        }
    }

    // ----- insert -----------------------------------------------------------------------

    /// Stores `tokens` (cut to whole pages) with one value per token (fresh unique values
    /// when `values` is `None`) and optional natural-log probabilities. Returns the number
    /// of tokens newly stored: they are the last ones of the key, so `values[..len - n]`
    /// were duplicates the caller may free. Fails with `Capacity` (storing nothing) when
    /// `max_tokens` would be exceeded and not enough unpinned tokens can be evicted.
    pub fn insert(
        &self,
        tokens: &[u32],
        values: Option<&[u64]>,
        logprobs: Option<&[f32]>,
        ns: Option<&[u8]>,
    ) -> Result<usize, TrieError> {
        if let Some(v) = values {
            if v.len() != tokens.len() {
                return Err(TrieError::InvalidInput(format!(
                    "values has {} entries for {} tokens",
                    v.len(),
                    tokens.len()
                )));
            }
        }
        if let Some(lp) = logprobs {
            if lp.len() != tokens.len() {
                return Err(TrieError::InvalidInput(format!(
                    "logprobs has {} entries for {} tokens",
                    lp.len(),
                    tokens.len()
                )));
            }
            if let Some(i) = lp.iter().position(|x| x.is_nan() || *x > 0.0) {
                return Err(TrieError::InvalidInput(format!(
                    "logprobs[{i}] = {} is not a log-probability (must be <= 0, not NaN)",
                    lp[i]
                )));
            }
        }
        let n = self.aligned(tokens.len());
        let tokens = &tokens[..n];
        let values = values.map(|v| &v[..n]);
        let logprobs = logprobs.map(|v| &v[..n]);
        if n == 0 {
            return Ok(0);
        }
        let guard = epoch::pin();
        let root = self.root_or_create(ns, &guard);
        self.inserts.fetch_add(1, Relaxed);
        let Some(max) = self.max_tokens else {
            loop {
                if let Ok(k) = self.insert_walk(root, tokens, values, logprobs, false, &guard) {
                    return Ok(k);
                }
            }
        };
        loop {
            // Dry walk: how much is already there, and which node ends it.
            let mut scratch = Vec::new();
            let (m, deepest) = self.match_from(root, tokens, &mut scratch, &guard);
            let need = (n - m) as u64;
            if need > max {
                self.capacity_errors.fetch_add(1, Relaxed);
                return Err(capacity_err(format!(
                    "{need} new tokens can never fit in max_tokens={max}"
                )));
            }
            // Pin the matched path so that eviction cannot take it from under us.
            if protocol::try_pin(&deepest.state).is_err() {
                wait_unlinked(deepest);
                continue;
            }
            let reserved = match self.reserve(need, max, &guard) {
                Ok(()) => need,
                Err(e) => {
                    let _ = protocol::unpin(&deepest.state);
                    self.capacity_errors.fetch_add(1, Relaxed);
                    return Err(e);
                }
            };
            let r = self.insert_walk(root, tokens, values, logprobs, true, &guard);
            let _ = protocol::unpin(&deepest.state);
            match r {
                Ok(k) => {
                    debug_assert!(k as u64 <= reserved);
                    self.used.fetch_sub(reserved - k as u64, AcqRel);
                    return Ok(k);
                }
                Err(Restart) => {
                    self.used.fetch_sub(reserved, AcqRel);
                }
            }
        }
    }

    /// Like `match_in` from a given root, without touching; returns the deepest node.
    fn match_from<'g>(&self, root: &'g Node, tokens: &[u32], values: &mut Vec<u64>, guard: &'g Guard) -> (usize, &'g Node) {
        let (pos, end) = self.walk(root, tokens, values, guard);
        (pos, end.map_or(root, |e| &**e))
    }

    /// Follows `tokens` down from `root` (whole pages only), appending the matched values;
    /// returns the matched length and the node the match ends in (`None`: nothing matched).
    fn walk<'g>(&self, root: &'g Node, tokens: &[u32], values: &mut Vec<u64>, guard: &'g Guard) -> (usize, Option<&'g NodeArc>) {
        let n = tokens.len();
        let mut node: &Node = root;
        let mut end = None;
        let mut pos = 0;
        while pos < n {
            let rest = &tokens[pos..];
            let Some(lp) = self.find_child(node, rest, guard) else { break };
            // SAFETY: links are reclaimed through the epoch, and `guard` pins it.
            let link: &'g Link = unsafe { &*lp };
            if rest.len() <= link.tokens.len() {
                // The match ends on this edge: fetch the line its handle and hit record
                // will write while the tokens are compared.
                prefetch_for_write(NodeArc::as_ptr(&link.node));
            }
            let l = self.aligned(link.tokens.lcp(rest));
            if l == 0 {
                break;
            }
            link.values.extend_prefix(l, values);
            pos += l;
            end = Some(&link.node);
            if l < link.tokens.len() {
                break;
            }
            node = &link.node;
        }
        (pos, end)
    }

    /// Reserves `need` tokens of capacity, evicting unpinned leaves if required.
    fn reserve(&self, need: u64, max: u64, guard: &Guard) -> Result<(), TrieError> {
        loop {
            let u = self.used.load(Acquire);
            if u + need <= max {
                if self.used.compare_exchange_weak(u, u + need, AcqRel, Acquire).is_ok() {
                    return Ok(());
                }
                continue;
            }
            let deficit = u + need - max;
            let freed = self.evict_inner(deficit, self.policy, true, guard)?;
            if freed.is_empty() {
                return Err(capacity_err(format!(
                    "max_tokens={max} reached and nothing can be evicted (all pinned)"
                )));
            }
            self.evicted_queue.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&freed);
        }
    }

    fn insert_walk<'g>(
        &self,
        root: &'g Node,
        tokens: &[u32],
        values: Option<&[u64]>,
        logprobs: Option<&[f32]>,
        reserved: bool,
        guard: &'g Guard,
    ) -> Result<usize, Restart> {
        let n = tokens.len();
        let t = now();
        let mut node: &'g Node = root;
        let mut pos = 0usize;
        let mut stored = 0usize;
        let mut path: Vec<&'g Node> = Vec::new();
        while pos < n {
            let rest = &tokens[pos..];
            match self.find_child(node, rest, guard) {
                None => {
                    let mut lk = node.lock();
                    if node.is_dead() {
                        return Err(Restart);
                    }
                    if self.find_child(node, rest, guard).is_some() {
                        continue;
                    }
                    let k = rest.len();
                    let vals = match values {
                        Some(v) => EdgeValues::from_slice(&v[pos..]),
                        None => EdgeValues::Run { first: self.next_value.fetch_add(k as u64, Relaxed), len: k },
                    };
                    let child = NodeArc::new(Node::new(self, node, rest[0], t, 1, 0, 0));
                    let link = Box::into_raw(Box::new(Link {
                        tokens: EdgeTokens::from_slice(rest),
                        values: vals,
                        logprobs: logprobs.map(|l| l[pos..].into()),
                        node: child,
                    }));
                    // SAFETY: `node`'s lock is held (`lk`, checked alive) and `guard` is pinned, as `children::insert`
                    // requires.
                    unsafe { children::insert(&node.children, Entry { first: rest[0], link }, guard) };
                    *lk += 1;
                    drop(lk);
                    self.stored.fetch_add(k as u64, AcqRel);
                    if !reserved {
                        self.used.fetch_add(k as u64, AcqRel);
                    }
                    stored = k;
                    pos = n;
                    // SAFETY: `link` was just allocated and published in `node`'s table; links are freed only through
                    // the collector, which `guard` pins.
                    node = unsafe { &(*link).node };
                }
                Some(lp) => {
                    // SAFETY: `lp` was found in a table loaded under `guard`; links are freed only through the collector.
                    let link = unsafe { &*lp };
                    let l = self.aligned(link.tokens.lcp(rest));
                    debug_assert!(l > 0);
                    if l == link.tokens.len() {
                        if let (Some(given), None) = (logprobs, &link.logprobs) {
                            if self.upgrade_logprobs(node, lp, &given[pos..pos + l], guard).is_err() {
                                return Err(Restart);
                            }
                        }
                        path.push(&link.node);
                        pos += l;
                        node = &link.node;
                    } else {
                        let lk = node.lock();
                        if node.is_dead() {
                            return Err(Restart);
                        }
                        if self.find_child(node, rest, guard) != Some(lp) {
                            continue;
                        }
                        let given = logprobs.map(|g| &g[pos..pos + l]);
                        // SAFETY: `node`'s lock is held (`lk`), it is alive, and `lp` is still its child (re-checked under
                        // the lock) reached under `guard`: `split`'s contract.
                        let p = unsafe { self.split(node, lp, l, given, guard) };
                        drop(lk);
                        path.push(p);
                        pos += l;
                        node = p;
                    }
                }
            }
        }
        for p in path {
            p.visits.fetch_add(1, Relaxed);
        }
        if !std::ptr::eq(node, root) {
            node.touch(t);
        }
        Ok(stored)
    }

    /// Splits the edge `lp` (a child of `g`) after `l` tokens. Caller holds `g`'s lock.
    unsafe fn split<'g>(&self, g: &Node, lp: *mut Link, l: usize, given: Option<&[f32]>, guard: &'g Guard) -> &'g Node {
        // SAFETY: the caller holds `g`'s lock and `lp` is a child link of `g` reached under `guard`, so it
        // stays valid until `retire_link` below (after it is unlinked, once); `prefix` and `suffix` come
        // from `Box::into_raw` just above; `children::replace` runs under `g`'s lock with `guard` pinned.
        unsafe {
            let old = &*lp;
            let n = &old.node;
            let p = NodeArc::new(Node::new(
                self,
                g,
                old.tokens.at(0),
                n.stamp.load(Relaxed),
                n.visits.load(Relaxed),
                n.hits.load(Relaxed),
                1,
            ));
            let suffix = Box::into_raw(Box::new(Link {
                tokens: old.tokens.slice(l, old.tokens.len()),
                values: old.values.slice(l, old.values.len()),
                logprobs: old.logprobs.as_ref().map(|x| x[l..].into()),
                node: n.clone(),
            }));
            p.children.store(Owned::new(Children::Small(vec![Entry { first: old.tokens.at(l), link: suffix }].into_boxed_slice())), Release);
            let prefix_lp: Option<Box<[f32]>> = match (&old.logprobs, given) {
                (Some(x), _) => Some(x[..l].into()),
                (None, Some(g)) => Some(g.into()),
                (None, None) => None,
            };
            let prefix = Box::into_raw(Box::new(Link {
                tokens: old.tokens.slice(0, l),
                values: old.values.slice(0, l),
                logprobs: prefix_lp,
                node: p,
            }));
            // Hold P's lock (parent before child: g, then P) from the moment P becomes
            // reachable until N is re-parented. Without it a second split could find P
            // lock-free, take only P's lock, split P -> N into P -> Q -> N and set
            // N.parent = Q, and then our late `N.parent = P` would overwrite it: N linked
            // under Q but pointing at P, so its evictor would lock the wrong node.
            let p_lock = (*prefix).node.lock();
            let ok = children::replace(&g.children, old.tokens.at(0), lp, Some(Entry { first: old.tokens.at(0), link: prefix }), guard);
            debug_assert!(ok);
            // Re-parent N under P while holding g's and P's locks (evictors and splitters of
            // N lock its parent).
            n.first.store(old.tokens.at(l), Release);
            n.parent.store(NodeArc::as_ptr(&(*prefix).node) as *mut Node, Release);
            drop(p_lock);
            retire_link(lp, guard);
            &(*prefix).node
        }
    }

    /// Replaces link `lp` of `g` by a copy carrying `logprobs`. Err if `g` died.
    fn upgrade_logprobs(&self, g: &Node, lp: *mut Link, logprobs: &[f32], guard: &Guard) -> Result<(), ()> {
        let _lk = g.lock();
        if g.is_dead() {
            return Err(());
        }
        // SAFETY: `lp` was reached under `guard`; links are freed only through the collector.
        let old = unsafe { &*lp };
        let first = old.tokens.at(0);
        let new = Box::into_raw(Box::new(Link {
            tokens: old.tokens.clone(),
            values: old.values.clone(),
            logprobs: Some(logprobs.into()),
            node: old.node.clone(),
        }));
        // SAFETY: `g`'s lock is held (`_lk`) and `guard` is pinned, as `children::replace` requires.
        if unsafe { children::replace(&g.children, first, lp, Some(Entry { first, link: new }), guard) } {
            // SAFETY: `lp` was just unlinked from `g`'s table under `g`'s lock, so no new reader reaches it;
            // this is its only retirement.
            unsafe { retire_link(lp, guard) };
        } else {
            // Someone replaced it first (split or upgrade): keep theirs.
            // SAFETY: `new` came from `Box::into_raw` above and was never published.
            drop(unsafe { Box::from_raw(new) });
        }
        Ok(())
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

    // ----- eviction ---------------------------------------------------------------------

    /// Evicts unpinned leaves (whole edges) until at least `n_tokens` are freed or nothing
    /// evictable is left; returns the freed values.
    pub fn evict(&self, n_tokens: u64, policy: EvictPolicy) -> Vec<u64> {
        if n_tokens == 0 {
            return Vec::new();
        }
        let guard = epoch::pin();
        self.evict_inner(n_tokens, policy, false, &guard).unwrap_or_default()
    }

    /// Values freed by evictions that inserts triggered (max_tokens), since the last call.
    pub fn take_evicted(&self) -> Vec<u64> {
        std::mem::take(&mut *self.evicted_queue.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn scan<'g>(&'g self, guard: &'g Guard) -> Vec<Scanned<'g>> {
        let mut out: Vec<Scanned<'g>> = Vec::new();
        let mut stack: Vec<(usize, &'g Node, f64, usize, bool, usize)> = Vec::new();
        for (_, r) in self.all_roots(guard) {
            stack.push((NO_PARENT, r, 0.0, 0, true, 0));
            while let Some((parent, node, lp_sum, depth, lp_ok, len)) = stack.pop() {
                let idx = out.len();
                out.push(Scanned {
                    node,
                    parent,
                    len,
                    children_left: 0,
                    protected: parent == NO_PARENT || protocol::pins(&node.state) > 0,
                    lp_sum,
                    depth,
                    lp_ok,
                });
                let mut count = 0;
                children::for_each(&node.children, guard, |e| {
                    // SAFETY: `e` comes from a table loaded under `guard`; links are freed only through the collector
                    // (`retire_link`), so the link outlives `guard`.
                    let link = unsafe { &*e.link };
                    let (s, ok) = match &link.logprobs {
                        Some(lp) => (lp_sum + lp.iter().map(|&x| x as f64).sum::<f64>(), lp_ok),
                        None => (lp_sum, false),
                    };
                    stack.push((idx, &link.node, s, depth + link.tokens.len(), ok, link.tokens.len()));
                    count += 1;
                });
                out[idx].children_left = count;
            }
        }
        // Anything on the path to a pinned node is protected.
        for i in (0..out.len()).rev() {
            if out[i].protected && out[i].parent != NO_PARENT {
                let p = out[i].parent;
                out[p].protected = true;
            }
        }
        out
    }

    fn evict_key(s: &Scanned<'_>, policy: EvictPolicy) -> EvictKey {
        let stamp = s.node.stamp.load(Relaxed);
        match policy {
            EvictPolicy::Lru => (0, stamp, s.node.id),
            EvictPolicy::Plt => {
                let counts = (s.node.visits.load(Relaxed) + s.node.hits.load(Relaxed)) as f64;
                let prior = if s.lp_ok && s.depth > 0 { (s.lp_sum / s.depth as f64).exp() } else { 0.0 };
                ((counts + prior).to_bits(), stamp, s.node.id)
            }
        }
    }

    fn evict_inner(&self, n_tokens: u64, policy: EvictPolicy, all_or_nothing: bool, guard: &Guard) -> Result<Vec<u64>, TrieError> {
        let mut nodes = self.scan(guard);
        if all_or_nothing {
            let evictable: u64 = nodes.iter().filter(|s| !s.protected).map(|s| s.len as u64).sum();
            if evictable < n_tokens {
                return Err(capacity_err(format!(
                    "need {n_tokens} tokens of room but only {evictable} are evictable (the rest is pinned)"
                )));
            }
        }
        let mut heap: BinaryHeap<Reverse<(EvictKey, usize)>> = nodes
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.protected && s.children_left == 0)
            .map(|(i, s)| Reverse((Self::evict_key(s, policy), i)))
            .collect();
        let mut freed: Vec<u64> = Vec::new();
        while (freed.len() as u64) < n_tokens {
            let Some(Reverse((_, i))) = heap.pop() else { break };
            if !self.try_evict_leaf(nodes[i].node, &mut freed, guard) {
                continue;
            }
            let p = nodes[i].parent;
            if p != NO_PARENT {
                nodes[p].children_left -= 1;
                if nodes[p].children_left == 0 && !nodes[p].protected {
                    heap.push(Reverse((Self::evict_key(&nodes[p], policy), p)));
                }
            }
        }
        Ok(freed)
    }

    /// Evicts `n` if it is still an unpinned, childless, live non-root node.
    fn try_evict_leaf(&self, n: &Node, out: &mut Vec<u64>, guard: &Guard) -> bool {
        loop {
            if n.is_dead() {
                return false;
            }
            let pp = n.parent.load(Acquire);
            if pp.is_null() {
                return false;
            }
            // SAFETY: n was reached under `guard` while linked; its parent is unlinked
            // only after n, so it is not reclaimed before `guard` is dropped.
            let p = unsafe { &*pp };
            let mut plk = p.lock();
            if n.parent.load(Acquire) != pp {
                continue; // a split moved n under a new parent
            }
            let nlk = n.lock();
            if *nlk != 0 || n.is_dead() {
                return false;
            }
            // Find the entry before killing: a node must never be dead and still linked
            // (matches reaching it could not pin it and would retry).
            let first = n.first.load(Acquire);
            let entries = children::candidates(&p.children, first, guard);
            // SAFETY: `e` comes from a table loaded under `guard`; links are freed only through the collector
            // (`retire_link`), so the link outlives `guard`.
            let Some(e) = entries.iter().find(|e| std::ptr::eq(unsafe { NodeArc::as_ptr(&(*e.link).node) }, n)) else {
                debug_assert!(false, "live node missing from its parent's table");
                return false;
            };
            let lp = e.link;
            if !protocol::try_kill(&n.state) {
                return false; // pinned
            }
            // SAFETY: `p`'s lock is held (`plk`) and `guard` is pinned, as `children::replace` requires.
            let ok = unsafe { children::replace(&p.children, first, lp, None, guard) };
            debug_assert!(ok);
            *plk -= 1;
            drop(nlk);
            drop(plk);
            // SAFETY: `lp` was reached under `guard` and is retired only below, through the collector.
            let link = unsafe { &*lp };
            let k = link.values.len() as u64;
            link.values.extend_all(out);
            p.stamp.fetch_max(n.stamp.load(Relaxed), Relaxed);
            self.stored.fetch_sub(k, AcqRel);
            self.used.fetch_sub(k, AcqRel);
            self.evictions.fetch_add(1, Relaxed);
            self.evicted_tokens.fetch_add(k, Relaxed);
            // SAFETY: `lp` was unlinked from `p`'s table above, under `p`'s lock; this is its only retirement.
            unsafe { retire_link(lp, guard) };
            return true;
        }
    }

    // ----- probabilistic queries ---------------------------------------------------------

    /// Links along the stored path of `tokens` (page alignment is not applied: any
    /// position may be asked about). Returns the matched length and (link, used) pairs.
    fn trace<'g>(&self, root: &'g Node, tokens: &[u32], guard: &'g Guard) -> (usize, Vec<(&'g Link, usize)>) {
        let mut node = root;
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < tokens.len() {
            let rest = &tokens[pos..];
            let entries = children::candidates(&node.children, rest[0], guard);
            let mut best: Option<(&Link, usize)> = None;
            let mut i = children::lower_bound(entries, rest[0]);
            while i < entries.len() && entries[i].first == rest[0] {
                // SAFETY: `e` comes from a table loaded under `guard`; links are freed only through the collector
                // (`retire_link`), so the link outlives `guard`.
                let link = unsafe { &*entries[i].link };
                let l = link.tokens.lcp(rest);
                if best.is_none_or(|(_, b)| l > b) {
                    best = Some((link, l));
                }
                i += 1;
            }
            let Some((link, l)) = best else { break };
            out.push((link, l));
            pos += l;
            if l < link.tokens.len() {
                break;
            }
            node = &link.node;
        }
        (pos, out)
    }

    /// Natural-log probability of `tokens` under the model, from the log-probs stored
    /// along its path. `InvalidInput` if the path is not stored or lacks log-probs.
    pub fn log_prob(&self, tokens: &[u32], ns: Option<&[u8]>) -> Result<f64, TrieError> {
        if tokens.is_empty() {
            return Ok(0.0);
        }
        let guard = epoch::pin();
        let Some(root) = self.root_for(ns, &guard) else {
            return Err(TrieError::InvalidInput("sequence is not stored in this namespace".into()));
        };
        let (m, links) = self.trace(root, tokens, &guard);
        if m < tokens.len() {
            return Err(TrieError::InvalidInput(format!(
                "only {m} of {} tokens are stored in the trie",
                tokens.len()
            )));
        }
        let mut s = 0.0f64;
        let mut at = 0;
        for (link, l) in links {
            let Some(lp) = &link.logprobs else {
                return Err(TrieError::InvalidInput(format!(
                    "tokens {at}..{} were inserted without log-probs",
                    at + l
                )));
            };
            s += lp[..l].iter().map(|&x| x as f64).sum::<f64>();
            at += l;
        }
        Ok(s)
    }

    /// `d_T(a, b) = -log2 P_M(a ∧ b)` in bits, over the longest common prefix of `a` and `b`.
    pub fn d_t(&self, a: &[u32], b: &[u32], ns: Option<&[u8]>) -> Result<f64, TrieError> {
        let c = lcp_widened(a, b);
        let lp = self.log_prob(&a[..c], ns)?;
        Ok(if lp == 0.0 { 0.0 } else { -lp / std::f64::consts::LN_2 })
    }

    /// Tokens that follow `prefix` in the trie and their visit counts (number of inserts
    /// that continued with that token), sorted by token.
    pub fn next_counts(&self, prefix: &[u32], ns: Option<&[u8]>) -> (Vec<u32>, Vec<u64>) {
        let guard = epoch::pin();
        let Some(root) = self.root_for(ns, &guard) else { return (Vec::new(), Vec::new()) };
        let (m, links) = self.trace(root, prefix, &guard);
        let mut acc: Vec<(u32, u64)> = Vec::new();
        if m == prefix.len() {
            match links.last() {
                Some((link, l)) if *l < link.tokens.len() => {
                    if self.page_size > 1 && *l < self.page_size {
                        // Ended inside a first page: several sibling edges may share it.
                        let parent = if links.len() >= 2 { &*links[links.len() - 2].0.node } else { root };
                        let seg = &prefix[m - l..m];
                        children::for_each(&parent.children, &guard, |e| {
                            // SAFETY: `e` comes from a table loaded under `guard`; links are freed only through the collector
                            // (`retire_link`), so the link outlives `guard`.
                            let lk = unsafe { &*e.link };
                            if lk.tokens.len() > seg.len() && lk.tokens.starts_with(seg) {
                                acc.push((lk.tokens.at(seg.len()), lk.node.visits.load(Relaxed)));
                            }
                        });
                    } else {
                        acc.push((link.tokens.at(*l), link.node.visits.load(Relaxed)));
                    }
                }
                last => {
                    let node = last.map(|(lk, _)| &*lk.node).unwrap_or(root);
                    children::for_each(&node.children, &guard, |e| {
                        // SAFETY: `e` comes from a table loaded under `guard`; links are freed only through the collector
                        // (`retire_link`), so the link outlives `guard`.
                        let link = unsafe { &*e.link };
                        acc.push((link.tokens.at(0), link.node.visits.load(Relaxed)));
                    });
                }
            }
        }
        acc.sort_unstable_by_key(|x| x.0);
        let mut toks: Vec<u32> = Vec::with_capacity(acc.len());
        let mut counts: Vec<u64> = Vec::with_capacity(acc.len());
        for (t, c) in acc {
            if toks.last() == Some(&t) {
                *counts.last_mut().unwrap() += c;
            } else {
                toks.push(t);
                counts.push(c);
            }
        }
        (toks, counts)
    }

    // ----- introspection ----------------------------------------------------------------

    /// Sizes and counters.
    pub fn stats(&self) -> Stats {
        let guard = epoch::pin();
        let roots = self.all_roots(&guard);
        let mut s = Stats {
            namespaces: roots.len() as u64 - 1,
            page_size: self.page_size as u64,
            max_tokens: self.max_tokens,
            inserts: self.inserts.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
            evicted_tokens: self.evicted_tokens.load(Relaxed),
            capacity_errors: self.capacity_errors.load(Relaxed),
            pending_evicted: self.evicted_queue.lock().unwrap_or_else(|e| e.into_inner()).len() as u64,
            tokens: self.len(),
            ..Default::default()
        };
        let node_bytes = std::mem::size_of::<Node>();
        let link_bytes = std::mem::size_of::<Link>();
        let mut stack: Vec<&Node> = Vec::new();
        let mut bytes = std::mem::size_of::<Trie>();
        for (k, r) in roots {
            bytes += node_bytes + k.map_or(0, |k| k.len() + 64);
            stack.push(r);
        }
        while let Some(node) = stack.pop() {
            let p = protocol::pins(&node.state);
            if p > 0 {
                s.pinned_nodes += 1;
                s.pins += p;
            }
            bytes += children::heap_bytes(&node.children, &guard);
            let mut has = false;
            children::for_each(&node.children, &guard, |e| {
                has = true;
                // SAFETY: `e` comes from a table loaded under `guard`; links are freed only through the collector
                // (`retire_link`), so the link outlives `guard`.
                let link = unsafe { &*e.link };
                s.nodes += 1;
                let k = link.tokens.len();
                bytes += node_bytes + link_bytes + link.tokens.heap_bytes() + link.values.heap_bytes();
                if link.logprobs.is_some() {
                    bytes += k * 4;
                    s.tokens_with_logprobs += k as u64;
                }
                stack.push(&link.node);
            });
            if !has && !node.parent.load(Relaxed).is_null() {
                s.leaves += 1;
            }
        }
        s.bytes = bytes as u64;
        s
    }

    /// Every stored sequence (root-to-leaf path), by namespace then token order.
    pub fn dump(&self) -> Vec<DumpEntry> {
        let guard = epoch::pin();
        let mut out = Vec::new();
        for (ns, root) in self.all_roots(&guard) {
            let mut stack: Vec<(&Node, Vec<u32>, Vec<u64>)> = vec![(root, Vec::new(), Vec::new())];
            while let Some((node, toks, vals)) = stack.pop() {
                let mut kids: Vec<(&Node, Vec<u32>, Vec<u64>)> = Vec::new();
                children::for_each(&node.children, &guard, |e| {
                    // SAFETY: `e` comes from a table loaded under `guard`; links are freed only through the collector
                    // (`retire_link`), so the link outlives `guard`.
                    let link = unsafe { &*e.link };
                    let mut t = toks.clone();
                    t.extend(link.tokens.iter());
                    let mut v = vals.clone();
                    link.values.extend_all(&mut v);
                    kids.push((&link.node, t, v));
                });
                if kids.is_empty() {
                    if !toks.is_empty() {
                        out.push(DumpEntry { namespace: ns.map(|k| k.to_vec()), tokens: toks, values: vals });
                    }
                } else {
                    kids.sort_by(|a, b| b.1.cmp(&a.1));
                    stack.extend(kids);
                }
            }
        }
        out
    }

    // ----- used by snapshot.rs ----------------------------------------------------------

    pub(crate) fn with_roots<R>(&self, f: impl FnOnce(&[(Option<&[u8]>, &Node)], &Guard) -> R) -> R {
        let guard = epoch::pin();
        let roots = self.all_roots(&guard);
        f(&roots, &guard)
    }

    pub(crate) fn restore_root<'g>(&'g self, ns: Option<&[u8]>, guard: &'g Guard) -> &'g Node {
        self.root_or_create(ns, guard)
    }

    /// Attaches a restored child under `parent` (single-threaded restore). Returns the
    /// new node, or None if an edge with the same first page already exists.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn restore_child<'g>(
        &self,
        parent: &'g Node,
        tokens: &[u32],
        values: &[u64],
        logprobs: Option<Box<[f32]>>,
        visits: u64,
        hits: u64,
        guard: &'g Guard,
    ) -> Option<&'g Node> {
        let first = tokens[0];
        let probe = &tokens[..self.page_size.min(tokens.len())];
        let entries = children::candidates(&parent.children, first, guard);
        // SAFETY: `e` comes from a table loaded under `guard`; links are freed only through the collector
        // (`retire_link`), so the link outlives `guard`.
        if entries.iter().any(|e| e.first == first && (self.page_size == 1 || unsafe { (*e.link).tokens.starts_with(probe) })) {
            return None;
        }
        let k = tokens.len() as u64;
        let mut lk = parent.lock();
        let child = NodeArc::new(Node::new(self, parent, first, 0, visits, hits, 0));
        let link = Box::into_raw(Box::new(Link {
            tokens: EdgeTokens::from_slice(tokens),
            values: EdgeValues::from_slice(values),
            logprobs,
            node: child,
        }));
        // SAFETY: `parent`'s lock is held (`lk`) and `guard` is pinned, as `children::insert` requires.
        unsafe { children::insert(&parent.children, Entry { first, link }, guard) };
        *lk += 1;
        self.stored.fetch_add(k, AcqRel);
        self.used.fetch_add(k, AcqRel);
        // SAFETY: `link` was just allocated and published in `parent`'s table; links are freed only
        // through the collector, which `guard` pins.
        Some(unsafe { &(*link).node })
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
