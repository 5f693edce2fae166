//! `snapload._native`: argument conversion and error mapping over `snapload-core`. All policy
//! (torch, devices, CUDA) lives in the Python package above.

mod closable;
mod errors;
mod gil;
mod pipeline;
mod plan;
mod remote;
mod residency;
mod snapshot;
mod writer;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<snapshot::PySnapshot>()?;
    m.add_class::<snapshot::PyMapping>()?;
    m.add_class::<writer::PyWriter>()?;
    m.add_class::<pipeline::PyRing>()?;
    m.add_class::<pipeline::PyPipeline>()?;
    m.add_class::<residency::PyPrefetch>()?;
    m.add_function(wrap_pyfunction!(residency::residency, m)?)?;
    m.add_function(wrap_pyfunction!(residency::evict, m)?)?;
    m.add_function(wrap_pyfunction!(gil::_gil_releases, m)?)?;
    m.add_function(wrap_pyfunction!(writer::check_destination, m)?)?;
    m.add_class::<plan::PyOutcome>()?;
    m.add_function(wrap_pyfunction!(plan::plan_simulate, m)?)?;
    m.add_function(wrap_pyfunction!(plan::plan_simulate_detail, m)?)?;
    m.add_function(wrap_pyfunction!(remote::fetch_to_cache, m)?)?;
    m.add_function(wrap_pyfunction!(remote::is_url, m)?)?;
    m.add_class::<remote::PyCacheEntry>()?;
    m.add_class::<remote::PyCancelToken>()?;
    m.add("FORMAT_VERSION", snapload_core::header::FORMAT_VERSION)?;
    m.add("DTYPES", snapload_core::Dtype::ALL.iter().map(|d| d.name()).collect::<Vec<_>>())?;
    Ok(())
}
