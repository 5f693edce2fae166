//! Page-cache residency, eviction and background prefetch, for `snapload warm/status` and
//! `snapload.prefetch()`. None of this needs torch.

use std::path::PathBuf;

use pyo3::prelude::*;
use snapload_core::residency as core;

use crate::gil::without_gil;
use crate::snapshot::PyMapping;

/// `(resident_bytes, file_size)` of a file, from mincore; touches no data.
#[pyfunction]
pub fn residency(py: Python<'_>, path: PathBuf) -> PyResult<(u64, u64)> {
    without_gil(py, "residency", || core::residency(&path))
}

/// Drop a file's clean pages from the page cache (posix_fadvise DONTNEED).
#[pyfunction]
pub fn evict(py: Python<'_>, path: PathBuf) -> PyResult<()> {
    without_gil(py, "evict", || core::evict(&path))
}

fn priority(background: bool) -> core::Priority {
    if background { core::Priority::Background } else { core::Priority::Normal }
}

#[pyclass(name = "Prefetch", module = "snapload._native", frozen)]
pub struct PyPrefetch {
    inner: core::Prefetch,
}

#[pymethods]
impl PyPrefetch {
    /// Start `threads` readers pulling `path` into the page cache, `chunk` bytes at a time;
    /// `background` lowers their CPU and I/O priority below the rest of the process.
    #[new]
    #[pyo3(signature = (path, threads=1, chunk=8 << 20, background=true))]
    fn new(py: Python<'_>, path: PathBuf, threads: usize, chunk: u64, background: bool) -> PyResult<Self> {
        let inner = without_gil(py, "Prefetch()", || core::Prefetch::start(&path, threads, chunk, priority(background)))?;
        Ok(PyPrefetch { inner })
    }

    #[getter]
    fn total(&self) -> u64 {
        self.inner.total()
    }

    #[getter]
    fn bytes_done(&self) -> u64 {
        self.inner.bytes_done()
    }

    /// Populate the page tables of a restore's mapping in the background: tensors touched later
    /// take no page fault and read no disk.
    #[staticmethod]
    #[pyo3(signature = (mapping, threads=4, chunk=64 << 20))]
    fn of_mapping(py: Python<'_>, mapping: PyRef<'_, PyMapping>, threads: usize, chunk: u64) -> PyResult<Self> {
        let m = &*mapping;
        let inner = without_gil(py, "Prefetch.of_mapping", || Ok(m.populate(threads, chunk)))?;
        Ok(PyPrefetch { inner })
    }

    /// Let the workers finish on their own; dropping the handle no longer cancels them.
    fn detach(&self) {
        self.inner.detach();
    }

    fn cancel(&self, py: Python<'_>) -> PyResult<()> {
        without_gil(py, "Prefetch.cancel", || {
            self.inner.cancel();
            Ok(())
        })
    }

    /// Block (GIL released) until the whole file was pulled in.
    fn wait(&self, py: Python<'_>) -> PyResult<()> {
        without_gil(py, "Prefetch.wait", || self.inner.wait())
    }
}
