//! Python binding of `seqkv-trie`: `Trie`, `Match`, `Node`, `Pin`.
//!
//! Every method converts its arguments while holding the GIL (one copy of the
//! token ids into a `Vec<u32>`, so that no Python thread can change them while
//! Rust reads them), then releases the GIL (`py.detach`) for the trie work,
//! then builds the result (the matched values become a NumPy array that owns
//! the `Vec<u64>` filled by the trie: no second copy).

use crate::convert::{ns_key, read_bytes, read_ints, read_logprobs, read_tokens, tokens_array, type_name};
use crate::errors::{invalid, NResult};
use numpy::PyArray1;
#[cfg(feature = "bench-hooks")]
use numpy::{PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyTuple};
use seqkv_trie::{EvictPolicy, NodeRef, Trie, TrieConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Keys shorter than this many tokens are matched without releasing the GIL (see
/// `Trie._set_gil_release_min_tokens`); 0 = always release.
static GIL_RELEASE_MIN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs `f` without the GIL unless the call is short enough that a GIL hand-off would
/// cost more than the work (many Python threads contending for the GIL).
#[inline]
fn maybe_detach<T: Send>(py: Python<'_>, n_tokens: usize, f: impl FnOnce() -> T + Send) -> T {
    if n_tokens >= GIL_RELEASE_MIN.load(Ordering::Relaxed) {
        py.detach(f)
    } else {
        f()
    }
}


fn policy_of(s: &str) -> NResult<EvictPolicy> {
    Ok(s.parse::<EvictPolicy>()?)
}

/// `next_counts`' result: token ids (`uint32`) and their counts (`uint64`).
type TokensAndCounts<'py> = (Bound<'py, PyArray1<u32>>, Bound<'py, PyArray1<u64>>);

/// A node of a trie, as returned in `Match.node`: what `pin` and `unpin` take.
#[pyclass(frozen, module = "seqkv._native", name = "Node")]
pub struct PyNode {
    node: NodeRef,
}

#[pymethods]
impl PyNode {
    /// Whether the node has been evicted (a pin on it would fail).
    #[getter]
    fn evicted(&self) -> bool {
        self.node.is_dead()
    }
    /// Pins currently held on the node.
    #[getter]
    fn pins(&self) -> u64 {
        self.node.pins()
    }
    /// Identifier, unique within the trie.
    #[getter]
    fn id(&self) -> u64 {
        self.node.id()
    }
    /// Whether this is a namespace root (a match of length 0).
    #[getter]
    fn is_root(&self) -> bool {
        self.node.is_root()
    }
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<PyNode>().map(|o| o.get().node == self.node).unwrap_or(false)
    }
    fn __hash__(&self) -> u64 {
        self.node.id() ^ (self.node.trie_id() << 40)
    }
    fn __repr__(&self) -> String {
        format!("Node(id={}, pins={}, evicted={})", self.node.id(), self.node.pins(), self.node.is_dead())
    }
}

/// Result of `Trie.match_prefix`: `length` tokens matched, `values` (uint64, one per
/// matched token) and `node` (pin it to keep the values from being evicted).
#[pyclass(frozen, module = "seqkv._native", name = "Match")]
pub struct PyMatch {
    #[pyo3(get)]
    length: usize,
    values: Py<PyArray1<u64>>,
    node: NodeRef,
}

#[pymethods]
impl PyMatch {
    #[getter]
    fn values(&self, py: Python<'_>) -> Py<PyArray1<u64>> {
        self.values.clone_ref(py)
    }
    #[getter]
    fn node(&self) -> PyNode {
        PyNode { node: self.node.clone() }
    }
    fn __len__(&self) -> usize {
        self.length
    }
    fn __repr__(&self) -> String {
        format!("Match(length={}, node_id={})", self.length, self.node.id())
    }
}

/// A pin held on a node; `with trie.pin(node): ...` releases it on exit.
#[pyclass(frozen, module = "seqkv._native", name = "Pin")]
pub struct PyPin {
    trie: Arc<Trie>,
    node: NodeRef,
    released: AtomicBool,
}

impl PyPin {
    fn do_release(&self) -> NResult<()> {
        if self.released.swap(true, Ordering::AcqRel) {
            return Err(invalid("pin already released (double unpin)"));
        }
        Ok(self.trie.unpin(&self.node)?)
    }
}

#[pymethods]
impl PyPin {
    /// The pinned node.
    #[getter]
    fn node(&self) -> PyNode {
        PyNode { node: self.node.clone() }
    }
    /// Whether this pin has been released.
    #[getter]
    fn released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }
    /// Releases the pin (once).
    fn release(&self) -> NResult<()> {
        self.do_release()
    }
    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }
    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) -> NResult<bool> {
        if !self.released.load(Ordering::Acquire) {
            self.do_release()?;
        }
        Ok(false)
    }
    fn __repr__(&self) -> String {
        format!("Pin(node_id={}, released={})", self.node.id(), self.released.load(Ordering::Acquire))
    }
}

/// Concurrent radix trie over token ids, shared by any number of Python threads.
///
/// `Trie(page_size=1, max_tokens=None, policy="lru")`. Reads take no lock; writers lock
/// one node; every method releases the GIL. See `docs/trie.md`.
#[pyclass(frozen, module = "seqkv._native", name = "Trie")]
pub struct PyTrie {
    inner: Arc<Trie>,
}

impl PyTrie {
    fn node_of(&self, obj: &Bound<'_, PyAny>) -> NResult<NodeRef> {
        if let Ok(n) = obj.cast::<PyNode>() {
            return Ok(n.get().node.clone());
        }
        if let Ok(m) = obj.cast::<PyMatch>() {
            return Ok(m.get().node.clone());
        }
        Err(invalid(format!("expected a Node (Match.node), got {}", type_name(obj))))
    }
}

#[pymethods]
impl PyTrie {
    #[new]
    #[pyo3(signature = (page_size = None, max_tokens = None, policy = "lru", evicted_queue = None))]
    fn new(
        page_size: Option<&Bound<'_, PyAny>>,
        max_tokens: Option<&Bound<'_, PyAny>>,
        policy: &str,
        evicted_queue: Option<&Bound<'_, PyAny>>,
    ) -> NResult<Self> {
        let ps: i64 = match page_size {
            None => 1,
            Some(p) => {
                if p.is_instance_of::<PyBool>() {
                    return Err(invalid("page_size must be an int"));
                }
                p.extract().map_err(|_| invalid("page_size must be an int"))?
            }
        };
        if !(1..=(1 << 20)).contains(&ps) {
            return Err(invalid(format!("page_size must be in 1..=1048576, got {ps}")));
        }
        let max = match max_tokens {
            None => None,
            Some(m) if m.is_none() => None,
            Some(m) => {
                let v: i64 = m.extract().map_err(|_| invalid("max_tokens must be an int or None"))?;
                if v < 0 || m.is_instance_of::<PyBool>() {
                    return Err(invalid(format!("max_tokens must be >= 0, got {v}")));
                }
                Some(v as u64)
            }
        };
        let evicted_queue_limit = match evicted_queue {
            None => seqkv_trie::DEFAULT_EVICTED_QUEUE_LIMIT,
            Some(q) => {
                let v: i64 = if q.is_instance_of::<PyBool>() { -1 } else { q.extract().unwrap_or(-1) };
                if !(0..=(1i64 << 40)).contains(&v) {
                    return Err(invalid("evicted_queue must be an int in 0..=2**40"));
                }
                v as usize
            }
        };
        let cfg = TrieConfig { page_size: ps as usize, max_tokens: max, policy: policy_of(policy)?, evicted_queue_limit };
        Ok(PyTrie { inner: Arc::new(Trie::new(cfg)?) })
    }

    /// Stores `tokens` (cut to whole pages). `values`: one uint64 handle per token (fresh
    /// unique handles if None); `logprobs`: natural-log model probability of each token
    /// given its prefix. Returns the number of tokens newly stored (the last ones of the
    /// key). Raises CapacityError, storing nothing, if `max_tokens` cannot be respected.
    #[pyo3(signature = (tokens, values = None, logprobs = None, namespace = None))]
    fn insert(
        &self,
        py: Python<'_>,
        tokens: &Bound<'_, PyAny>,
        values: Option<&Bound<'_, PyAny>>,
        logprobs: Option<&Bound<'_, PyAny>>,
        namespace: Option<&Bound<'_, PyAny>>,
    ) -> NResult<usize> {
        let toks = read_tokens(tokens, "tokens")?;
        let vals = match values {
            Some(v) if !v.is_none() => Some(read_ints(v, "values", u64::MAX)?),
            _ => None,
        };
        let lps = match logprobs {
            Some(v) if !v.is_none() => Some(read_logprobs(v)?),
            _ => None,
        };
        let ns = ns_key(namespace)?;
        let t = &self.inner;
        Ok(py.detach(|| t.insert(&toks, vals.as_deref(), lps.as_deref(), ns.as_deref()))?)
    }

    /// Longest stored prefix of `tokens` (cut to whole pages). Takes no lock. With
    /// `pin=True` the returned node is pinned atomically with the match (release it with
    /// `unpin(m.node)`).
    #[pyo3(signature = (tokens, namespace = None, pin = false))]
    fn match_prefix(
        &self,
        py: Python<'_>,
        tokens: &Bound<'_, PyAny>,
        namespace: Option<&Bound<'_, PyAny>>,
        pin: bool,
    ) -> NResult<PyMatch> {
        let toks = read_tokens(tokens, "tokens")?;
        let ns = match namespace {
            None => None,
            Some(n) => ns_key(Some(n))?,
        };
        let t = &self.inner;
        let (m, vals) = maybe_detach(py, toks.len(), || {
            let mut vals = Vec::with_capacity(toks.len());
            let m = if pin {
                t.match_and_pin(&toks, ns.as_deref(), &mut vals)
            } else {
                t.match_prefix(&toks, ns.as_deref(), &mut vals)
            };
            (m, vals)
        });
        Ok(PyMatch { length: m.length, values: PyArray1::from_vec(py, vals).unbind(), node: m.node })
    }

    /// Pins `node` (a `Match.node`): neither it nor its ancestors are evicted until the pin
    /// is released. Returns a `Pin`, usable as a context manager. InvalidInputError if the
    /// node was evicted since the match (match again) or belongs to another trie.
    fn pin(&self, node: &Bound<'_, PyAny>) -> NResult<PyPin> {
        let n = self.node_of(node)?;
        self.inner.pin(&n)?;
        Ok(PyPin { trie: self.inner.clone(), node: n, released: AtomicBool::new(false) })
    }

    /// Releases one pin of `node` (a Node, or the Pin that `pin` returned).
    /// InvalidInputError on a double unpin.
    fn unpin(&self, node: &Bound<'_, PyAny>) -> NResult<()> {
        if let Ok(p) = node.cast::<PyPin>() {
            let p = p.get();
            if !Arc::ptr_eq(&p.trie, &self.inner) {
                return Err(invalid("pin belongs to another trie"));
            }
            return p.do_release();
        }
        let n = self.node_of(node)?;
        Ok(self.inner.unpin(&n)?)
    }

    /// Evicts unpinned leaves until at least `n_tokens` are freed (or nothing evictable is
    /// left); returns the freed values. `policy`: "lru" or "plt".
    #[pyo3(signature = (n_tokens, policy = "lru"))]
    fn evict<'py>(&self, py: Python<'py>, n_tokens: &Bound<'py, PyAny>, policy: &str) -> NResult<Bound<'py, PyArray1<u64>>> {
        let n: i64 = n_tokens.extract().map_err(|_| invalid("n_tokens must be an int"))?;
        if n < 0 {
            return Err(invalid(format!("n_tokens must be >= 0, got {n}")));
        }
        let p = policy_of(policy)?;
        let t = &self.inner;
        let freed = py.detach(|| t.evict(n as u64, p));
        Ok(PyArray1::from_vec(py, freed))
    }

    /// Values freed by evictions that inserts triggered (max_tokens) since the last call.
    fn take_evicted<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        let t = &self.inner;
        PyArray1::from_vec(py, py.detach(|| t.take_evicted()))
    }

    /// d_T(a, b) = -log2 P_M(a ∧ b) in bits over the longest common prefix of a and b,
    /// from the log-probs stored at insert. InvalidInputError if that path is not stored
    /// or lacks log-probs.
    #[pyo3(signature = (a, b, namespace = None))]
    fn d_t(&self, py: Python<'_>, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>, namespace: Option<&Bound<'_, PyAny>>) -> NResult<f64> {
        let (a, b, ns) = (read_tokens(a, "a")?, read_tokens(b, "b")?, ns_key(namespace)?);
        let t = &self.inner;
        Ok(py.detach(|| t.d_t(&a, &b, ns.as_deref()))?)
    }

    /// Natural-log probability of `tokens` under the model (sum of stored log-probs).
    #[pyo3(signature = (tokens, namespace = None))]
    fn log_prob(&self, py: Python<'_>, tokens: &Bound<'_, PyAny>, namespace: Option<&Bound<'_, PyAny>>) -> NResult<f64> {
        let (toks, ns) = (read_tokens(tokens, "tokens")?, ns_key(namespace)?);
        let t = &self.inner;
        Ok(py.detach(|| t.log_prob(&toks, ns.as_deref()))?)
    }

    /// Tokens seen after `prefix` and how many inserts continued with each:
    /// `(tokens uint32[k], counts uint64[k])`, sorted by token.
    #[pyo3(signature = (prefix, namespace = None))]
    fn next_counts<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        namespace: Option<&Bound<'py, PyAny>>,
    ) -> NResult<TokensAndCounts<'py>> {
        let (toks, ns) = (read_tokens(prefix, "prefix")?, ns_key(namespace)?);
        let t = &self.inner;
        let (a, b) = py.detach(|| t.next_counts(&toks, ns.as_deref()));
        Ok((tokens_array(py, a), PyArray1::from_vec(py, b)))
    }

    fn __len__(&self) -> usize {
        self.inner.len() as usize
    }

    /// Sizes and counters: tokens, nodes, leaves, namespaces, pinned_nodes, pins, bytes,
    /// bytes_per_token, page_size, max_tokens, policy, inserts, evictions, evicted_tokens,
    /// capacity_errors, pending_evicted.
    fn stats<'py>(&self, py: Python<'py>) -> NResult<Bound<'py, PyDict>> {
        let t = &self.inner;
        let s = py.detach(|| t.stats());
        let d = PyDict::new(py);
        d.set_item("tokens", s.tokens)?;
        d.set_item("nodes", s.nodes)?;
        d.set_item("leaves", s.leaves)?;
        d.set_item("namespaces", s.namespaces)?;
        d.set_item("pinned_nodes", s.pinned_nodes)?;
        d.set_item("pins", s.pins)?;
        d.set_item("tokens_with_logprobs", s.tokens_with_logprobs)?;
        d.set_item("bytes", s.bytes)?;
        d.set_item("bytes_per_token", if s.tokens > 0 { s.bytes as f64 / s.tokens as f64 } else { 0.0 })?;
        d.set_item("page_size", s.page_size)?;
        d.set_item("max_tokens", s.max_tokens)?;
        d.set_item("policy", t.policy().as_str())?;
        d.set_item("inserts", s.inserts)?;
        d.set_item("evictions", s.evictions)?;
        d.set_item("evicted_tokens", s.evicted_tokens)?;
        d.set_item("capacity_errors", s.capacity_errors)?;
        d.set_item("pending_evicted", s.pending_evicted)?;
        Ok(d)
    }

    /// Serialised contents (sequences, values, log-probs, visit counts; not pins).
    fn snapshot<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let t = &self.inner;
        let v = py.detach(|| t.snapshot());
        PyBytes::new(py, &v)
    }

    /// Rebuilds a trie from `snapshot()` bytes; CorruptStreamError on bad data.
    #[staticmethod]
    fn restore(py: Python<'_>, data: &Bound<'_, PyAny>) -> NResult<PyTrie> {
        let bytes = read_bytes(data, "restore")?;
        let t = py.detach(|| Trie::restore(&bytes))?;
        Ok(PyTrie { inner: Arc::new(t) })
    }

    #[getter]
    fn page_size(&self) -> usize {
        self.inner.page_size()
    }
    #[getter]
    fn max_tokens(&self) -> Option<u64> {
        self.inner.max_tokens()
    }
    #[getter]
    fn policy(&self) -> &'static str {
        self.inner.policy().as_str()
    }

    /// Every stored root-to-leaf sequence: list of (namespace key bytes or None, tokens, values).
    /// For tests and debugging.
    #[allow(clippy::type_complexity)]
    fn _dump<'py>(&self, py: Python<'py>) -> Vec<(Option<Bound<'py, PyBytes>>, Bound<'py, PyArray1<u32>>, Bound<'py, PyArray1<u64>>)> {
        let t = &self.inner;
        let d = py.detach(|| t.dump());
        d.into_iter()
            .map(|e| (e.namespace.map(|k| PyBytes::new(py, &k)), PyArray1::from_vec(py, e.tokens), PyArray1::from_vec(py, e.values)))
            .collect()
    }

    /// Bench hook (cargo feature `bench-hooks`, in dev builds only).
    ///
    /// Read benchmark without Python in the loop: `threads` native threads each run `ops`
    /// matches over the rows of `keys` (uint32, 2-D). Returns elapsed seconds.
    ///
    /// `private=True` is the control: each thread matches on its own copy of the trie
    /// (restored from a snapshot), so nothing is shared between threads; the gap between
    /// the two is what sharing costs. `hold_epoch=True` pins the epoch once per thread.
    ///
    /// `probe` (controls): `"match"` (default: `match_prefix`, what users call), `"walk_touch"`
    /// (the same walk and LRU/hit bookkeeping, no node handle cloned) or `"walk"` (the walk
    /// alone): the gaps between them show what each shared write on the read path costs.
    /// `cpus`: thread `i` is pinned to `cpus[i % len]` (none: the scheduler places them).
    #[cfg(feature = "bench-hooks")]
    #[pyo3(signature = (keys, threads, ops, hold_epoch = false, private = false, probe = "match", cpus = Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn _read_bench(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyArray2<u32>>,
        threads: usize,
        ops: usize,
        hold_epoch: bool,
        private: bool,
        probe: &str,
        cpus: Vec<usize>,
    ) -> NResult<f64> {
        let probe = match probe {
            "match" => None,
            "walk_touch" => Some(true),
            "walk" => Some(false),
            other => return Err(invalid(format!("probe must be 'match', 'walk_touch' or 'walk', not {other:?}"))),
        };
        let view = keys.readonly();
        let flat = view.as_slice().map_err(|_| invalid("keys must be C-contiguous"))?;
        let width = view.shape()[1];
        if flat.is_empty() || width == 0 || threads == 0 {
            return Err(invalid("need at least one non-empty key and one thread"));
        }
        // Every call reads the caller's one buffer: a per-call copy would land on other
        // physical pages each time, and their cache-set placement alone moved one thread's
        // rate by up to 2x between calls on the dev VM.
        let rows: Vec<&[u32]> = flat.chunks_exact(width).collect();
        let shared = &self.inner;
        let snap = if private { Some(shared.snapshot()) } else { None };
        let snap = &snap;
        let unpinned = std::sync::atomic::AtomicBool::new(false);
        let secs = py.detach(|| {
            let barrier = std::sync::Barrier::new(threads + 1);
            std::thread::scope(|s| {
                for tid in 0..threads {
                    let rows = &rows;
                    let barrier = &barrier;
                    let (cpus, unpinned) = (&cpus, &unpinned);
                    s.spawn(move || {
                        pin_bench_thread(cpus, tid, unpinned);
                        let own = snap.as_ref().map(|b| Trie::restore(b).expect("own snapshot"));
                        let t: &Trie = own.as_ref().unwrap_or(shared);
                        let held = hold_epoch.then(seqkv_trie::hold_epoch);
                        barrier.wait();
                        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (tid as u64 + 1);
                        let mut total = 0usize;
                        for _ in 0..ops {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            let k = rows[(x % rows.len() as u64) as usize];
                            let mut v = Vec::with_capacity(k.len());
                            total += match probe {
                                None => t.match_prefix(k, None, &mut v).length,
                                Some(touch) => t.walk_probe(k, &mut v, touch),
                            };
                            std::hint::black_box(&v);
                        }
                        barrier.wait();
                        drop(held);
                        std::hint::black_box(total);
                    });
                }
                barrier.wait();
                let start = std::time::Instant::now();
                barrier.wait();
                start.elapsed().as_secs_f64()
            })
        });
        pinned_result(secs, &unpinned)
    }

    /// Bench hook (cargo feature `bench-hooks`). Control for `_read_bench`: `threads` native threads each run `iters` steps of a
    /// register-only integer loop (no memory traffic, nothing shared). Its scaling is the
    /// machine's own ceiling (turbo, SMT, noisy neighbours). Returns elapsed seconds.
    #[cfg(feature = "bench-hooks")]
    #[staticmethod]
    #[pyo3(signature = (threads, iters, cpus = Vec::new()))]
    fn _spin_bench(py: Python<'_>, threads: usize, iters: u64, cpus: Vec<usize>) -> NResult<f64> {
        let unpinned = std::sync::atomic::AtomicBool::new(false);
        let secs = py.detach(|| {
            let barrier = std::sync::Barrier::new(threads + 1);
            std::thread::scope(|s| {
                for tid in 0..threads {
                    let barrier = &barrier;
                    let (cpus, unpinned) = (&cpus, &unpinned);
                    s.spawn(move || {
                        pin_bench_thread(cpus, tid, unpinned);
                        barrier.wait();
                        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (tid as u64 + 1);
                        for _ in 0..iters {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
                        }
                        std::hint::black_box(x);
                        barrier.wait();
                    });
                }
                barrier.wait();
                let start = std::time::Instant::now();
                barrier.wait();
                start.elapsed().as_secs_f64()
            })
        });
        pinned_result(secs, &unpinned)
    }

    /// Bench hook (cargo feature `bench-hooks`). Sets the key length (tokens) below which
    /// `match_prefix` keeps the GIL; 0 (the default) releases it on every call. Process-wide.
    /// Returns the previous value.
    #[cfg(feature = "bench-hooks")]
    #[staticmethod]
    fn _set_gil_release_min_tokens(n: usize) -> usize {
        GIL_RELEASE_MIN.swap(n, Ordering::Relaxed)
    }

    fn __repr__(&self) -> String {
        format!(
            "Trie(page_size={}, max_tokens={:?}, policy={:?}, tokens={})",
            self.inner.page_size(),
            self.inner.max_tokens(),
            self.inner.policy().as_str(),
            self.inner.len()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTrie>()?;
    m.add_class::<PyMatch>()?;
    m.add_class::<PyNode>()?;
    m.add_class::<PyPin>()?;
    Ok(())
}

/// Pins the calling bench thread `tid` to `cpus[tid % cpus.len()]` (nothing when `cpus` is
/// empty); a failure is recorded in `unpinned`.
#[cfg(feature = "bench-hooks")]
fn pin_bench_thread(cpus: &[usize], tid: usize, unpinned: &std::sync::atomic::AtomicBool) {
    if cpus.is_empty() {
        return;
    }
    if !pin_current_thread(cpus[tid % cpus.len()]) {
        unpinned.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(all(feature = "bench-hooks", target_os = "linux"))]
fn pin_current_thread(cpu: usize) -> bool {
    if cpu >= libc::CPU_SETSIZE as usize {
        return false;
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within it (checked above)
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

#[cfg(all(feature = "bench-hooks", not(target_os = "linux")))]
fn pin_current_thread(_cpu: usize) -> bool {
    false
}

#[cfg(feature = "bench-hooks")]
fn pinned_result(secs: f64, unpinned: &std::sync::atomic::AtomicBool) -> NResult<f64> {
    if unpinned.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(invalid("could not pin a bench thread to one of the given CPUs"));
    }
    Ok(secs)
}
