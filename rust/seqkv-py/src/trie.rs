//! Python binding of `seqkv-trie`: `Trie`, `Match`, `Node`, `Pin`.
//!
//! Every method converts its arguments while holding the GIL (one copy of the
//! token ids into a `Vec<u32>`, so that no Python thread can change them while
//! Rust reads them), then releases the GIL (`py.detach`) for the trie work,
//! then builds the result (the matched values become a NumPy array that owns
//! the `Vec<u64>` filled by the trie: no second copy).

use crate::errors::{err, invalid, Kind};
use numpy::{
    PyArray1, PyArray2, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyInt, PyList, PyString, PyTuple};
use seqkv_trie::{EvictPolicy, NodeRef, Trie, TrieConfig, TrieError};
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

fn map_err(e: TrieError) -> PyErr {
    match e {
        TrieError::InvalidInput(m) => err(Kind::InvalidInput, m),
        TrieError::Capacity(m) => err(Kind::Capacity, m),
        TrieError::Corrupt(m) => err(Kind::CorruptStream, m),
        TrieError::FormatVersion(m) => err(Kind::FormatVersion, m),
    }
}

static NUMPY: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// `numpy.asarray(obj)` for objects that are not arrays but expose `__array__` (torch CPU tensors, ...).
fn to_ndarray<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyUntypedArray>>> {
    if let Ok(a) = obj.cast::<PyUntypedArray>() {
        return Ok(Some(a.clone()));
    }
    if obj.hasattr("__array__")? || obj.hasattr("__array_interface__")? {
        let py = obj.py();
        let np = NUMPY.get_or_try_init(py, || PyModule::import(py, "numpy").map(Bound::unbind))?;
        let a = np
            .bind(py)
            .call_method1("asarray", (obj,))
            .map_err(|e| invalid(format!("cannot read {} as a CPU array: {e}", type_name(obj))))?;
        return Ok(Some(
            a.cast_into::<PyUntypedArray>().map_err(|_| invalid("__array__ did not return an ndarray"))?,
        ));
    }
    Ok(None)
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

/// Converts any 1-D integer array (any int dtype) into `out`, range-checked by `conv`.
fn ints_from_array<T: Copy + numpy::Element>(
    arr: &Bound<'_, PyUntypedArray>,
    out: &mut Vec<u64>,
    what: &str,
    max: u64,
    conv: impl Fn(T) -> Option<u64>,
) -> PyResult<bool> {
    let Ok(a) = arr.cast::<PyArray1<T>>() else { return Ok(false) };
    let check = |x: T, i: usize| -> PyResult<u64> {
        match conv(x) {
            Some(v) if v <= max => Ok(v),
            _ => Err(invalid(format!("{what}[{i}] is negative or larger than {max}"))),
        }
    };
    // SAFETY: the GIL is held and the data is copied at once; no Rust code holds a
    // mutable borrow of this array.
    match unsafe { a.as_slice() } {
        Ok(s) => {
            out.reserve(s.len());
            for (i, &x) in s.iter().enumerate() {
                out.push(check(x, i)?);
            }
        }
        Err(_) => {
            // SAFETY: the GIL is held for the whole copy, so no Python code can write the array meanwhile, and no
            // Rust code of this module writes a caller's array.
            let view = unsafe { a.as_array() };
            out.reserve(view.len());
            for (i, &x) in view.iter().enumerate() {
                out.push(check(x, i)?);
            }
        }
    }
    Ok(true)
}

/// Reads a 1-D sequence of integers (list/tuple/range/iterable of ints, NumPy integer
/// array of any int dtype, torch CPU tensor) with every value in `0..=max`.
fn read_ints(obj: &Bound<'_, PyAny>, what: &str, max: u64) -> PyResult<Vec<u64>> {
    let mut out: Vec<u64> = Vec::new();
    if let Some(arr) = to_ndarray(obj)? {
        if arr.ndim() != 1 {
            return Err(invalid(format!("{what} must be 1-D, got an array with {} dimensions", arr.ndim())));
        }
        let ok = ints_from_array::<u32>(&arr, &mut out, what, max, |x| Some(x as u64))?
            || ints_from_array::<i64>(&arr, &mut out, what, max, |x| u64::try_from(x).ok())?
            || ints_from_array::<u64>(&arr, &mut out, what, max, Some)?
            || ints_from_array::<i32>(&arr, &mut out, what, max, |x| u64::try_from(x).ok())?
            || ints_from_array::<u16>(&arr, &mut out, what, max, |x| Some(x as u64))?
            || ints_from_array::<i16>(&arr, &mut out, what, max, |x| u64::try_from(x).ok())?
            || ints_from_array::<u8>(&arr, &mut out, what, max, |x| Some(x as u64))?
            || ints_from_array::<i8>(&arr, &mut out, what, max, |x| u64::try_from(x).ok())?;
        if !ok {
            let dt = arr.dtype().str().map(|s| s.to_string()).unwrap_or_default();
            return Err(invalid(format!("{what} must have an integer dtype, got {dt}")));
        }
        return Ok(out);
    }
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<PyByteArray>() {
        return Err(invalid(format!("{what} must be a sequence of integers, not {}", type_name(obj))));
    }
    let one = |i: usize, item: Bound<'_, PyAny>| -> PyResult<u64> {
        if item.is_instance_of::<PyBool>() {
            return Err(invalid(format!("{what}[{i}] is a bool, not an integer")));
        }
        match item.extract::<i64>() {
            Ok(v) if v >= 0 && (v as u64) <= max => Ok(v as u64),
            Ok(v) => Err(invalid(format!("{what}[{i}] = {v} is negative or larger than {max}"))),
            Err(_) => match item.extract::<u64>() {
                Ok(v) if v <= max => Ok(v),
                _ if item.is_instance_of::<PyInt>() => {
                    Err(invalid(format!("{what}[{i}] = {item} is negative or larger than {max}")))
                }
                _ => Err(invalid(format!("{what}[{i}] is a {}, not an integer", type_name(&item)))),
            },
        }
    };
    if let Ok(list) = obj.cast::<PyList>() {
        let n = list.len();
        out.reserve(n);
        for i in 0..n {
            // Fast path: exact ints read with PyLong_AsLongLong on a borrowed reference.
            // SAFETY: `list` is a live list and `i < n`; the GIL is held and no Python code
            // runs between the calls, so the borrowed item stays alive and the list unchanged.
            let fast = unsafe {
                let item = pyo3::ffi::PyList_GetItem(list.as_ptr(), i as pyo3::ffi::Py_ssize_t);
                if item.is_null() {
                    return Err(PyErr::fetch(obj.py()));
                }
                if pyo3::ffi::PyLong_CheckExact(item) != 0 {
                    let v = pyo3::ffi::PyLong_AsLongLong(item);
                    if v == -1 && !pyo3::ffi::PyErr_Occurred().is_null() {
                        pyo3::ffi::PyErr_Clear();
                        None
                    } else if v >= 0 && (v as u64) <= max {
                        Some(v as u64)
                    } else {
                        None
                    }
                } else {
                    None
                }
            };
            match fast {
                Some(v) => out.push(v),
                None => out.push(one(i, list.get_item(i)?)?),
            }
        }
    } else if let Ok(t) = obj.cast::<PyTuple>() {
        out.reserve(t.len());
        for (i, item) in t.iter().enumerate() {
            out.push(one(i, item)?);
        }
    } else {
        let it = obj
            .try_iter()
            .map_err(|_| invalid(format!("{what} must be a 1-D sequence of integers, not {}", type_name(obj))))?;
        for (i, item) in it.enumerate() {
            out.push(one(i, item?)?);
        }
    }
    Ok(out)
}

fn read_tokens(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u32>> {
    // Fast path: contiguous uint32 / int64 / int32 arrays straight into Vec<u32>.
    if let Ok(a) = obj.cast::<PyArray1<u32>>() {
        // SAFETY: the GIL is held for the whole copy, so no Python code can write the array meanwhile, and no
        // Rust code of this module writes a caller's array.
        if let Ok(s) = unsafe { a.as_slice() } {
            return Ok(s.to_vec());
        }
    }
    if let Ok(a) = obj.cast::<PyArray1<i64>>() {
        // SAFETY: the GIL is held for the whole copy, so no Python code can write the array meanwhile, and no
        // Rust code of this module writes a caller's array.
        if let Ok(s) = unsafe { a.as_slice() } {
            let mut out = Vec::with_capacity(s.len());
            for (i, &x) in s.iter().enumerate() {
                match u32::try_from(x) {
                    Ok(v) => out.push(v),
                    Err(_) => return Err(invalid(format!("{what}[{i}] = {x} is not a token id (0..=4294967295)"))),
                }
            }
            return Ok(out);
        }
    }
    Ok(read_ints(obj, what, u32::MAX as u64)?.into_iter().map(|x| x as u32).collect())
}

fn read_logprobs(obj: &Bound<'_, PyAny>) -> PyResult<Vec<f32>> {
    if let Some(arr) = to_ndarray(obj)? {
        if arr.ndim() != 1 {
            return Err(invalid("logprobs must be 1-D"));
        }
        if let Ok(a) = arr.cast::<PyArray1<f32>>() {
            // SAFETY: the GIL is held for the whole copy, so no Python code can write the array meanwhile, and no
            // Rust code of this module writes a caller's array.
            return Ok(unsafe { a.as_array() }.iter().copied().collect());
        }
        if let Ok(a) = arr.cast::<PyArray1<f64>>() {
            // SAFETY: the GIL is held for the whole copy, so no Python code can write the array meanwhile, and no
            // Rust code of this module writes a caller's array.
            return Ok(unsafe { a.as_array() }.iter().map(|&x| x as f32).collect());
        }
        let dt = arr.dtype().str().map(|s| s.to_string()).unwrap_or_default();
        return Err(invalid(format!("logprobs must have a float dtype, got {dt}")));
    }
    let it = obj.try_iter().map_err(|_| invalid("logprobs must be a 1-D sequence of floats"))?;
    let mut out = Vec::new();
    for (i, item) in it.enumerate() {
        let item = item?;
        let v: f64 = item.extract().map_err(|_| invalid(format!("logprobs[{i}] is not a number")))?;
        out.push(v as f32);
    }
    Ok(out)
}

/// Namespace salt: None, str, bytes or int; each kind is tagged so that 1, "1" and b"1" differ.
fn ns_key(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<u8>>> {
    let Some(obj) = obj else { return Ok(None) };
    if obj.is_none() {
        return Ok(None);
    }
    let mut k = Vec::new();
    if let Ok(s) = obj.cast::<PyString>() {
        k.push(b's');
        k.extend_from_slice(s.to_str()?.as_bytes());
    } else if let Ok(b) = obj.cast::<PyBytes>() {
        k.push(b'b');
        k.extend_from_slice(b.as_bytes());
    } else if obj.is_instance_of::<PyInt>() && !obj.is_instance_of::<PyBool>() {
        k.push(b'i');
        k.extend_from_slice(obj.str()?.to_str()?.as_bytes());
    } else {
        return Err(invalid(format!("namespace must be None, str, bytes or int, not {}", type_name(obj))));
    }
    Ok(Some(k))
}

fn policy_of(s: &str) -> PyResult<EvictPolicy> {
    s.parse::<EvictPolicy>().map_err(map_err)
}

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
    fn do_release(&self) -> PyResult<()> {
        if self.released.swap(true, Ordering::AcqRel) {
            return Err(invalid("pin already released (double unpin)"));
        }
        self.trie.unpin(&self.node).map_err(map_err)
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
    fn release(&self) -> PyResult<()> {
        self.do_release()
    }
    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }
    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) -> PyResult<bool> {
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
    fn node_of(&self, obj: &Bound<'_, PyAny>) -> PyResult<NodeRef> {
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
    #[pyo3(signature = (page_size = None, max_tokens = None, policy = "lru"))]
    fn new(page_size: Option<&Bound<'_, PyAny>>, max_tokens: Option<&Bound<'_, PyAny>>, policy: &str) -> PyResult<Self> {
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
        let cfg = TrieConfig { page_size: ps as usize, max_tokens: max, policy: policy_of(policy)? };
        Ok(PyTrie { inner: Arc::new(Trie::new(cfg).map_err(map_err)?) })
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
    ) -> PyResult<usize> {
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
        py.detach(|| t.insert(&toks, vals.as_deref(), lps.as_deref(), ns.as_deref())).map_err(map_err)
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
    ) -> PyResult<PyMatch> {
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
    fn pin(&self, node: &Bound<'_, PyAny>) -> PyResult<PyPin> {
        let n = self.node_of(node)?;
        self.inner.pin(&n).map_err(map_err)?;
        Ok(PyPin { trie: self.inner.clone(), node: n, released: AtomicBool::new(false) })
    }

    /// Releases one pin of `node` (a Node, or the Pin that `pin` returned).
    /// InvalidInputError on a double unpin.
    fn unpin(&self, node: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Ok(p) = node.cast::<PyPin>() {
            let p = p.get();
            if !Arc::ptr_eq(&p.trie, &self.inner) {
                return Err(invalid("pin belongs to another trie"));
            }
            return p.do_release();
        }
        let n = self.node_of(node)?;
        self.inner.unpin(&n).map_err(map_err)
    }

    /// Evicts unpinned leaves until at least `n_tokens` are freed (or nothing evictable is
    /// left); returns the freed values. `policy`: "lru" or "plt".
    #[pyo3(signature = (n_tokens, policy = "lru"))]
    fn evict<'py>(&self, py: Python<'py>, n_tokens: &Bound<'py, PyAny>, policy: &str) -> PyResult<Bound<'py, PyArray1<u64>>> {
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
    fn d_t(&self, py: Python<'_>, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>, namespace: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
        let (a, b, ns) = (read_tokens(a, "a")?, read_tokens(b, "b")?, ns_key(namespace)?);
        let t = &self.inner;
        py.detach(|| t.d_t(&a, &b, ns.as_deref())).map_err(map_err)
    }

    /// Natural-log probability of `tokens` under the model (sum of stored log-probs).
    #[pyo3(signature = (tokens, namespace = None))]
    fn log_prob(&self, py: Python<'_>, tokens: &Bound<'_, PyAny>, namespace: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
        let (toks, ns) = (read_tokens(tokens, "tokens")?, ns_key(namespace)?);
        let t = &self.inner;
        py.detach(|| t.log_prob(&toks, ns.as_deref())).map_err(map_err)
    }

    /// Tokens seen after `prefix` and how many inserts continued with each:
    /// `(tokens uint32[k], counts uint64[k])`, sorted by token.
    #[pyo3(signature = (prefix, namespace = None))]
    fn next_counts<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        namespace: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyArray1<u32>>, Bound<'py, PyArray1<u64>>)> {
        let (toks, ns) = (read_tokens(prefix, "prefix")?, ns_key(namespace)?);
        let t = &self.inner;
        let (a, b) = py.detach(|| t.next_counts(&toks, ns.as_deref()));
        Ok((PyArray1::from_vec(py, a), PyArray1::from_vec(py, b)))
    }

    fn __len__(&self) -> usize {
        self.inner.len() as usize
    }

    /// Sizes and counters: tokens, nodes, leaves, namespaces, pinned_nodes, pins, bytes,
    /// bytes_per_token, page_size, max_tokens, policy, inserts, evictions, evicted_tokens,
    /// capacity_errors, pending_evicted.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
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
    fn restore(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<PyTrie> {
        let bytes: Vec<u8> = if let Ok(b) = data.cast::<PyBytes>() {
            b.as_bytes().to_vec()
        } else if let Ok(b) = data.cast::<PyByteArray>() {
            b.to_vec()
        } else if data.hasattr("tobytes")? {
            data.call_method0("tobytes")?.cast_into::<PyBytes>().map_err(|_| invalid("tobytes() did not return bytes"))?.as_bytes().to_vec()
        } else {
            return Err(invalid(format!("restore takes bytes, not {}", type_name(data))));
        };
        let t = py.detach(|| Trie::restore(&bytes)).map_err(map_err)?;
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
    ) -> PyResult<f64> {
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

    /// Control for `_read_bench`: `threads` native threads each run `iters` steps of a
    /// register-only integer loop (no memory traffic, nothing shared). Its scaling is the
    /// machine's own ceiling (turbo, SMT, noisy neighbours). Returns elapsed seconds.
    #[staticmethod]
    #[pyo3(signature = (threads, iters, cpus = Vec::new()))]
    fn _spin_bench(py: Python<'_>, threads: usize, iters: u64, cpus: Vec<usize>) -> PyResult<f64> {
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

    /// Sets the key length (tokens) below which `match_prefix` keeps the GIL; 0 (the
    /// default) releases it on every call. Process-wide. Returns the previous value.
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
fn pin_bench_thread(cpus: &[usize], tid: usize, unpinned: &std::sync::atomic::AtomicBool) {
    if cpus.is_empty() {
        return;
    }
    if !pin_current_thread(cpus[tid % cpus.len()]) {
        unpinned.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(target_os = "linux")]
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

#[cfg(not(target_os = "linux"))]
fn pin_current_thread(_cpu: usize) -> bool {
    false
}

fn pinned_result(secs: f64, unpinned: &std::sync::atomic::AtomicBool) -> PyResult<f64> {
    if unpinned.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(invalid("could not pin a bench thread to one of the given CPUs"));
    }
    Ok(secs)
}
