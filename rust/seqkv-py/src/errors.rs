//! The one error conversion of the native module: every core crate's error becomes a
//! [`NativeError`] (`?` at the call site), which becomes the `PyErr` of one class of the Python
//! hierarchy in `seqkv.errors` at the boundary.
//!
//! The exception classes live in Python (so `InvalidInputError` can also be a `ValueError`);
//! they are looked up once and cached. The `match`es below name every core variant (no
//! wildcard), so a new variant does not compile until it is mapped.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// The seqkv exception classes the native module raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    InvalidInput,
    CorruptStream,
    FormatVersion,
    Capacity,
    /// A broken invariant inside seqkv (a bug): `seqkv.errors.InternalError`, or `SeqkvError`
    /// where that class does not exist.
    Internal,
}

impl Kind {
    fn class_name(self) -> &'static str {
        match self {
            Kind::InvalidInput => "InvalidInputError",
            Kind::CorruptStream => "CorruptStreamError",
            Kind::FormatVersion => "FormatVersionError",
            Kind::Capacity => "CapacityError",
            Kind::Internal => "InternalError",
        }
    }

    /// The class to use when `class_name` is missing from `seqkv.errors`.
    fn fallback(self) -> Option<&'static str> {
        match self {
            Kind::Internal => Some("SeqkvError"),
            _ => None,
        }
    }
}

/// An error on its way out of a native call: a seqkv error (class and message, turned into a
/// `PyErr` only at the boundary) or a Python error raised while converting arguments.
#[derive(Debug)]
pub enum NativeError {
    Seqkv(Kind, String),
    Py(PyErr),
}

/// What every binding returns; `?` converts core errors and `PyErr`s alike.
pub type NResult<T> = Result<T, NativeError>;

static ERRORS_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// Builds a `PyErr` of the given seqkv class carrying `message`.
fn py_err(kind: Kind, message: String) -> PyErr {
    Python::attach(|py| {
        let class = ERRORS_MODULE
            .get_or_try_init(py, || PyModule::import(py, "seqkv.errors").map(Bound::unbind))
            .and_then(|m| {
                let m = m.bind(py);
                match (m.getattr(kind.class_name()), kind.fallback()) {
                    (Ok(c), _) => Ok(c),
                    (Err(_), Some(name)) => m.getattr(name),
                    (Err(e), None) => Err(e),
                }
            })
            .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
        match class {
            Ok(class) => PyErr::from_type(class, message),
            Err(import_failure) => import_failure,
        }
    })
}

impl From<NativeError> for PyErr {
    fn from(e: NativeError) -> PyErr {
        match e {
            NativeError::Seqkv(kind, message) => py_err(kind, message),
            NativeError::Py(e) => e,
        }
    }
}

impl From<PyErr> for NativeError {
    fn from(e: PyErr) -> NativeError {
        NativeError::Py(e)
    }
}

impl From<std::convert::Infallible> for NativeError {
    fn from(e: std::convert::Infallible) -> NativeError {
        match e {}
    }
}

impl From<seqkv_coder::Error> for NativeError {
    fn from(e: seqkv_coder::Error) -> NativeError {
        use seqkv_coder::Error as E;
        match e {
            E::InvalidInput(m) => NativeError::Seqkv(Kind::InvalidInput, m),
            E::CorruptStream(m) => NativeError::Seqkv(Kind::CorruptStream, m),
            E::FormatVersion(m) => NativeError::Seqkv(Kind::FormatVersion, m),
        }
    }
}

impl From<seqkv_trie::TrieError> for NativeError {
    fn from(e: seqkv_trie::TrieError) -> NativeError {
        use seqkv_trie::TrieError as E;
        match e {
            E::InvalidInput(m) => NativeError::Seqkv(Kind::InvalidInput, m),
            E::Capacity(m) => NativeError::Seqkv(Kind::Capacity, m),
            E::Corrupt(m) => NativeError::Seqkv(Kind::CorruptStream, m),
            E::FormatVersion(m) => NativeError::Seqkv(Kind::FormatVersion, m),
        }
    }
}

impl From<seqkv_engine::EngineError> for NativeError {
    fn from(e: seqkv_engine::EngineError) -> NativeError {
        use seqkv_engine::EngineError as E;
        match e {
            E::InvalidInput(m) => NativeError::Seqkv(Kind::InvalidInput, m),
        }
    }
}

impl From<seqkv_ppm::Error> for NativeError {
    fn from(e: seqkv_ppm::Error) -> NativeError {
        use seqkv_ppm::Error as E;
        match e {
            E::InvalidInput(m) => NativeError::Seqkv(Kind::InvalidInput, m),
            E::CorruptStream(m) => NativeError::Seqkv(Kind::CorruptStream, m),
            E::Internal(m) => NativeError::Seqkv(Kind::Internal, m),
        }
    }
}

/// An `InvalidInputError` with `message`.
pub fn invalid(message: impl Into<String>) -> NativeError {
    NativeError::Seqkv(Kind::InvalidInput, message.into())
}
