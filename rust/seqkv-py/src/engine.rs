//! Bindings of `seqkv-engine`: `EngineCore` (weights) and `SequenceCore` (KV pages).
//! The Python layer (`seqkv.engine`) wraps these with a friendlier API.

use crate::convert::read_tokens;
use crate::errors::{invalid, NResult};
use numpy::{
    PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use seqkv_engine::model::{Activation, RopeTable, Tensor};
use seqkv_engine::{
    BlockType, Config, Isa, KvDtype, KvLayout, Logits, Model, Sequence, Stored, WeightDtype,
};
use std::collections::HashMap;
use std::sync::Arc;

/// A pair of float32 arrays returned to Python.
type ArrayPair<'py> = (Bound<'py, PyArrayDyn<f32>>, Bound<'py, PyArrayDyn<f32>>);


/// Model weights in the engine's layout (immutable, shared by threads).
#[pyclass(name = "EngineCore", module = "seqkv._native", frozen)]
pub struct PyEngine {
    model: Arc<Model>,
    isa: Isa,
}

/// One sequence's cached positions (KV pages).
#[pyclass(name = "SequenceCore", module = "seqkv._native")]
pub struct PySequence {
    seq: Sequence,
    layout: KvLayout,
}

fn cfg_get<'py, T: FromPyObjectOwned<'py>>(d: &Bound<'py, PyDict>, key: &str) -> NResult<T> {
    match d.get_item(key)? {
        Some(v) => v
            .extract::<T>()
            .map_err(|e| invalid(format!("config[{key:?}]: {}", Into::<PyErr>::into(e)))),
        None => Err(invalid(format!("config is missing {key:?}"))),
    }
}

fn parse_dtype(dtype: &str) -> NResult<WeightDtype> {
    WeightDtype::parse(dtype).ok_or_else(|| {
        invalid(format!(
            "dtype must be 'bf16', 'f32' or a block type ('q4_0', 'q4_1', 'q8_0'), not {dtype:?}"
        ))
    })
}

fn parse_kv_dtype(kv_dtype: &str) -> NResult<KvDtype> {
    KvDtype::parse(kv_dtype)
        .ok_or_else(|| invalid(format!("kv_dtype must be 'bf16' or 'f32', not {kv_dtype:?}")))
}

fn cfg_opt<'py, T: FromPyObjectOwned<'py>>(d: &Bound<'py, PyDict>, key: &str) -> NResult<Option<T>> {
    match d.get_item(key)? {
        Some(v) if !v.is_none() => v
            .extract::<T>()
            .map(Some)
            .map_err(|e| invalid(format!("config[{key:?}]: {}", Into::<PyErr>::into(e)))),
        _ => Ok(None),
    }
}

/// The engine config from its dict: the Llama keys (required) and the optional ones of other
/// architectures (`hidden_act`, `embed_scale`, `norm_weight_offset`, `layer_windows`,
/// `extra_rope` as a list of `(inv_freq, attention_scaling)`, `layer_rope`, `final_logit_softcap`).
fn read_config(config: &Bound<'_, PyDict>) -> NResult<Config> {
    let act: Option<String> = cfg_opt(config, "hidden_act")?;
    let hidden_act = match act.as_deref() {
        None => Activation::Silu,
        Some(a) => Activation::parse(a)
            .ok_or_else(|| invalid(format!("config['hidden_act'] must be 'silu' or 'gelu_tanh', not {a:?}")))?,
    };
    let extra: Vec<(Vec<f32>, f32)> = cfg_opt(config, "extra_rope")?.unwrap_or_default();
    Ok(Config {
        vocab_size: cfg_get(config, "vocab_size")?,
        hidden_size: cfg_get(config, "hidden_size")?,
        intermediate_size: cfg_get(config, "intermediate_size")?,
        num_layers: cfg_get(config, "num_layers")?,
        num_heads: cfg_get(config, "num_heads")?,
        num_kv_heads: cfg_get(config, "num_kv_heads")?,
        head_dim: cfg_get(config, "head_dim")?,
        rms_norm_eps: cfg_get(config, "rms_norm_eps")?,
        rope_inv_freq: cfg_get(config, "rope_inv_freq")?,
        rope_attention_scaling: cfg_get(config, "rope_attention_scaling")?,
        attention_scale: cfg_get(config, "attention_scale")?,
        hidden_act,
        embed_scale: cfg_opt(config, "embed_scale")?,
        norm_weight_offset: cfg_opt(config, "norm_weight_offset")?.unwrap_or(0.0),
        layer_windows: cfg_opt(config, "layer_windows")?.unwrap_or_default(),
        extra_rope: extra
            .into_iter()
            .map(|(inv_freq, attention_scaling)| RopeTable { inv_freq, attention_scaling })
            .collect(),
        layer_rope: cfg_opt(config, "layer_rope")?.unwrap_or_default(),
        final_logit_softcap: cfg_opt(config, "final_logit_softcap")?,
    })
}

/// A read-only view of a C-contiguous array the engine reads as a flat slice; `what` and
/// `name` say which argument it was in the error.
fn contiguous<'py, T: numpy::Element>(a: &Bound<'py, PyArrayDyn<T>>, what: &str, name: &str) -> NResult<PyReadonlyArrayDyn<'py, T>> {
    let a = a.readonly();
    if !a.is_c_contiguous() {
        return Err(invalid(format!("{what} {name:?} must be C-contiguous")));
    }
    Ok(a)
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (config, tensors, dtype = "bf16", kv_dtype = "f32", page_tokens = 64))]
    fn new(
        py: Python<'_>,
        config: &Bound<'_, PyDict>,
        tensors: &Bound<'_, PyDict>,
        dtype: &str,
        kv_dtype: &str,
        page_tokens: usize,
    ) -> NResult<Self> {
        let (dtype, kv_dtype) = (parse_dtype(dtype)?, parse_kv_dtype(kv_dtype)?);
        let cfg = read_config(config)?;
        let mut arrays: Vec<(String, PyReadonlyArrayDyn<'_, f32>)> = Vec::new();
        let mut blocks: Vec<(String, BlockType, PyReadonlyArrayDyn<'_, u8>)> = Vec::new();
        for (k, v) in tensors.iter() {
            let name: String = k.extract()?;
            if let Ok((kind, raw)) = v.extract::<(String, Bound<'_, PyArrayDyn<u8>>)>() {
                let bt = BlockType::parse(&kind).ok_or_else(|| {
                    invalid(format!(
                        "tensor {name:?}: block type {kind:?} is not one the engine computes with \
                         (q4_0, q4_1, q8_0)"
                    ))
                })?;
                blocks.push((name.clone(), bt, contiguous(&raw, "tensor", &name)?));
                continue;
            }
            let arr = v.cast::<PyArrayDyn<f32>>().map_err(|_| {
                invalid(format!(
                    "tensor {name:?} must be a float32 numpy array or a (block type, uint8 array) pair"
                ))
            })?;
            let arr = contiguous(arr, "tensor", &name)?;
            arrays.push((name, arr));
        }
        let mut map: HashMap<&str, Tensor<'_>> = arrays
            .iter()
            .map(|(n, a)| (n.as_str(), Tensor::F32(a.as_slice().expect("contiguous"))))
            .collect();
        for (n, bt, a) in &blocks {
            map.insert(n.as_str(), Tensor::Blocks(*bt, a.as_slice().expect("contiguous")));
        }
        let model = py
            .detach(|| {
                let get = |name: &str| map.get(name).copied();
                Model::new(cfg, &get, dtype, kv_dtype, page_tokens)
            })
            ?;
        Ok(PyEngine {
            model: Arc::new(model),
            isa: Isa::detect(),
        })
    }

    /// Rebuilds an engine from the arrays `packed_state()` returned (float32 or uint16 numpy
    /// arrays, C-contiguous) for the same config and dtype, without rounding or packing again.
    #[staticmethod]
    #[pyo3(signature = (config, arrays, dtype = "bf16", kv_dtype = "f32", page_tokens = 64))]
    fn from_packed_state(
        py: Python<'_>,
        config: &Bound<'_, PyDict>,
        arrays: &Bound<'_, PyDict>,
        dtype: &str,
        kv_dtype: &str,
        page_tokens: usize,
    ) -> NResult<Self> {
        let (dtype, kv_dtype) = (parse_dtype(dtype)?, parse_kv_dtype(kv_dtype)?);
        let cfg = read_config(config)?;
        let mut f32s: Vec<(String, PyReadonlyArrayDyn<'_, f32>)> = Vec::new();
        let mut u16s: Vec<(String, PyReadonlyArrayDyn<'_, u16>)> = Vec::new();
        let mut u8s: Vec<(String, PyReadonlyArrayDyn<'_, u8>)> = Vec::new();
        for (k, v) in arrays.iter() {
            let name: String = k.extract()?;
            if let Ok(a) = v.cast::<PyArrayDyn<f32>>() {
                f32s.push((name.clone(), contiguous(a, "array", &name)?));
            } else if let Ok(a) = v.cast::<PyArrayDyn<u16>>() {
                u16s.push((name.clone(), contiguous(a, "array", &name)?));
            } else if let Ok(a) = v.cast::<PyArrayDyn<u8>>() {
                u8s.push((name.clone(), contiguous(a, "array", &name)?));
            } else {
                return Err(invalid(format!("array {name:?} must be a float32, uint16 or uint8 numpy array")));
            }
        }
        let mut map: HashMap<&str, Stored<'_>> = HashMap::new();
        for (n, a) in &f32s {
            map.insert(n.as_str(), Stored::F32(a.as_slice().expect("contiguous")));
        }
        for (n, a) in &u16s {
            map.insert(n.as_str(), Stored::Bf16(a.as_slice().expect("contiguous")));
        }
        for (n, a) in &u8s {
            map.insert(n.as_str(), Stored::Blocks(a.as_slice().expect("contiguous")));
        }
        let model = py.detach(|| {
            let get = |name: &str| map.get(name).copied();
            Model::from_packed_state(cfg, &get, dtype, kv_dtype, page_tokens)
        })?;
        Ok(PyEngine {
            model: Arc::new(model),
            isa: Isa::detect(),
        })
    }

    /// Every array of the built engine as stored (packed weights as float32, uint16 — bf16
    /// bits — or uint8 — block tiles — 1-D arrays; norms and biases float32), for `from_packed_state`.
    fn packed_state<'py>(&self, py: Python<'py>) -> NResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (name, data) in self.model.packed_state() {
            match data {
                Stored::F32(v) => out.set_item(name, PyArray1::from_slice(py, v))?,
                Stored::Bf16(v) => out.set_item(name, PyArray1::from_slice(py, v))?,
                Stored::Blocks(v) => out.set_item(name, PyArray1::from_slice(py, v))?,
            }
        }
        Ok(out)
    }

    /// The same weights, computing with another instruction set ("scalar" or "avx2-fma").
    /// Results are bit-identical; only speed differs.
    fn with_isa(&self, name: &str) -> NResult<PyEngine> {
        let isa = Isa::parse(name).ok_or_else(|| invalid(format!("unknown isa {name:?}")))?;
        if !isa.available() {
            return Err(invalid(format!(
                "isa {name:?} is not available on this machine"
            )));
        }
        Ok(PyEngine {
            model: self.model.clone(),
            isa,
        })
    }

    fn new_sequence(&self) -> PySequence {
        PySequence {
            seq: self.model.new_sequence(),
            layout: *self.model.kv_layout(),
        }
    }

    /// Appends `tokens[offsets[i]:offsets[i+1]]` to `seqs[i]` for every i in one batched
    /// pass and returns the requested logits rows (`"all"`, `"last"` or `"none"`),
    /// float32 `[rows, vocab]`. The GIL is released while it runs.
    #[pyo3(signature = (seqs, tokens, lengths, logits = "all"))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        seqs: &Bound<'py, PyList>,
        tokens: &Bound<'py, PyAny>,
        lengths: Vec<usize>,
        logits: &str,
    ) -> NResult<Bound<'py, PyArrayDyn<f32>>> {
        let sel = match logits {
            "all" => Logits::All,
            "last" => Logits::Last,
            "none" => Logits::None,
            other => {
                return Err(invalid(format!(
                    "logits must be 'all', 'last' or 'none', not {other:?}"
                )))
            }
        };
        if lengths.len() != seqs.len() {
            return Err(invalid("one length per sequence is required"));
        }
        let toks: Vec<u32> = read_tokens(tokens, "tokens")?;
        if lengths.iter().sum::<usize>() != toks.len() {
            return Err(invalid("lengths must sum to the number of tokens"));
        }
        let mut guards: Vec<PyRefMut<'py, PySequence>> = Vec::with_capacity(seqs.len());
        for item in seqs.iter() {
            let s = item
                .cast::<PySequence>()
                .map_err(|_| invalid("seqs must hold SequenceCore objects"))?;
            let g = s
                .try_borrow_mut()
                .map_err(|_| invalid("a sequence appears twice in one batch (or is in use)"))?;
            guards.push(g);
        }
        let mut pieces: Vec<&[u32]> = Vec::with_capacity(lengths.len());
        let mut at = 0;
        for &l in &lengths {
            pieces.push(&toks[at..at + l]);
            at += l;
        }
        let mut refs: Vec<&mut Sequence> = guards.iter_mut().map(|g| &mut g.seq).collect();
        let model = self.model.clone();
        let isa = self.isa;
        let out = py
            .detach(|| model.forward(isa, &mut refs, &pieces, sel))
            ?;
        let vocab = model.config().vocab_size;
        let rows = out.len() / vocab;
        Ok(PyArray1::from_vec(py, out).reshape(vec![rows, vocab])?)
    }

    /// RoPE (cos, sin) tables of the given positions, float32 `[n, head_dim / 2]` each:
    /// exactly the values the forward pass uses (for GPU ports of the engine).
    fn rope_table<'py>(&self, py: Python<'py>, positions: Vec<usize>) -> NResult<ArrayPair<'py>> {
        let half = self.model.config().head_dim / 2;
        let n = positions.len();
        let (cos, sin) = py.detach(|| {
            let mut cos = vec![0f32; n * half];
            let mut sin = vec![0f32; n * half];
            for (r, &p) in positions.iter().enumerate() {
                self.model.rope_row(
                    p,
                    &mut cos[r * half..(r + 1) * half],
                    &mut sin[r * half..(r + 1) * half],
                );
            }
            (cos, sin)
        });
        Ok((
            PyArray1::from_vec(py, cos).reshape(vec![n, half])?,
            PyArray1::from_vec(py, sin).reshape(vec![n, half])?,
        ))
    }

    #[getter]
    fn isa(&self) -> &'static str {
        self.isa.name()
    }
    #[getter]
    fn dtype(&self) -> &'static str {
        self.model.dtype().name()
    }
    #[getter]
    fn kv_dtype(&self) -> &'static str {
        self.model.kv_layout().dtype.name()
    }
    #[getter]
    fn page_tokens(&self) -> usize {
        self.model.kv_layout().page_tokens
    }
    #[getter]
    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }
    #[getter]
    fn num_layers(&self) -> usize {
        self.model.config().num_layers
    }
    /// The storage of every weight matrix and of the embedding table, by packed-state name
    /// (`"f32"`, `"bf16"`, `"q4_0"`, `"q4_1"`, `"q8_0"`).
    #[getter]
    fn weight_formats<'py>(&self, py: Python<'py>) -> NResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (name, f) in self.model.weight_formats() {
            out.set_item(name, f.name())?;
        }
        Ok(out)
    }
    /// Bytes of weights one decode step reads.
    #[getter]
    fn step_weight_bytes(&self) -> usize {
        self.model.step_weight_bytes()
    }
    /// Bytes of KV storage per cached position.
    #[getter]
    fn kv_bytes_per_token(&self) -> usize {
        self.model.kv_layout().bytes_per_token()
    }
    /// Largest number of rows one internal pass computes (results do not depend on it).
    #[getter]
    fn max_rows(&self) -> usize {
        self.model.max_rows
    }
}

#[pymethods]
impl PySequence {
    fn __len__(&self) -> usize {
        self.seq.len()
    }

    /// A new sequence holding the first `n` positions (default: all), sharing pages.
    #[pyo3(signature = (n = None))]
    fn fork(&self, n: Option<usize>) -> PySequence {
        let n = n.unwrap_or(self.seq.len());
        PySequence {
            seq: self.seq.fork(n, &self.layout),
            layout: self.layout,
        }
    }

    /// Forgets positions `n..`.
    fn truncate(&mut self, n: usize) {
        self.seq.truncate(n, &self.layout);
    }

    /// One layer's (keys, values) as float32 `[kv_heads, len, head_dim]` (keys after RoPE).
    fn export_layer<'py>(&self, py: Python<'py>, layer: usize) -> NResult<ArrayPair<'py>> {
        if layer >= self.layout.layers {
            return Err(invalid(format!(
                "layer {layer} out of range ({} layers)",
                self.layout.layers
            )));
        }
        let (k, v) = py.detach(|| self.seq.export_layer(&self.layout, layer));
        let shape = vec![self.layout.kv_heads, self.seq.len(), self.layout.head_dim];
        Ok((
            PyArray1::from_vec(py, k).reshape(shape.clone())?,
            PyArray1::from_vec(py, v).reshape(shape)?,
        ))
    }

    /// Number of KV pages, and how many of them are shared with other sequences.
    fn page_stats(&self) -> (usize, usize) {
        let pages = self.seq.pages();
        (
            pages.len(),
            pages.iter().filter(|p| Arc::strong_count(p) > 1).count(),
        )
    }
}

/// Streaming read bandwidth of this machine in bytes/s (all threads of the pool).
#[pyfunction]
#[pyo3(signature = (nbytes = 536870912, repeats = 5))]
fn engine_read_bandwidth(py: Python<'_>, nbytes: usize, repeats: usize) -> f64 {
    py.detach(|| seqkv_engine::probe::read_bandwidth(nbytes, repeats))
}

/// Peak f32 multiply-adds per second of this machine (all threads of the pool; see
/// `seqkv_engine::probe::fma_peak`).
#[pyfunction]
#[pyo3(signature = (iters = 20000000, repeats = 3))]
fn engine_fma_peak(py: Python<'_>, iters: usize, repeats: usize) -> f64 {
    py.detach(|| seqkv_engine::probe::fma_peak(iters, repeats))
}

/// The instruction set the engine picks on this machine.
#[pyfunction]
fn engine_isa() -> &'static str {
    Isa::detect().name()
}

/// Number of worker threads of the engine's pool.
#[pyfunction]
fn engine_threads() -> usize {
    seqkv_engine::probe::threads()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEngine>()?;
    m.add_class::<PySequence>()?;
    m.add_function(wrap_pyfunction!(engine_read_bandwidth, m)?)?;
    m.add_function(wrap_pyfunction!(engine_fma_peak, m)?)?;
    m.add_function(wrap_pyfunction!(engine_isa, m)?)?;
    m.add_function(wrap_pyfunction!(engine_threads, m)?)?;
    Ok(())
}

/// Names added after the split into submodules: only in `seqkv._native.engine`.
pub fn register_new(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("PACKED_STATE_VERSION", seqkv_engine::PACKED_STATE_VERSION)?;
    Ok(())
}
