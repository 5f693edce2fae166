//! The single place where the GIL is released. Every call into the core that may block (I/O,
//! hashing, waiting on threads) goes through here, so other Python threads run meanwhile and
//! core errors are mapped in one way.
//!
//! Each call names its site, and the site is counted from inside the released section:
//! `_native._gil_releases()` lets the test suite check that every blocking entry point really
//! passes through here (tests/test_gil.py), not only the few whose slowness can be timed.

use std::collections::BTreeMap;
use std::sync::Mutex;

use pyo3::prelude::*;

use crate::errors::to_pyerr;

static RELEASES: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

pub fn without_gil<T, F>(py: Python<'_>, site: &'static str, work: F) -> PyResult<T>
where
    F: Send + FnOnce() -> snapload_core::Result<T>,
    T: Send,
{
    py.detach(move || {
        *RELEASES.lock().unwrap_or_else(|e| e.into_inner()).entry(site).or_default() += 1;
        work()
    })
    .map_err(to_pyerr)
}

/// How many times each site ran with the GIL released, since the module was loaded.
#[pyfunction]
pub fn _gil_releases() -> BTreeMap<&'static str, u64> {
    RELEASES.lock().unwrap_or_else(|e| e.into_inner()).clone()
}
