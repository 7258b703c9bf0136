//! Bindings of `seqkv-coder`: range coding, quantizer v1, adaptive model, CRC-32C, container.
//!
//! Array arguments arrive with their final dtype and C-contiguous (the Python wrappers in
//! `seqkv.coder` / `seqkv.container` convert once); they are read in place, and the work runs with
//! the GIL released.

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use seqkv_coder::adaptive::{self, AdaptiveModel};
use seqkv_coder::bits::BitOrder;
use seqkv_coder::container::{self, Block, Codec, Header};
use seqkv_coder::quantize::{self, LogitsRowModel, Path};
use seqkv_coder::range;
use seqkv_coder::table::{self, row_range, TableRow};
use seqkv_coder::{crc32c as crc, Error};

use crate::convert::{read_symbols, read_tokens, slice1, slice2, tokens_array};
use crate::errors::{invalid, NResult};

/// A single symbol checked to be in `0..v`.
fn check_symbol(symbol: i64, v: usize) -> NResult<usize> {
    if symbol < 0 || symbol as u64 >= v as u64 {
        return Err(invalid(format!("symbol {symbol} out of range 0..{v}")));
    }
    Ok(symbol as usize)
}

/// Quantizer v1 over the rows of a 2-D float32 array; returns uint32 tables.
#[pyfunction]
fn quantize_logits<'py>(py: Python<'py>, logits: PyReadonlyArray2<'py, f32>, precision: u32) -> NResult<Bound<'py, PyArray2<u32>>> {
    let (x, n, v) = slice2(&logits, "logits")?;
    quantize::check_shape(v, precision)?;
    // SAFETY: every element is written by quantize_rows before the array is returned; on error
    // the array is dropped unread.
    let out = unsafe { PyArray2::<u32>::new(py, [n, v], false) };
    {
        let mut rw = out.readwrite();
        let o = rw.as_slice_mut().map_err(|_| invalid("output not contiguous"))?;
        py.detach(|| quantize::quantize_rows(x, v, precision, o))?;
    }
    Ok(out)
}

/// One row through a chosen implementation ("scalar" or "avx2"; falls back to scalar).
#[pyfunction]
fn quantize_row_path<'py>(py: Python<'py>, logits: PyReadonlyArray1<'py, f32>, precision: u32, path: &str) -> NResult<Bound<'py, PyArray1<u32>>> {
    let x = slice1(&logits, "logits")?;
    let path = match path {
        "scalar" => Path::Scalar,
        "avx2" => Path::Avx2,
        _ => return Err(invalid(format!("unknown path {path:?}"))),
    };
    let mut out = vec![0u32; x.len()];
    py.detach(|| quantize::quantize_row_with(x, precision, &mut out, path))?;
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
fn encode_static<'py>(py: Python<'py>, symbols: &Bound<'py, PyAny>, freqs: PyReadonlyArray1<'py, u32>, precision: u32) -> NResult<Bound<'py, PyBytes>> {
    let f = slice1(&freqs, "freqs")?;
    let s = read_symbols(symbols, "symbols", f.len())?;
    let bytes = py.detach(|| table::encode_static(&s, f, precision))?;
    Ok(PyBytes::new(py, &bytes))
}

#[pyfunction]
fn decode_static<'py>(py: Python<'py>, data: &[u8], freqs: PyReadonlyArray1<'py, u32>, n: usize, precision: u32) -> NResult<Bound<'py, PyArray1<u32>>> {
    let f = slice1(&freqs, "freqs")?;
    let out = py.detach(|| table::decode_static(data, f, n, precision))?;
    Ok(tokens_array(py, out))
}

#[pyfunction]
fn encode_tables<'py>(py: Python<'py>, symbols: &Bound<'py, PyAny>, freqs: PyReadonlyArray2<'py, u32>, precision: u32) -> NResult<Bound<'py, PyBytes>> {
    let (f, _, v) = slice2(&freqs, "freqs")?;
    let s = read_symbols(symbols, "symbols", v)?;
    let bytes = py.detach(|| table::encode_rows(&s, f, v, precision))?;
    Ok(PyBytes::new(py, &bytes))
}

#[pyfunction]
fn decode_tables<'py>(py: Python<'py>, data: &[u8], freqs: PyReadonlyArray2<'py, u32>, precision: u32) -> NResult<Bound<'py, PyArray1<u32>>> {
    let (f, _, v) = slice2(&freqs, "freqs")?;
    let out = py.detach(|| table::decode_rows(data, f, v, precision))?;
    Ok(tokens_array(py, out))
}

#[pyfunction]
fn encode_logits<'py>(py: Python<'py>, symbols: &Bound<'py, PyAny>, logits: PyReadonlyArray2<'py, f32>, precision: u32) -> NResult<Bound<'py, PyBytes>> {
    let (x, _, v) = slice2(&logits, "logits")?;
    let s = read_symbols(symbols, "symbols", v)?;
    let bytes = py.detach(|| quantize::encode_logits(&s, x, v, precision))?;
    Ok(PyBytes::new(py, &bytes))
}

#[pyfunction]
fn decode_logits<'py>(py: Python<'py>, data: &[u8], logits: PyReadonlyArray2<'py, f32>, precision: u32) -> NResult<Bound<'py, PyArray1<u32>>> {
    let (x, _, v) = slice2(&logits, "logits")?;
    let out = py.detach(|| quantize::decode_logits(data, x, v, precision))?;
    Ok(tokens_array(py, out))
}

#[pyfunction]
fn encode_adaptive<'py>(py: Python<'py>, symbols: &Bound<'py, PyAny>, n_symbols: usize, increment: u32, limit: u32) -> NResult<Bound<'py, PyBytes>> {
    let s = read_symbols(symbols, "symbols", n_symbols)?;
    let bytes = py.detach(|| adaptive::encode_symbols(&s, n_symbols, increment, limit))?;
    Ok(PyBytes::new(py, &bytes))
}

#[pyfunction]
fn decode_adaptive<'py>(py: Python<'py>, data: &[u8], n_symbols: usize, n: usize, increment: u32, limit: u32) -> NResult<Bound<'py, PyArray1<u32>>> {
    let out = py.detach(|| adaptive::decode_symbols(data, n_symbols, n, increment, limit))?;
    Ok(tokens_array(py, out))
}

#[pyfunction]
#[pyo3(signature = (data, value = 0))]
fn crc32c(py: Python<'_>, data: &[u8], value: u32) -> u32 {
    py.detach(|| crc::crc32c_append(value, data))
}

#[pyfunction]
fn tokens_crc32c(py: Python<'_>, tokens: &Bound<'_, PyAny>) -> NResult<u32> {
    let t = read_tokens(tokens, "tokens")?;
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
    fn enc(&mut self) -> NResult<&mut range::Encoder> {
        self.enc.as_mut().ok_or_else(|| invalid("Encoder.finish() was already called"))
    }
}

#[pymethods]
impl PyEncoder {
    #[new]
    fn new(precision: u32) -> NResult<Self> {
        Ok(PyEncoder { enc: Some(range::Encoder::new(precision)?), model: LogitsRowModel::new() })
    }

    #[getter]
    fn precision(&self) -> u32 {
        self.enc.as_ref().map_or(0, |e| e.precision())
    }

    /// Symbols pushed so far.
    fn __len__(&self) -> usize {
        self.enc.as_ref().map_or(0, |e| e.num_symbols() as usize)
    }

    fn push(&mut self, py: Python<'_>, symbol: i64, freqs_row: PyReadonlyArray1<'_, u32>) -> NResult<()> {
        let row = slice1(&freqs_row, "freqs_row")?;
        let s = check_symbol(symbol, row.len())?;
        let enc = self.enc()?;
        let p = enc.precision();
        let (c, f) = if row.len() > 4096 {
            py.detach(|| row_range(row, s, p))
        } else {
            row_range(row, s, p)
        }
        ?;
        Ok(enc.encode(c, f)?)
    }

    fn push_logits(&mut self, py: Python<'_>, symbol: i64, logits_row: PyReadonlyArray1<'_, f32>) -> NResult<()> {
        let x = slice1(&logits_row, "logits_row")?;
        let s = check_symbol(symbol, x.len())?;
        let PyEncoder { enc, model } = self;
        let enc = enc.as_mut().ok_or_else(|| invalid("Encoder.finish() was already called"))?;
        Ok(py.detach(|| model.encode(enc, x, s))?)
    }

    /// Codes a symbol of a table summing to `total` given as a slice (for custom models).
    fn push_slice(&mut self, cum_low: u32, freq: u32, total: u32) -> NResult<()> {
        Ok(self.enc()?.encode_with_total(cum_low, freq, total)?)
    }

    fn finish<'py>(&mut self, py: Python<'py>) -> NResult<Bound<'py, PyBytes>> {
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
    fn new(data: &[u8], precision: u32) -> NResult<Self> {
        Ok(PyDecoder {
            dec: range::Decoder::from_bytes(data, precision)?,
            model: LogitsRowModel::new(),
            row: TableRow::default(),
        })
    }

    #[getter]
    fn precision(&self) -> u32 {
        self.dec.precision()
    }

    fn pop(&mut self, py: Python<'_>, freqs_row: PyReadonlyArray1<'_, u32>) -> NResult<i64> {
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
        Ok(s? as i64)
    }

    fn pop_logits(&mut self, py: Python<'_>, logits_row: PyReadonlyArray1<'_, f32>) -> NResult<i64> {
        let x = slice1(&logits_row, "logits_row")?;
        let PyDecoder { dec, model, .. } = self;
        Ok(py.detach(|| model.decode(dec, x))? as i64)
    }

    /// Decodes a symbol of a table summing to `total`: returns the target, then call
    /// `advance(cum_low, freq)` with the slice of the symbol containing it.
    fn target_with_total(&mut self, total: u32) -> NResult<u32> {
        Ok(self.dec.target_with_total(total)?)
    }

    fn advance(&mut self, cum_low: u32, freq: u32) -> NResult<()> {
        Ok(self.dec.advance(cum_low, freq)?)
    }

    /// Raises CorruptStreamError if the stream has data after the symbols decoded so far.
    fn finish(&self) -> NResult<()> {
        Ok(self.dec.finish()?)
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
    fn new(n_symbols: usize, increment: u32, limit: u32) -> NResult<Self> {
        Ok(PyAdaptiveModel { model: AdaptiveModel::with_params(n_symbols, increment, limit)? })
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

    fn find(&self, target: u32) -> NResult<(usize, u32, u32)> {
        if target >= self.model.total() {
            return Err(invalid(format!("target {target} >= total {}", self.model.total())));
        }
        Ok(self.model.find(target))
    }

    fn update(&mut self, symbol: usize) {
        self.model.update(symbol)
    }

    fn encode(&mut self, encoder: &mut PyEncoder, symbol: usize) -> NResult<()> {
        let enc = encoder.enc()?;
        Ok(self.model.encode(enc, symbol)?)
    }

    fn decode(&mut self, decoder: &mut PyDecoder) -> NResult<usize> {
        Ok(self.model.decode(&mut decoder.dec)?)
    }
}

type HeaderTuple = (String, u8, u8, u64, u32, Vec<u8>, String, Vec<u32>, Vec<u8>);

/// Packs a container: header fields as a tuple (codec, quantizer_version, precision, token_count,
/// vocab_size, model_fingerprint, numerics_profile, schedule, params) and blocks as
/// (n_tokens, payload, tokens_crc32c) tuples.
#[pyfunction]
fn container_pack<'py>(py: Python<'py>, header: HeaderTuple, blocks: Vec<(u32, Vec<u8>, u32)>) -> NResult<Bound<'py, PyBytes>> {
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
    let data = py.detach(|| container::pack(&header, &blocks))?;
    Ok(PyBytes::new(py, &data))
}

/// Unpacks a container into (header tuple, list of block tuples, tokens_crc32c).
#[pyfunction]
fn container_unpack<'py>(py: Python<'py>, data: &[u8]) -> NResult<Bound<'py, PyTuple>> {
    let c = py.detach(|| container::unpack(data))?;
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
    Ok(PyTuple::new(py, [header.into_any(), blocks.into_any(), c.tokens_crc32c.into_pyobject(py)?.into_any()])?)
}

// ----- typed container API (`seqkv._native.coder`) -------------------------------------------

/// An integer argument checked to be in `lo..=hi` (bools refused), as InvalidInputError.
fn int_in(obj: &Bound<'_, PyAny>, name: &str, lo: u64, hi: u64) -> NResult<u64> {
    if obj.is_instance_of::<pyo3::types::PyBool>() || !obj.hasattr("__index__")? {
        return Err(invalid(format!("{name} must be an int, got {}", crate::convert::type_name(obj))));
    }
    let not_an_int = || invalid(format!("{name} must be an int, got {}", crate::convert::type_name(obj)));
    // `__index__` of a NumPy array of several elements raises TypeError: still a bad argument.
    let v: i128 = obj.call_method0("__index__").map_err(|_| not_an_int())?.extract().map_err(|_| not_an_int())?;
    if v < lo as i128 || v > hi as i128 {
        return Err(invalid(format!("{name} = {v} outside {lo}..={hi}")));
    }
    Ok(v as u64)
}

/// Bytes from `bytes`, `bytearray` or `memoryview`.
fn bytes_arg(obj: &Bound<'_, PyAny>, name: &str) -> NResult<Vec<u8>> {
    if obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<pyo3::types::PyByteArray>() || obj.is_instance_of::<pyo3::types::PyMemoryView>() {
        return crate::convert::read_bytes(obj, name);
    }
    Err(invalid(format!("{name} must be bytes")))
}

/// The container header (`docs/format.md`): the one definition, in `seqkv-coder`. Fields are
/// checked when the header is built (types and integer ranges) and when it is packed (the
/// format's limits).
#[pyclass(frozen, eq, hash, name = "Header", module = "seqkv._native.coder")]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PyHeader {
    inner: HeaderKey,
}

/// `container::Header` with `Eq + Hash` for Python's `__eq__`/`__hash__`.
#[derive(Clone, PartialEq, Eq, Hash)]
struct HeaderKey {
    codec: u8,
    quantizer_version: u8,
    precision: u8,
    token_count: u64,
    vocab_size: u32,
    model_fingerprint: Vec<u8>,
    numerics_profile: String,
    schedule: Vec<u32>,
    params: Vec<u8>,
}

impl PyHeader {
    fn to_core(&self) -> Header {
        let h = &self.inner;
        Header {
            codec: Codec::from_id(h.codec).expect("checked at construction"),
            quantizer_version: h.quantizer_version,
            precision: h.precision,
            token_count: h.token_count,
            vocab_size: h.vocab_size,
            model_fingerprint: h.model_fingerprint.clone(),
            numerics_profile: h.numerics_profile.clone(),
            schedule: h.schedule.clone(),
            params: h.params.clone(),
        }
    }

    fn from_core(h: Header) -> PyHeader {
        PyHeader {
            inner: HeaderKey {
                codec: h.codec.id(),
                quantizer_version: h.quantizer_version,
                precision: h.precision,
                token_count: h.token_count,
                vocab_size: h.vocab_size,
                model_fingerprint: h.model_fingerprint,
                numerics_profile: h.numerics_profile,
                schedule: h.schedule,
                params: h.params,
            },
        }
    }
}

#[pymethods]
impl PyHeader {
    #[new]
    #[pyo3(signature = (codec, precision, token_count, vocab_size, model_fingerprint = None, numerics_profile = None, schedule = None, params = None, quantizer_version = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        codec: &Bound<'_, PyAny>,
        precision: &Bound<'_, PyAny>,
        token_count: &Bound<'_, PyAny>,
        vocab_size: &Bound<'_, PyAny>,
        model_fingerprint: Option<&Bound<'_, PyAny>>,
        numerics_profile: Option<&Bound<'_, PyAny>>,
        schedule: Option<&Bound<'_, PyAny>>,
        params: Option<&Bound<'_, PyAny>>,
        quantizer_version: Option<&Bound<'_, PyAny>>,
    ) -> NResult<Self> {
        let names: Vec<&str> = Codec::ALL.iter().map(|c| c.name()).collect();
        let codec = match codec.extract::<String>() {
            Ok(name) => Codec::from_name(&name)
                .ok_or_else(|| invalid(format!("unknown codec {name:?}; expected one of {names:?}")))?,
            Err(_) => Codec::from_id(int_in(codec, "codec", 0, 255)? as u8)
                .ok_or_else(|| invalid(format!("unknown codec id; expected a name of {names:?} or its id")))?,
        };
        let numerics_profile: String = match numerics_profile {
            None => String::new(),
            Some(p) => p.extract().map_err(|_| invalid("numerics_profile must be a str (JSON text)"))?,
        };
        let schedule = match schedule {
            None => Vec::new(),
            Some(s) => {
                let mut out = Vec::new();
                for item in s.try_iter().map_err(|_| invalid("schedule must be a sequence of ints"))? {
                    out.push(int_in(&item?, "schedule entry", 1, u32::MAX as u64)? as u32);
                }
                out
            }
        };
        Ok(PyHeader {
            inner: HeaderKey {
                codec: codec.id(),
                quantizer_version: match quantizer_version {
                    None => quantize::QUANTIZER_VERSION,
                    Some(q) => int_in(q, "quantizer_version", 0, 255)? as u8,
                },
                precision: int_in(precision, "precision", 1, range::MAX_PRECISION as u64)? as u8,
                token_count: int_in(token_count, "token_count", 0, container::MAX_TOKENS)?,
                vocab_size: int_in(vocab_size, "vocab_size", 1, container::MAX_VOCAB as u64)? as u32,
                model_fingerprint: model_fingerprint.map_or(Ok(Vec::new()), |b| bytes_arg(b, "model_fingerprint"))?,
                numerics_profile,
                schedule,
                params: params.map_or(Ok(Vec::new()), |b| bytes_arg(b, "params"))?,
            },
        })
    }

    /// Codec name (a key of `CODECS`).
    #[getter]
    fn codec(&self) -> &'static str {
        Codec::from_id(self.inner.codec).expect("checked at construction").name()
    }
    /// Codec id as stored in the header.
    #[getter]
    fn codec_id(&self) -> u8 {
        self.inner.codec
    }
    #[getter]
    fn quantizer_version(&self) -> u8 {
        self.inner.quantizer_version
    }
    #[getter]
    fn precision(&self) -> u8 {
        self.inner.precision
    }
    #[getter]
    fn token_count(&self) -> u64 {
        self.inner.token_count
    }
    #[getter]
    fn vocab_size(&self) -> u32 {
        self.inner.vocab_size
    }
    #[getter]
    fn model_fingerprint<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.model_fingerprint)
    }
    /// The numerics profile (JSON text).
    #[getter]
    fn numerics_profile(&self) -> &str {
        &self.inner.numerics_profile
    }
    /// The compute schedule (chunk sizes).
    #[getter]
    fn schedule<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.inner.schedule)
    }
    /// The codec's own parameters.
    #[getter]
    fn params<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.params)
    }

    /// A copy with some fields changed (like `dataclasses.replace`).
    #[pyo3(signature = (**changes))]
    fn replace(slf: &Bound<'_, Self>, changes: Option<&Bound<'_, pyo3::types::PyDict>>) -> NResult<PyHeader> {
        let py = slf.py();
        let kw = pyo3::types::PyDict::new(py);
        for f in ["codec", "precision", "token_count", "vocab_size", "model_fingerprint", "numerics_profile", "schedule", "params", "quantizer_version"] {
            kw.set_item(f, slf.getattr(f)?)?;
        }
        if let Some(c) = changes {
            for (k, v) in c.iter() {
                let k: String = k.extract()?;
                if !kw.contains(&k)? {
                    return Err(invalid(format!("Header has no field {k:?}")));
                }
                kw.set_item(k, v)?;
            }
        }
        Ok(slf.get_type().call((), Some(&kw))?.cast_into::<PyHeader>().map_err(PyErr::from)?.get().clone())
    }

    fn __repr__(&self) -> String {
        let h = &self.inner;
        format!(
            "Header(codec={:?}, precision={}, token_count={}, vocab_size={}, model_fingerprint=<{} bytes>, numerics_profile=<{} chars>, schedule=<{} entries>, params=<{} bytes>, quantizer_version={})",
            self.codec(),
            h.precision,
            h.token_count,
            h.vocab_size,
            h.model_fingerprint.len(),
            h.numerics_profile.len(),
            h.schedule.len(),
            h.params.len(),
            h.quantizer_version
        )
    }
}

/// One block of a container: token count, the codec's bytes and the CRC-32C of the decoded ids
/// (uint32 little-endian).
#[pyclass(frozen, eq, hash, name = "Block", module = "seqkv._native.coder")]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PyBlock {
    n_tokens: u32,
    payload: Vec<u8>,
    tokens_crc32c: u32,
}

#[pymethods]
impl PyBlock {
    #[new]
    fn new(n_tokens: &Bound<'_, PyAny>, payload: &Bound<'_, PyAny>, tokens_crc32c: &Bound<'_, PyAny>) -> NResult<Self> {
        Ok(PyBlock {
            n_tokens: int_in(n_tokens, "n_tokens", 0, u32::MAX as u64)? as u32,
            payload: bytes_arg(payload, "block payload")?,
            tokens_crc32c: int_in(tokens_crc32c, "tokens_crc32c", 0, u32::MAX as u64)? as u32,
        })
    }
    #[getter]
    fn n_tokens(&self) -> u32 {
        self.n_tokens
    }
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.payload)
    }
    #[getter]
    fn tokens_crc32c(&self) -> u32 {
        self.tokens_crc32c
    }
    fn __repr__(&self) -> String {
        format!("Block(n_tokens={}, payload=<{} bytes>, tokens_crc32c={:#010x})", self.n_tokens, self.payload.len(), self.tokens_crc32c)
    }
}

/// Serialises `header` and `blocks` (a sequence of `Block`); the blocks' token counts must sum
/// to `header.token_count`; the whole-stream token checksum is derived from the blocks'.
#[pyfunction]
fn pack<'py>(py: Python<'py>, header: &Bound<'py, PyAny>, blocks: &Bound<'py, PyAny>) -> NResult<Bound<'py, PyBytes>> {
    let header = header
        .cast::<PyHeader>()
        .map_err(|_| invalid(format!("header must be a Header, got {}", crate::convert::type_name(header))))?
        .get()
        .to_core();
    let mut bs: Vec<Block> = Vec::new();
    for b in blocks.try_iter().map_err(|_| invalid("blocks must be a sequence of Block"))? {
        let b = b?;
        let b = b
            .cast::<PyBlock>()
            .map_err(|_| invalid(format!("blocks must be Block instances, got {}", crate::convert::type_name(&b))))?
            .get();
        bs.push(Block { n_tokens: b.n_tokens, payload: b.payload.clone(), tokens_crc32c: b.tokens_crc32c });
    }
    let data = py.detach(|| container::pack(&header, &bs))?;
    Ok(PyBytes::new(py, &data))
}

/// Parses and validates a container: `(Header, list[Block], tokens_crc32c)`.
/// CorruptStreamError / FormatVersionError on bad data.
#[pyfunction]
fn unpack<'py>(py: Python<'py>, data: &Bound<'py, PyAny>) -> NResult<(PyHeader, Vec<PyBlock>, u32)> {
    let data = bytes_arg(data, "data")?;
    let c = py.detach(|| container::unpack(&data))?;
    let blocks = c
        .blocks
        .into_iter()
        .map(|b| PyBlock { n_tokens: b.n_tokens, payload: b.payload, tokens_crc32c: b.tokens_crc32c })
        .collect();
    Ok((PyHeader::from_core(c.header), blocks, c.tokens_crc32c))
}

fn bit_order(order: &str) -> NResult<BitOrder> {
    BitOrder::parse(order).ok_or_else(|| invalid(format!("order must be 'msb' or 'lsb', not {order:?}")))
}

/// Packs `values` (any integer input, each `< 2**bits`, `bits` in 1..=32) into
/// `ceil(len * bits / 8)` bytes. `order="msb"` (default): each value most significant bit
/// first, bytes filled from their top bit (the `raw` codec's layout, `numpy.packbits` of the
/// value bits); `order="lsb"`: least significant bit first, bytes filled from bit 0
/// (`bitorder="little"`). The GIL is released while packing.
#[pyfunction]
#[pyo3(signature = (values, bits, order = "msb"))]
fn pack_bits<'py>(py: Python<'py>, values: &Bound<'py, PyAny>, bits: u32, order: &str) -> NResult<Bound<'py, PyBytes>> {
    let order = bit_order(order)?;
    let v = read_tokens(values, "values")?;
    let out = py.detach(|| seqkv_coder::bits::pack_bits(&v, bits, order))?;
    Ok(PyBytes::new(py, &out))
}

/// Inverse of `pack_bits`: `n` values of `bits` bits as a `uint32` array; CorruptStreamError
/// unless `data` has exactly `ceil(n * bits / 8)` bytes.
#[pyfunction]
#[pyo3(signature = (data, n, bits, order = "msb"))]
fn unpack_bits<'py>(py: Python<'py>, data: &[u8], n: usize, bits: u32, order: &str) -> NResult<Bound<'py, PyArray1<u32>>> {
    let order = bit_order(order)?;
    let out = py.detach(|| seqkv_coder::bits::unpack_bits(data, n, bits, order))?;
    Ok(tokens_array(py, out))
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

/// The names that exist only in `seqkv._native.coder` (not re-exported at the top level).
pub fn register_new(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let codecs = pyo3::types::PyDict::new(m.py());
    for c in Codec::ALL {
        codecs.set_item(c.name(), c.id())?;
    }
    m.add("CODECS", codecs)?;
    m.add_class::<PyHeader>()?;
    m.add_class::<PyBlock>()?;
    m.add_function(wrap_pyfunction!(pack, m)?)?;
    m.add_function(wrap_pyfunction!(unpack, m)?)?;
    m.add_function(wrap_pyfunction!(pack_bits, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_bits, m)?)?;
    Ok(())
}
