//! Bindings of `seqkv-ppm`: the `plt` codec's integer context model.
//!
//! `PpmModel` holds a (possibly primed) model state behind a lock; `encode`, `decode`
//! and `cost_bits` work on a copy of it with the GIL released, so one primed model can
//! serve many threads. The container around the payloads is written in Python
//! (`seqkv.codecs.plt`).

use std::sync::RwLock;

use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use seqkv_ppm::{Model, Params};

use crate::convert::read_tokens;
use crate::errors::{invalid, NResult};



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
    fn new(py: Python<'_>, vocab_size: u32, order: u32) -> NResult<Self> {
        debug_assert_eq!(seqkv_ppm::DEFAULT_ORDER, 4, "keep the signature's default in step");
        let order = u8::try_from(order).map_err(|_| invalid(format!("order must be in 0..={}", seqkv_ppm::MAX_ORDER)))?;
        let params = Params::new(vocab_size, order)?;
        let model = py.detach(|| Model::with_params(&params))?;
        Ok(PyPpmModel { model: RwLock::new(model) })
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
    fn prime(&self, py: Python<'_>, tokens: &Bound<'_, PyAny>) -> NResult<()> {
        let t = &read_tokens(tokens, "tokens")?;
        Ok(py.detach(|| self.model.write().unwrap_or_else(|p| p.into_inner()).prime(t))?)
    }

    /// An independent copy of this model state.
    fn copy(&self, py: Python<'_>) -> PyPpmModel {
        PyPpmModel { model: RwLock::new(py.detach(|| self.snapshot())) }
    }

    /// Codes `tokens` from the current state (which is left unchanged): one payload per
    /// block of `block_tokens` tokens.
    #[pyo3(signature = (tokens, block_tokens = 65536))]
    fn encode<'py>(&self, py: Python<'py>, tokens: &Bound<'py, PyAny>, block_tokens: usize) -> NResult<Vec<Bound<'py, PyBytes>>> {
        let t = &read_tokens(tokens, "tokens")?;
        let payloads = py.detach(|| seqkv_ppm::encode(&self.snapshot(), t, block_tokens))?;
        Ok(payloads.iter().map(|p| PyBytes::new(py, p)).collect())
    }

    /// Decodes payloads written by `encode` from a model in this state; `counts[i]` is
    /// the number of tokens of payload `i`.
    fn decode<'py>(&self, py: Python<'py>, payloads: Vec<Vec<u8>>, counts: Vec<usize>) -> NResult<Bound<'py, PyArray1<u32>>> {
        if payloads.len() != counts.len() {
            return Err(invalid("payloads and counts differ in length"));
        }
        let out = py
            .detach(|| {
                let blocks: Vec<(&[u8], usize)> = payloads.iter().map(|p| p.as_slice()).zip(counts.iter().copied()).collect();
                seqkv_ppm::decode(&self.snapshot(), &blocks)
            })
            ?;
        Ok(PyArray1::from_vec(py, out))
    }

    /// The model's ideal code length of `tokens` in bits (Σ -log2 p), state unchanged.
    fn cost_bits(&self, py: Python<'_>, tokens: &Bound<'_, PyAny>) -> NResult<f64> {
        let t = &read_tokens(tokens, "tokens")?;
        Ok(py.detach(|| seqkv_ppm::cost_bits(&self.snapshot(), t))?)
    }

    fn __repr__(&self) -> String {
        self.with(|m| format!("PpmModel(vocab_size={}, order={}, seen_tokens={})", m.vocab(), m.order(), m.seen_tokens()))
    }
}

/// Parses the codec parameters of a `plt` stream: (profile, order, primer_tokens, primer_crc32c).
#[pyfunction]
fn ppm_parse_params(params: &[u8], vocab_size: u32) -> NResult<(u8, u8, u64, u32)> {
    let p = Params::from_bytes(params, vocab_size)?;
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
