//! `SnapshotWriter`: the core writer, fed from Python with buffer-protocol objects (numpy uint8
//! views of torch tensors). All hashing and writing runs with the GIL released.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use snapload_core::{Dtype, SnapshotWriter, TensorSpec, WriteJob};

use crate::closable::Closable;
use crate::errors::to_pyerr;
use crate::gil::without_gil;

type SpecRow = (String, String, Vec<u64>, Option<String>);

/// Fail early, naming `path`, when a snapshot could not be published there (a folder, a missing
/// or read-only parent folder); callers run it before any expensive work.
#[pyfunction]
pub fn check_destination(py: Python<'_>, path: PathBuf) -> PyResult<()> {
    without_gil(py, "check_destination", || snapload_core::check_destination(&path).map(|_| ()))
}

#[pyclass(name = "SnapshotWriter", module = "snapload._native", frozen)]
pub struct PyWriter {
    inner: Closable<SnapshotWriter>,
}

/// A contiguous byte buffer borrowed from Python for the duration of one call.
struct Bytes {
    _owner: PyBuffer<u8>,
    ptr: usize,
    len: usize,
}

impl Bytes {
    fn get(obj: &Bound<'_, PyAny>) -> PyResult<Bytes> {
        let buf = PyBuffer::<u8>::get(obj)?;
        if !buf.is_c_contiguous() {
            return Err(PyValueError::new_err("tensor bytes must be C-contiguous"));
        }
        let (ptr, len) = (buf.buf_ptr() as usize, buf.len_bytes());
        Ok(Bytes { _owner: buf, ptr, len })
    }

    fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `_owner` holds the exporter's view for as long as `self` lives, which pins
        // `len` contiguous bytes at `ptr` (checked C-contiguous above). We only read them.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

#[pymethods]
impl PyWriter {
    /// Lay out `specs` (name, dtype, shape, alias_of) and create the temporary file.
    #[new]
    #[pyo3(signature = (path, specs, alignment, metadata))]
    fn new(py: Python<'_>, path: PathBuf, specs: Vec<SpecRow>, alignment: u64, metadata: BTreeMap<String, String>) -> PyResult<Self> {
        let specs = specs
            .into_iter()
            .map(|(name, dtype, shape, alias_of)| {
                let dtype: Dtype = dtype.parse().map_err(|e| PyValueError::new_err(format!("tensor {name:?}: {e}")))?;
                Ok(TensorSpec { name, dtype, shape, alias_of })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let w = without_gil(py, "Writer()", || SnapshotWriter::create(&path, &specs, alignment, metadata))?;
        Ok(PyWriter { inner: Closable::new(w, "snapshot writer") })
    }

    /// Planned byte offset of each tensor in the file.
    fn offsets(&self) -> PyResult<Vec<u64>> {
        self.inner.with(|w| Ok(w.header().tensors.iter().map(|t| t.offset).collect())).map_err(to_pyerr)
    }

    /// Write `data` at byte `offset` of tensor `index`.
    fn write(&self, py: Python<'_>, index: usize, offset: u64, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let bytes = Bytes::get(data)?;
        let slice = bytes.as_slice();
        without_gil(py, "Writer.write", || self.inner.with(|w| w.write(index, offset, slice)))
    }

    /// Write many (index, offset, data) pieces with `threads` workers (0: one per core).
    #[pyo3(signature = (jobs, threads=0))]
    fn write_many(&self, py: Python<'_>, jobs: Vec<(usize, u64, Bound<'_, PyAny>)>, threads: usize) -> PyResult<()> {
        let held = jobs.iter().map(|(i, o, d)| Ok((*i, *o, Bytes::get(d)?))).collect::<PyResult<Vec<_>>>()?;
        let jobs: Vec<WriteJob<'_>> = held.iter().map(|(index, offset, b)| WriteJob { index: *index, offset: *offset, data: b.as_slice() }).collect();
        without_gil(py, "Writer.write_many", || self.inner.with(|w| w.write_parallel(&jobs, threads)))
    }

    /// Write the header, fsync and rename into place.
    fn finish(&self, py: Python<'_>) -> PyResult<()> {
        let w = self.inner.take()?;
        without_gil(py, "Writer.finish", move || w.finish().map(|_| ()))
    }

    /// Delete the temporary file; the destination is left as it was.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        without_gil(py, "Writer.abort", || {
            self.inner.close();
            Ok(())
        })
    }
}
