//! `seqkv._native`: the only crate that knows PyO3. It converts arguments (`convert`), releases
//! the GIL around the work of the core crates and maps their errors (`errors`).
//!
//! One submodule per core crate — `seqkv._native.coder`, `.trie`, `.engine`, `.ppm` — each
//! registered in `sys.modules` so that `import seqkv._native.coder` works. The names that
//! existed before the split are also re-exported at the top level (the same objects).

use pyo3::prelude::*;
use pyo3::types::PyList;

mod coder;
mod convert;
mod engine;
mod errors;
mod ppm;
mod trie;

type Register = fn(&Bound<'_, PyModule>) -> PyResult<()>;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    let sys_modules = py.import("sys")?.getattr("modules")?;
    let parts: [(&str, Register, Option<Register>); 4] = [
        ("coder", coder::register, Some(coder::register_new)),
        ("trie", trie::register, None),
        ("engine", engine::register, Some(engine::register_new)),
        ("ppm", ppm::register, None),
    ];
    for (name, register, register_new) in parts {
        let sub = PyModule::new(py, name)?;
        register(&sub)?;
        // The names of before the split, at the top level too.
        let names = sub.getattr("__all__")?.cast_into::<PyList>()?;
        for n in names.iter() {
            let n: String = n.extract()?;
            m.add(n.as_str(), sub.getattr(n.as_str())?)?;
        }
        if let Some(register_new) = register_new {
            register_new(&sub)?;
        }
        m.add_submodule(&sub)?;
        let full = format!("seqkv._native.{name}");
        sub.setattr("__name__", &full)?;
        sys_modules.set_item(full, &sub)?;
    }
    Ok(())
}
