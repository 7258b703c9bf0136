//! Every conversion of Python arguments into Rust values, and of results back to NumPy.
//!
//! The token convention of the whole native API: token ids (and coder symbols) are accepted as
//! any 1-D integer input — a NumPy array of any integer dtype, a list/tuple/range/iterable of
//! Python ints, or anything with `__array__` (torch CPU tensors) — range-checked, and copied
//! once into a `Vec<u32>` while the GIL is held (so no Python thread can change them while Rust
//! reads them with the GIL released). Token ids come back as `uint32` arrays; the coder's
//! `decode_*` functions still return `int64` symbols (their Python callers expect it).
//!
//! Float arrays (logits, frequency tables) are read in place: they must arrive C-contiguous with
//! their final dtype (the Python wrappers convert once).

use crate::errors::{invalid, NResult};
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyInt, PyList, PyString, PyTuple};

static NUMPY: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// `numpy.asarray(obj)` for objects that are not arrays but expose `__array__` (torch CPU tensors, ...).
pub fn to_ndarray<'py>(obj: &Bound<'py, PyAny>) -> NResult<Option<Bound<'py, PyUntypedArray>>> {
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

pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

/// Converts any 1-D integer array (any int dtype) into `out`, range-checked by `conv`.
fn ints_from_array<T: Copy + numpy::Element>(
    arr: &Bound<'_, PyUntypedArray>,
    out: &mut Vec<u64>,
    what: &str,
    max: u64,
    conv: impl Fn(T) -> Option<u64>,
) -> NResult<bool> {
    let Ok(a) = arr.cast::<PyArray1<T>>() else { return Ok(false) };
    let check = |x: T, i: usize| -> NResult<u64> {
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
pub fn read_ints(obj: &Bound<'_, PyAny>, what: &str, max: u64) -> NResult<Vec<u64>> {
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
    let one = |i: usize, item: Bound<'_, PyAny>| -> NResult<u64> {
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
                    return Err(PyErr::fetch(obj.py()).into());
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

pub fn read_tokens(obj: &Bound<'_, PyAny>, what: &str) -> NResult<Vec<u32>> {
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

pub fn read_logprobs(obj: &Bound<'_, PyAny>) -> NResult<Vec<f32>> {
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
pub fn ns_key(obj: Option<&Bound<'_, PyAny>>) -> NResult<Option<Vec<u8>>> {
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

/// A C-contiguous 1-D array as a slice.
pub fn slice1<'a, T: numpy::Element>(a: &'a PyReadonlyArray1<'_, T>, what: &str) -> NResult<&'a [T]> {
    a.as_slice().map_err(|_| invalid(format!("{what} must be C-contiguous")))
}

/// A C-contiguous 2-D array as a slice and its shape.
pub fn slice2<'a, T: numpy::Element>(a: &'a PyReadonlyArray2<'_, T>, what: &str) -> NResult<(&'a [T], usize, usize)> {
    let [n, v] = [a.shape()[0], a.shape()[1]];
    Ok((a.as_slice().map_err(|_| invalid(format!("{what} must be C-contiguous")))?, n, v))
}

/// Coder symbols: any integer input (see the module docs), each checked to be in `0..v`.
pub fn read_symbols(obj: &Bound<'_, PyAny>, what: &str, v: usize) -> NResult<Vec<u32>> {
    let out_of_range = |s: i128| invalid(format!("symbol {s} out of range 0..{v}"));
    // The common case (what the Python wrappers pass): a contiguous int64 array.
    if let Ok(a) = obj.cast::<PyArray1<i64>>() {
        // SAFETY: the GIL is held for the whole copy, so no Python code can write the array
        // meanwhile, and no Rust code of this module writes a caller's array.
        if let Ok(s) = unsafe { a.as_slice() } {
            return s
                .iter()
                .map(|&s| if s < 0 || s as u64 >= v as u64 { Err(out_of_range(s as i128)) } else { Ok(s as u32) })
                .collect();
        }
    }
    read_ints(obj, what, u64::MAX)?
        .into_iter()
        .map(|s| if s >= v as u64 { Err(out_of_range(s as i128)) } else { Ok(s as u32) })
        .collect()
}

/// Token ids out: a `uint32` array that owns `tokens` (no copy).
pub fn tokens_array(py: Python<'_>, tokens: Vec<u32>) -> Bound<'_, PyArray1<u32>> {
    PyArray1::from_vec(py, tokens)
}

/// Bytes from `bytes`, `bytearray` or anything with `tobytes()` (a NumPy array, a memoryview).
pub fn read_bytes(data: &Bound<'_, PyAny>, what: &str) -> NResult<Vec<u8>> {
    Ok(if let Ok(b) = data.cast::<PyBytes>() {
        b.as_bytes().to_vec()
    } else if let Ok(b) = data.cast::<PyByteArray>() {
        b.to_vec()
    } else if data.hasattr("tobytes")? {
        data.call_method0("tobytes")?
            .cast_into::<PyBytes>()
            .map_err(|_| invalid("tobytes() did not return bytes"))?
            .as_bytes()
            .to_vec()
    } else {
        return Err(invalid(format!("{what} takes bytes, not {}", type_name(data))));
    })
}
