//! Loom model check of the node/pin/evict protocol.
//!
//! `protocol::{try_pin, unpin, try_kill}` run unchanged on loom's atomics (through the
//! `Word` trait); the lock discipline around them is the one `trie.rs` uses:
//! an evictor locks the parent, re-checks the child's parent pointer, locks the child,
//! kills it only if it has no children and no pins, then unlinks it; an inserter adds a
//! child under the node's lock only if the node is not dead; a split re-parents a node
//! under the old parent's lock and the new parent's lock, held from the moment the new
//! parent is published until the re-parenting is done (without the second, a split of the
//! new edge could re-parent the node first and be overwritten: see
//! `lost_reparent_is_caught`). Loom explores every interleaving (bounded preemption).

use loom::sync::atomic::{AtomicBool, AtomicUsize};
use loom::sync::{Arc, Mutex};
use seqkv_trie::protocol::{self, Word};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release, SeqCst};

struct LWord(loom::sync::atomic::AtomicU64);
impl Word for LWord {
    fn load_word(&self, o: std::sync::atomic::Ordering) -> u64 {
        self.0.load(o)
    }
    fn cas_word(&self, c: u64, n: u64) -> Result<u64, u64> {
        self.0.compare_exchange(c, n, AcqRel, Acquire)
    }
}

/// Index of the modelled leaf in every child list.
const N: u8 = 2;
/// Child-list entry of split node `i` (1 = P, 2 = Q): `SPLIT_NODE + i`, distinct from `N`.
const SPLIT_NODE: u8 = 10;

struct Model {
    state: LWord,
    /// The leaf's lock, guarding its child count.
    leaf: Mutex<usize>,
    /// Parent candidates: 0 = G (original parent), 1 = P (created by a split of G -> N),
    /// 2 = Q (created by a split of P -> N).
    parents: [Mutex<Vec<u8>>; 3],
    parent_of_leaf: AtomicUsize,
    values_live: AtomicBool,
    frees: AtomicUsize,
}

impl Model {
    fn new() -> Arc<Model> {
        Arc::new(Model {
            state: LWord(loom::sync::atomic::AtomicU64::new(0)),
            leaf: Mutex::new(0),
            parents: [Mutex::new(vec![N]), Mutex::new(vec![]), Mutex::new(vec![])],
            parent_of_leaf: AtomicUsize::new(0),
            values_live: AtomicBool::new(true),
            frees: AtomicUsize::new(0),
        })
    }

    /// `Trie::try_evict_leaf`.
    fn evict(&self) -> bool {
        loop {
            if protocol::is_dead(&self.state) {
                return false;
            }
            let p = self.parent_of_leaf.load(Acquire);
            let mut plist = self.parents[p].lock().unwrap();
            if self.parent_of_leaf.load(Acquire) != p {
                continue;
            }
            let kids = self.leaf.lock().unwrap();
            if *kids != 0 || !protocol::try_kill(&self.state) {
                return false;
            }
            let at = plist.iter().position(|&x| x == N).expect("live leaf linked under its parent");
            plist.remove(at);
            drop(kids);
            drop(plist);
            assert!(self.values_live.swap(false, SeqCst), "values freed twice");
            self.frees.fetch_add(1, SeqCst);
            return true;
        }
    }

    /// `Trie::pin` + reading the matched values + `Trie::unpin`.
    fn pin_and_read(&self) {
        if protocol::try_pin(&self.state).is_ok() {
            assert!(self.values_live.load(SeqCst), "pinned node's values were freed");
            loom::thread::yield_now();
            assert!(self.values_live.load(SeqCst), "values freed while pinned");
            protocol::unpin(&self.state).unwrap();
        }
    }

    /// `insert_walk` adding a child under the leaf.
    fn add_child(&self) -> bool {
        let mut kids = self.leaf.lock().unwrap();
        if protocol::is_dead(&self.state) {
            return false;
        }
        *kids += 1;
        true
    }

    /// `Trie::split` of the leaf's incoming edge under `from`: `from -> N` becomes
    /// `from -> to -> N`. The new node `to` is locked before it is published (in `from`'s
    /// list) and until N's parent pointer says `to`, as `Trie::split` does; with
    /// `hold_new_lock == false` it is released right after building its list (the old bug).
    fn split(&self, from: usize, to: usize, hold_new_lock: bool) {
        let mut g = self.parents[from].lock().unwrap();
        if let Some(at) = g.iter().position(|&x| x == N) {
            let mut p = self.parents[to].lock().unwrap();
            p.push(N);
            if !hold_new_lock {
                drop(p);
                g[at] = SPLIT_NODE + to as u8; // `from` now points at `to`
                self.parent_of_leaf.store(to, Release);
                return;
            }
            g[at] = SPLIT_NODE + to as u8;
            self.parent_of_leaf.store(to, Release);
            drop(p);
        }
    }

    fn check_final(&self) {
        let dead = protocol::is_dead(&self.state);
        let linked: usize = self.parents.iter().map(|p| p.lock().unwrap().iter().filter(|&&x| x == N).count()).sum();
        if dead {
            assert_eq!(linked, 0);
            assert_eq!(self.frees.load(SeqCst), 1);
            assert_eq!(*self.leaf.lock().unwrap(), 0, "dead node got a child");
        } else {
            assert_eq!(linked, 1);
            assert_eq!(self.frees.load(SeqCst), 0);
            let p = self.parent_of_leaf.load(SeqCst);
            assert!(self.parents[p].lock().unwrap().contains(&N), "live leaf not linked under its parent pointer");
        }
        assert_eq!(protocol::pins(&self.state), 0);
    }
}

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b
}

#[test]
fn pin_vs_two_evictors() {
    builder().check(|| {
        let m = Model::new();
        let a = m.clone();
        let b = m.clone();
        let t1 = loom::thread::spawn(move || a.pin_and_read());
        let t2 = loom::thread::spawn(move || {
            b.evict();
        });
        m.evict();
        t1.join().unwrap();
        t2.join().unwrap();
        m.check_final();
    });
}

#[test]
fn insert_child_vs_evict_vs_pin() {
    builder().check(|| {
        let m = Model::new();
        let a = m.clone();
        let b = m.clone();
        let t1 = loom::thread::spawn(move || {
            a.add_child();
        });
        let t2 = loom::thread::spawn(move || b.pin_and_read());
        let evicted = m.evict();
        t1.join().unwrap();
        t2.join().unwrap();
        if evicted {
            assert_eq!(*m.leaf.lock().unwrap(), 0);
        }
        m.check_final();
    });
}

#[test]
fn split_reparent_vs_evict() {
    builder().check(|| {
        let m = Model::new();
        let a = m.clone();
        let b = m.clone();
        let t1 = loom::thread::spawn(move || a.split(0, 1, true));
        let t2 = loom::thread::spawn(move || b.pin_and_read());
        m.evict();
        t1.join().unwrap();
        t2.join().unwrap();
        m.check_final();
    });
}

/// Two successive splits (G -> N, then P -> N, as two inserts of longer and shorter
/// shared prefixes do) racing an evictor: N always ends linked under its parent pointer.
#[test]
fn two_splits_vs_evict() {
    builder().check(|| {
        let m = Model::new();
        let a = m.clone();
        let b = m.clone();
        let t1 = loom::thread::spawn(move || a.split(0, 1, true));
        let t2 = loom::thread::spawn(move || b.split(1, 2, true));
        m.evict();
        t1.join().unwrap();
        t2.join().unwrap();
        m.check_final();
    });
}

/// The model catches the old split: releasing P before re-parenting N lets the split of
/// P -> N set N's parent to Q first, then the late store points N back at P while it is
/// linked under Q (an evictor then locks the wrong parent).
#[test]
#[should_panic]
fn lost_reparent_is_caught() {
    builder().check(|| {
        let m = Model::new();
        let a = m.clone();
        let t1 = loom::thread::spawn(move || a.split(0, 1, false));
        m.split(1, 2, false);
        t1.join().unwrap();
        m.check_final();
    });
}

/// The check has teeth: a check-then-store kill (instead of one CAS) lets a pin slip in
/// between, and loom finds the interleaving where pinned values get freed.
#[test]
#[should_panic]
fn broken_kill_is_caught() {
    builder().check(|| {
        let m = Model::new();
        let a = m.clone();
        let t1 = loom::thread::spawn(move || a.pin_and_read());
        // broken evictor
        {
            let _g = m.parents[0].lock().unwrap();
            if protocol::pins(&m.state) == 0 {
                loom::thread::yield_now();
                m.state.0.store(protocol::DEAD, SeqCst);
                m.values_live.store(false, SeqCst);
            }
        }
        t1.join().unwrap();
    });
}
