//! Bindings of `seqkv-ppm`: the `plt` codec's integer context model.
//!
//! `PpmModel` holds a (possibly primed) model state behind a lock; `encode`, `decode`
//! and `cost_bits` work on a copy of it with the GIL released, so one primed model can
//! serve many threads. The container around the payloads is written in Python
//! (`seqkv.codecs.plt`).

use std::sync::RwLock;

use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use seqkv_ppm::{Error, Model, Params};

use crate::errors::{err, invalid, Kind};

fn map(e: Error) -> PyErr {
    match e {
        Error::InvalidInput(m) => err(Kind::InvalidInput, m),
        Error::CorruptStream(m) => err(Kind::CorruptStream, m),
        Error::Internal(m) => PyRuntimeError::new_err(m),
    }
}

fn as_slice<'a>(a: &'a PyReadonlyArray1<'_, u32>) -> PyResult<&'a [u32]> {
    a.as_slice().map_err(|_| invalid("tokens must be a C-contiguous uint32 array"))
}

/// A `plt` model state: vocabulary, order, and whatever it was primed with.
#[pyclass(name = "PpmModel", module = "seqkv._native", frozen)]
struct PyPpmModel {
    model: RwLock<Model>,
}

impl PyPpmModel {
    fn snapshot(&self) -> Model {
        self.model.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn with<R>(&self, f: impl FnOnce(&Model) -> R) -> R {
        f(&self.model.read().unwrap_or_else(|p| p.into_inner()))
    }
}

#[pymethods]
impl PyPpmModel {
    #[new]
    #[pyo3(signature = (vocab_size, order = 4))]
    fn new(vocab_size: u32, order: u32) -> PyResult<Self> {
        debug_assert_eq!(seqkv_ppm::DEFAULT_ORDER, 4, "keep the signature's default in step");
        let order = u8::try_from(order).map_err(|_| invalid(format!("order must be in 0..={}", seqkv_ppm::MAX_ORDER)))?;
        let params = Params::new(vocab_size, order).map_err(map)?;
        Ok(PyPpmModel { model: RwLock::new(Model::with_params(&params).map_err(map)?) })
    }

    #[getter]
    fn vocab_size(&self) -> u32 {
        self.with(|m| m.vocab())
    }

    #[getter]
    fn order(&self) -> usize {
        self.with(|m| m.order())
    }

    /// Tokens the model has seen (its primer).
    #[getter]
    fn seen_tokens(&self) -> u64 {
        self.with(|m| m.seen_tokens())
    }

    /// CRC-32C of the ids of the tokens seen (u32 little-endian).
    #[getter]
    fn history_crc32c(&self) -> u32 {
        self.with(|m| m.history_crc32c())
    }

    /// Distinct contexts stored.
    #[getter]
    fn contexts(&self) -> usize {
        self.with(|m| m.contexts())
    }

    /// The codec parameters a stream coded from the current state records.
    fn params<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.with(|m| m.params().to_bytes()))
    }

    /// Feeds shared tokens into the model without coding them.
    fn prime(&self, py: Python<'_>, tokens: PyReadonlyArray1<'_, u32>) -> PyResult<()> {
        let t = as_slice(&tokens)?;
        py.detach(|| self.model.write().unwrap_or_else(|p| p.into_inner()).prime(t)).map_err(map)
    }

    /// An independent copy of this model state.
    fn copy(&self) -> PyPpmModel {
        PyPpmModel { model: RwLock::new(self.snapshot()) }
    }

    /// Codes `tokens` from the current state (which is left unchanged): one payload per
    /// block of `block_tokens` tokens.
    #[pyo3(signature = (tokens, block_tokens = 65536))]
    fn encode<'py>(&self, py: Python<'py>, tokens: PyReadonlyArray1<'py, u32>, block_tokens: usize) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let t = as_slice(&tokens)?;
        let payloads = py.detach(|| seqkv_ppm::encode(&self.snapshot(), t, block_tokens)).map_err(map)?;
        Ok(payloads.iter().map(|p| PyBytes::new(py, p)).collect())
    }

    /// Decodes payloads written by `encode` from a model in this state; `counts[i]` is
    /// the number of tokens of payload `i`.
    fn decode<'py>(&self, py: Python<'py>, payloads: Vec<Vec<u8>>, counts: Vec<usize>) -> PyResult<Bound<'py, PyArray1<u32>>> {
        if payloads.len() != counts.len() {
            return Err(invalid("payloads and counts differ in length"));
        }
        let out = py
            .detach(|| {
                let blocks: Vec<(&[u8], usize)> = payloads.iter().map(|p| p.as_slice()).zip(counts.iter().copied()).collect();
                seqkv_ppm::decode(&self.snapshot(), &blocks)
            })
            .map_err(map)?;
        Ok(PyArray1::from_vec(py, out))
    }

    /// The model's ideal code length of `tokens` in bits (Σ -log2 p), state unchanged.
    fn cost_bits(&self, py: Python<'_>, tokens: PyReadonlyArray1<'_, u32>) -> PyResult<f64> {
        let t = as_slice(&tokens)?;
        py.detach(|| seqkv_ppm::cost_bits(&self.snapshot(), t)).map_err(map)
    }

    fn __repr__(&self) -> String {
        self.with(|m| format!("PpmModel(vocab_size={}, order={}, seen_tokens={})", m.vocab(), m.order(), m.seen_tokens()))
    }
}

/// Parses the codec parameters of a `plt` stream: (profile, order, primer_tokens, primer_crc32c).
#[pyfunction]
fn ppm_parse_params(params: &[u8], vocab_size: u32) -> PyResult<(u8, u8, u64, u32)> {
    let p = Params::from_bytes(params, vocab_size).map_err(map)?;
    Ok((p.profile, p.order, p.primer_tokens, p.primer_crc32c))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("PPM_DEFAULT_ORDER", seqkv_ppm::DEFAULT_ORDER)?;
    m.add("PPM_MAX_ORDER", seqkv_ppm::MAX_ORDER)?;
    m.add("PPM_PROFILES", seqkv_ppm::PROFILES.iter().map(|&p| p as u32).collect::<Vec<u32>>())?;
    m.add_class::<PyPpmModel>()?;
    m.add_function(wrap_pyfunction!(ppm_parse_params, m)?)?;
    Ok(())
}
