//! The single place where the GIL is released. Every call into the core that may block (I/O,
//! hashing, waiting on threads) goes through here, so other Python threads run meanwhile and
//! core errors are mapped in one way.

use pyo3::prelude::*;
use pyo3::marker::Ungil;

use crate::errors::to_pyerr;

pub fn without_gil<T, F>(py: Python<'_>, work: F) -> PyResult<T>
where
    F: Ungil + FnOnce() -> snapload_core::Result<T>,
    T: Send,
{
    py.detach(work).map_err(to_pyerr)
}
