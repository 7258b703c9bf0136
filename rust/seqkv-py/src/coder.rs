//! Bindings of `seqkv-coder`: range coding, quantizer v1, adaptive model, CRC-32C, container.
//!
//! Array arguments arrive with their final dtype and C-contiguous (the Python wrappers in
//! `seqkv.coder` / `seqkv.container` convert once); they are read in place, and the work runs with
//! the GIL released.

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use seqkv_coder::adaptive::{self, AdaptiveModel};
use seqkv_coder::container::{self, Block, Codec, Header};
use seqkv_coder::quantize::{self, LogitsRowModel, Path};
use seqkv_coder::range;
use seqkv_coder::table::{self, row_range, TableRow};
use seqkv_coder::{crc32c as crc, Error};

use crate::errors::{err, invalid, Kind};

/// Maps a core error onto the seqkv exception of the same name.
fn map(e: Error) -> PyErr {
    match e {
        Error::InvalidInput(m) => err(Kind::InvalidInput, m),
        Error::CorruptStream(m) => err(Kind::CorruptStream, m),
        Error::FormatVersion(m) => err(Kind::FormatVersion, m),
    }
}

fn slice1<'a, T: numpy::Element>(a: &'a PyReadonlyArray1<'_, T>, what: &str) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| invalid(format!("{what} must be C-contiguous")))
}

fn slice2<'a, T: numpy::Element>(a: &'a PyReadonlyArray2<'_, T>, what: &str) -> PyResult<(&'a [T], usize, usize)> {
    let [n, v] = [a.shape()[0], a.shape()[1]];
    Ok((a.as_slice().map_err(|_| invalid(format!("{what} must be C-contiguous")))?, n, v))
}

/// Symbols as u32, each checked to be in `0..v`.
fn symbols_u32(symbols: &[i64], v: usize) -> PyResult<Vec<u32>> {
    symbols
        .iter()
        .map(|&s| {
            if s < 0 || s as u64 >= v as u64 {
                Err(invalid(format!("symbol {s} out of range 0..{v}")))
            } else {
                Ok(s as u32)
            }
        })
        .collect()
}

fn symbols_array<'py>(py: Python<'py>, symbols: Vec<u32>) -> Bound<'py, PyArray1<i64>> {
    PyArray1::from_vec(py, symbols.into_iter().map(i64::from).collect())
}

/// Quantizer v1 over the rows of a 2-D float32 array; returns uint32 tables.
#[pyfunction]
fn quantize_logits<'py>(py: Python<'py>, logits: PyReadonlyArray2<'py, f32>, precision: u32) -> PyResult<Bound<'py, PyArray2<u32>>> {
    let (x, n, v) = slice2(&logits, "logits")?;
    quantize::check_shape(v, precision).map_err(map)?;
    // SAFETY: every element is written by quantize_rows before the array is returned; on error
    // the array is dropped unread.
    let out = unsafe { PyArray2::<u32>::new(py, [n, v], false) };
    {
        let mut rw = out.readwrite();
        let o = rw.as_slice_mut().map_err(|_| invalid("output not contiguous"))?;
        py.detach(|| quantize::quantize_rows(x, v, precision, o)).map_err(map)?;
    }
    Ok(out)
}

/// One row through a chosen implementation ("scalar" or "avx2"; falls back to scalar).
#[pyfunction]
fn quantize_row_path<'py>(py: Python<'py>, logits: PyReadonlyArray1<'py, f32>, precision: u32, path: &str) -> PyResult<Bound<'py, PyArray1<u32>>> {
    let x = slice1(&logits, "logits")?;
    let path = match path {
        "scalar" => Path::Scalar,
        "avx2" => Path::Avx2,
        _ => return Err(invalid(format!("unknown path {path:?}"))),
    };
    let mut out = vec![0u32; x.len()];
    py.detach(|| quantize::quantize_row_with(x, precision, &mut out, path)).map_err(map)?;
    Ok(PyArray1::from_vec(py, out))
}

/// Whether the AVX2 path runs on this CPU.
#[pyfunction]
fn has_avx2() -> bool {
    Path::Avx2.is_available()
}

/// The quantizer's EXP2 table.
#[pyfunction]
fn exp2_table() -> Vec<u32> {
    seqkv_coder::exp2_table::EXP2.to_vec()
}

#[pyfunction]
fn encode_static<'py>(py: Python<'py>, symbols: PyReadonlyArray1<'py, i64>, freqs: PyReadonlyArray1<'py, u32>, precision: u32) -> PyResult<Bound<'py, PyBytes>> {
    let f = slice1(&freqs, "freqs")?;
    let s = symbols_u32(slice1(&symbols, "symbols")?, f.len())?;
    let bytes = py.detach(|| table::encode_static(&s, f, precision)).map_err(map)?;
    Ok(PyBytes::new(py, &bytes))
}

#[pyfunction]
fn decode_static<'py>(py: Python<'py>, data: &[u8], freqs: PyReadonlyArray1<'py, u32>, n: usize, precision: u32) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let f = slice1(&freqs, "freqs")?;
    let out = py.detach(|| table::decode_static(data, f, n, precision)).map_err(map)?;
    Ok(symbols_array(py, out))
}

#[pyfunction]
fn encode_tables<'py>(py: Python<'py>, symbols: PyReadonlyArray1<'py, i64>, freqs: PyReadonlyArray2<'py, u32>, precision: u32) -> PyResult<Bound<'py, PyBytes>> {
    let (f, _, v) = slice2(&freqs, "freqs")?;
    let s = symbols_u32(slice1(&symbols, "symbols")?, v)?;
    let bytes = py.detach(|| table::encode_rows(&s, f, v, precision)).map_err(map)?;
    Ok(PyBytes::new(py, &bytes))
}

#[pyfunction]
fn decode_tables<'py>(py: Python<'py>, data: &[u8], freqs: PyReadonlyArray2<'py, u32>, precision: u32) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let (f, _, v) = slice2(&freqs, "freqs")?;
    let out = py.detach(|| table::decode_rows(data, f, v, precision)).map_err(map)?;
    Ok(symbols_array(py, out))
}

#[pyfunction]
fn encode_logits<'py>(py: Python<'py>, symbols: PyReadonlyArray1<'py, i64>, logits: PyReadonlyArray2<'py, f32>, precision: u32) -> PyResult<Bound<'py, PyBytes>> {
    let (x, _, v) = slice2(&logits, "logits")?;
    let s = symbols_u32(slice1(&symbols, "symbols")?, v)?;
    let bytes = py.detach(|| quantize::encode_logits(&s, x, v, precision)).map_err(map)?;
    Ok(PyBytes::new(py, &bytes))
}

#[pyfunction]
fn decode_logits<'py>(py: Python<'py>, data: &[u8], logits: PyReadonlyArray2<'py, f32>, precision: u32) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let (x, _, v) = slice2(&logits, "logits")?;
    let out = py.detach(|| quantize::decode_logits(data, x, v, precision)).map_err(map)?;
    Ok(symbols_array(py, out))
}

#[pyfunction]
fn encode_adaptive<'py>(py: Python<'py>, symbols: PyReadonlyArray1<'py, i64>, n_symbols: usize, increment: u32, limit: u32) -> PyResult<Bound<'py, PyBytes>> {
    let s = symbols_u32(slice1(&symbols, "symbols")?, n_symbols)?;
    let bytes = py.detach(|| adaptive::encode_symbols(&s, n_symbols, increment, limit)).map_err(map)?;
    Ok(PyBytes::new(py, &bytes))
}

#[pyfunction]
fn decode_adaptive<'py>(py: Python<'py>, data: &[u8], n_symbols: usize, n: usize, increment: u32, limit: u32) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let out = py.detach(|| adaptive::decode_symbols(data, n_symbols, n, increment, limit)).map_err(map)?;
    Ok(symbols_array(py, out))
}

#[pyfunction]
#[pyo3(signature = (data, value = 0))]
fn crc32c(py: Python<'_>, data: &[u8], value: u32) -> u32 {
    py.detach(|| crc::crc32c_append(value, data))
}

#[pyfunction]
fn tokens_crc32c(py: Python<'_>, tokens: PyReadonlyArray1<'_, i64>) -> PyResult<u32> {
    let t = slice1(&tokens, "tokens")?;
    let t = symbols_u32(t, 1 << 32)?;
    Ok(py.detach(|| crc::tokens_crc32c(&t)))
}

#[pyfunction]
fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    crc::crc32c_combine(crc_a, crc_b, len_b)
}

/// Streaming encoder: one table (or logits row) per symbol.
#[pyclass(name = "Encoder", module = "seqkv._native")]
struct PyEncoder {
    enc: Option<range::Encoder>,
    model: LogitsRowModel,
}

impl PyEncoder {
    fn enc(&mut self) -> PyResult<&mut range::Encoder> {
        self.enc.as_mut().ok_or_else(|| invalid("Encoder.finish() was already called"))
    }
}

#[pymethods]
impl PyEncoder {
    #[new]
    fn new(precision: u32) -> PyResult<Self> {
        Ok(PyEncoder { enc: Some(range::Encoder::new(precision).map_err(map)?), model: LogitsRowModel::new() })
    }

    #[getter]
    fn precision(&self) -> u32 {
        self.enc.as_ref().map_or(0, |e| e.precision())
    }

    /// Symbols pushed so far.
    fn __len__(&self) -> usize {
        self.enc.as_ref().map_or(0, |e| e.num_symbols() as usize)
    }

    fn push(&mut self, py: Python<'_>, symbol: i64, freqs_row: PyReadonlyArray1<'_, u32>) -> PyResult<()> {
        let row = slice1(&freqs_row, "freqs_row")?;
        let s = symbols_u32(&[symbol], row.len())?[0] as usize;
        let enc = self.enc()?;
        let p = enc.precision();
        let (c, f) = if row.len() > 4096 {
            py.detach(|| row_range(row, s, p))
        } else {
            row_range(row, s, p)
        }
        .map_err(map)?;
        enc.encode(c, f).map_err(map)
    }

    fn push_logits(&mut self, py: Python<'_>, symbol: i64, logits_row: PyReadonlyArray1<'_, f32>) -> PyResult<()> {
        let x = slice1(&logits_row, "logits_row")?;
        let s = symbols_u32(&[symbol], x.len())?[0] as usize;
        let PyEncoder { enc, model } = self;
        let enc = enc.as_mut().ok_or_else(|| invalid("Encoder.finish() was already called"))?;
        py.detach(|| model.encode(enc, x, s)).map_err(map)
    }

    /// Codes a symbol of a table summing to `total` given as a slice (for custom models).
    fn push_slice(&mut self, cum_low: u32, freq: u32, total: u32) -> PyResult<()> {
        self.enc()?.encode_with_total(cum_low, freq, total).map_err(map)
    }

    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let enc = self.enc.take().ok_or_else(|| invalid("Encoder.finish() was already called"))?;
        Ok(PyBytes::new(py, &enc.finish_bytes()))
    }
}

/// Streaming decoder mirroring [`PyEncoder`].
#[pyclass(name = "Decoder", module = "seqkv._native")]
struct PyDecoder {
    dec: range::Decoder,
    model: LogitsRowModel,
    row: TableRow,
}

#[pymethods]
impl PyDecoder {
    #[new]
    fn new(data: &[u8], precision: u32) -> PyResult<Self> {
        Ok(PyDecoder {
            dec: range::Decoder::from_bytes(data, precision).map_err(map)?,
            model: LogitsRowModel::new(),
            row: TableRow::default(),
        })
    }

    #[getter]
    fn precision(&self) -> u32 {
        self.dec.precision()
    }

    fn pop(&mut self, py: Python<'_>, freqs_row: PyReadonlyArray1<'_, u32>) -> PyResult<i64> {
        let row = slice1(&freqs_row, "freqs_row")?;
        let PyDecoder { dec, row: stats, .. } = self;
        let p = dec.precision();
        let mut work = || -> Result<usize, Error> {
            stats.compute(row, p)?;
            let (s, c, f) = stats.find(row, dec.target()?);
            dec.advance(c, f)?;
            Ok(s)
        };
        let s = if row.len() > 4096 { py.detach(work) } else { work() };
        Ok(s.map_err(map)? as i64)
    }

    fn pop_logits(&mut self, py: Python<'_>, logits_row: PyReadonlyArray1<'_, f32>) -> PyResult<i64> {
        let x = slice1(&logits_row, "logits_row")?;
        let PyDecoder { dec, model, .. } = self;
        Ok(py.detach(|| model.decode(dec, x)).map_err(map)? as i64)
    }

    /// Decodes a symbol of a table summing to `total`: returns the target, then call
    /// `advance(cum_low, freq)` with the slice of the symbol containing it.
    fn target_with_total(&mut self, total: u32) -> PyResult<u32> {
        self.dec.target_with_total(total).map_err(map)
    }

    fn advance(&mut self, cum_low: u32, freq: u32) -> PyResult<()> {
        self.dec.advance(cum_low, freq).map_err(map)
    }

    /// Raises CorruptStreamError if the stream has data after the symbols decoded so far.
    fn finish(&self) -> PyResult<()> {
        self.dec.finish().map_err(map)
    }
}

/// Adaptive frequency model (Fenwick tree) for custom Python-side coding.
#[pyclass(name = "AdaptiveModel", module = "seqkv._native")]
struct PyAdaptiveModel {
    model: AdaptiveModel,
}

#[pymethods]
impl PyAdaptiveModel {
    #[new]
    fn new(n_symbols: usize, increment: u32, limit: u32) -> PyResult<Self> {
        Ok(PyAdaptiveModel { model: AdaptiveModel::with_params(n_symbols, increment, limit).map_err(map)? })
    }

    fn __len__(&self) -> usize {
        self.model.len()
    }

    #[getter]
    fn total(&self) -> u32 {
        self.model.total()
    }

    fn cdf(&self, symbol: usize) -> u32 {
        self.model.cdf(symbol)
    }

    fn freq(&self, symbol: usize) -> u32 {
        self.model.freq(symbol)
    }

    fn find(&self, target: u32) -> PyResult<(usize, u32, u32)> {
        if target >= self.model.total() {
            return Err(invalid(format!("target {target} >= total {}", self.model.total())));
        }
        Ok(self.model.find(target))
    }

    fn update(&mut self, symbol: usize) {
        self.model.update(symbol)
    }

    fn encode(&mut self, encoder: &mut PyEncoder, symbol: usize) -> PyResult<()> {
        let enc = encoder.enc()?;
        self.model.encode(enc, symbol).map_err(map)
    }

    fn decode(&mut self, decoder: &mut PyDecoder) -> PyResult<usize> {
        self.model.decode(&mut decoder.dec).map_err(map)
    }
}

type HeaderTuple = (String, u8, u8, u64, u32, Vec<u8>, String, Vec<u32>, Vec<u8>);

/// Packs a container: header fields as a tuple (codec, quantizer_version, precision, token_count,
/// vocab_size, model_fingerprint, numerics_profile, schedule, params) and blocks as
/// (n_tokens, payload, tokens_crc32c) tuples.
#[pyfunction]
fn container_pack<'py>(py: Python<'py>, header: HeaderTuple, blocks: Vec<(u32, Vec<u8>, u32)>) -> PyResult<Bound<'py, PyBytes>> {
    let (codec, quantizer_version, precision, token_count, vocab_size, model_fingerprint, numerics_profile, schedule, params) = header;
    let codec = Codec::from_name(&codec).ok_or_else(|| invalid(format!("unknown codec {codec:?}")))?;
    let header = Header {
        codec,
        quantizer_version,
        precision,
        token_count,
        vocab_size,
        model_fingerprint,
        numerics_profile,
        schedule,
        params,
    };
    let blocks: Vec<Block> =
        blocks.into_iter().map(|(n_tokens, payload, tokens_crc32c)| Block { n_tokens, payload, tokens_crc32c }).collect();
    let data = py.detach(|| container::pack(&header, &blocks)).map_err(map)?;
    Ok(PyBytes::new(py, &data))
}

/// Unpacks a container into (header tuple, list of block tuples, tokens_crc32c).
#[pyfunction]
fn container_unpack<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyTuple>> {
    let c = py.detach(|| container::unpack(data)).map_err(map)?;
    let h = c.header;
    let header = (
        h.codec.name(),
        h.quantizer_version,
        h.precision,
        h.token_count,
        h.vocab_size,
        PyBytes::new(py, &h.model_fingerprint),
        h.numerics_profile,
        PyTuple::new(py, h.schedule)?,
        PyBytes::new(py, &h.params),
    )
        .into_pyobject(py)?;
    let blocks = PyList::empty(py);
    for b in &c.blocks {
        blocks.append((b.n_tokens, PyBytes::new(py, &b.payload), b.tokens_crc32c))?;
    }
    PyTuple::new(py, [header.into_any(), blocks.into_any(), c.tokens_crc32c.into_pyobject(py)?.into_any()])
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("QUANTIZER_VERSION", quantize::QUANTIZER_VERSION)?;
    m.add("MAX_PRECISION", range::MAX_PRECISION)?;
    m.add("CONTAINER_FORMAT_VERSION", container::FORMAT_VERSION)?;
    m.add("ADAPTIVE_DEFAULT_INCREMENT", adaptive::DEFAULT_INCREMENT)?;
    m.add("ADAPTIVE_DEFAULT_LIMIT", adaptive::DEFAULT_LIMIT)?;
    m.add_function(wrap_pyfunction!(quantize_logits, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_row_path, m)?)?;
    m.add_function(wrap_pyfunction!(has_avx2, m)?)?;
    m.add_function(wrap_pyfunction!(exp2_table, m)?)?;
    m.add_function(wrap_pyfunction!(encode_static, m)?)?;
    m.add_function(wrap_pyfunction!(decode_static, m)?)?;
    m.add_function(wrap_pyfunction!(encode_tables, m)?)?;
    m.add_function(wrap_pyfunction!(decode_tables, m)?)?;
    m.add_function(wrap_pyfunction!(encode_logits, m)?)?;
    m.add_function(wrap_pyfunction!(decode_logits, m)?)?;
    m.add_function(wrap_pyfunction!(encode_adaptive, m)?)?;
    m.add_function(wrap_pyfunction!(decode_adaptive, m)?)?;
    m.add_function(wrap_pyfunction!(crc32c, m)?)?;
    m.add_function(wrap_pyfunction!(tokens_crc32c, m)?)?;
    m.add_function(wrap_pyfunction!(crc32c_combine, m)?)?;
    m.add_function(wrap_pyfunction!(container_pack, m)?)?;
    m.add_function(wrap_pyfunction!(container_unpack, m)?)?;
    m.add_class::<PyEncoder>()?;
    m.add_class::<PyDecoder>()?;
    m.add_class::<PyAdaptiveModel>()?;
    Ok(())
}
