//! `seqkv._native`: the only crate that knows PyO3. It converts arguments,
//! releases the GIL around the work of the core crates and maps their errors.

use pyo3::prelude::*;

mod coder;
mod engine;
mod ppm;
mod errors;
mod trie;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    coder::register(m)?;
    trie::register(m)?;
    engine::register(m)?;
    ppm::register(m)?;
    Ok(())
}
