//! Maps the core crates' errors onto the Python hierarchy in `seqkv.errors`.
//!
//! The exception classes live in Python (so `InvalidInputError` can also be a
//! `ValueError`); they are looked up once and cached.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// The seqkv exception classes the native module raises.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    InvalidInput,
    CorruptStream,
    FormatVersion,
    Capacity,
}

impl Kind {
    fn class_name(self) -> &'static str {
        match self {
            Kind::InvalidInput => "InvalidInputError",
            Kind::CorruptStream => "CorruptStreamError",
            Kind::FormatVersion => "FormatVersionError",
            Kind::Capacity => "CapacityError",
        }
    }
}

static ERRORS_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// Builds a `PyErr` of the given seqkv class carrying `message`.
pub fn err(kind: Kind, message: impl Into<String>) -> PyErr {
    let message = message.into();
    Python::attach(|py| {
        let class = ERRORS_MODULE
            .get_or_try_init(py, || PyModule::import(py, "seqkv.errors").map(Bound::unbind))
            .and_then(|m| m.bind(py).getattr(kind.class_name()))
            .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
        match class {
            Ok(class) => PyErr::from_type(class, message),
            Err(import_failure) => import_failure,
        }
    })
}

/// Shorthand for the most common case.
pub fn invalid(message: impl Into<String>) -> PyErr {
    err(Kind::InvalidInput, message)
}
