//! Nodes and edges: [`Link`] (an immutable edge), [`Node`] (its cache-line layout), the
//! counted [`NodeArc`] and the public handle [`NodeRef`]; plus the clock and write-prefetch
//! helpers the read path uses.

use super::Trie;
use crate::children;
use crate::protocol;
use crate::tokens::EdgeTokens;
use crate::values::EdgeValues;
use crossbeam_epoch::{self as epoch, Atomic};
use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

/// A node's child table: entries point at [`Link`]s.
pub(crate) type Children = children::Children<Link>;
/// One entry of a [`Children`] table.
pub(crate) type Entry = children::Entry<Link>;

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
    /// A root-like node with no parent (the default root, the orphan root).
    pub(super) fn bare(node_id: u64, trie_id: u64) -> Node {
        Node {
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
            trie_id,
        }
    }

    pub(super) fn new(trie: &Trie, parent: *const Node, first: u32, stamp: u64, visits: u64, hits: u64, n_children: usize) -> Node {
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
    pub(super) fn is_dead(&self) -> bool {
        protocol::is_dead(&self.state)
    }

    #[inline]
    pub(super) fn touch(&self, t: u64) {
        if self.stamp.load(Relaxed) < t {
            self.stamp.store(t, Relaxed);
        }
    }

    /// A match ended on this node's edge: its LRU stamp and hit count.
    #[inline]
    pub(super) fn record_hit(&self) {
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
pub(super) fn prefetch_for_write<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHW changes no architectural state and does not fault on any address.
    unsafe {
        std::arch::asm!("prefetchw [{0}]", in(reg) p, options(nostack, preserves_flags, readonly))
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
