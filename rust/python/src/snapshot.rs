//! `Snapshot` (an open, validated file) and `Mapping` (its copy-on-write mapping, exported through
//! the buffer protocol so that `torch.frombuffer` makes tensors that hold the mapping alive).

use std::collections::BTreeMap;
use std::ffi::{c_int, c_void};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use snapload_core::residency::{Prefetch, Priority};
use snapload_core::remote::{self, RemoteOptions};
use snapload_core::{Mapping, Snapshot};

use crate::gil::{without_gil, without_gil_interruptible};

/// One row of the tensor table: name, dtype, shape, offset, length, crc32c, alias_of.
type TensorRow = (String, &'static str, Vec<u64>, u64, u64, u32, Option<String>);

#[pyclass(name = "Snapshot", module = "snapload._native", frozen)]
pub struct PySnapshot {
    inner: Arc<Snapshot>,
}

impl PySnapshot {
    pub fn inner(&self) -> &Arc<Snapshot> {
        &self.inner
    }

    pub fn from_inner(inner: Arc<Snapshot>) -> PySnapshot {
        PySnapshot { inner }
    }
}

#[pymethods]
impl PySnapshot {
    /// Open and validate a snapshot; reads only the preamble and header. `path` may be a URL
    /// (s3://, http://, https://): one HEAD and one ranged GET, the version pinned.
    #[new]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = match path.to_str().filter(|p| remote::is_url(p)) {
            Some(url) => {
                let options = RemoteOptions::from_env();
                let cancel = AtomicBool::new(false);
                without_gil_interruptible(py, "Snapshot(url)", &cancel, |cancel| remote::open(url, &options, cancel))?
            }
            None => without_gil(py, "Snapshot()", || Snapshot::open(&path))?,
        };
        Ok(PySnapshot { inner: Arc::new(inner) })
    }

    /// True for a snapshot read from object storage.
    #[getter]
    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }

    /// Fetch the whole file into `buffer` (writable, exactly `file_size` bytes), verified. Ctrl-C,
    /// or `cancel` being set (by another thread: a background prefetch), stops it.
    #[pyo3(signature = (buffer, cancel=None))]
    fn fetch_into(&self, py: Python<'_>, buffer: &Bound<'_, PyAny>, cancel: Option<PyRef<'_, crate::remote::PyCancelToken>>) -> PyResult<()> {
        crate::remote::fetch_into(py, self, buffer, cancel.map(|c| c.flag()).unwrap_or_default())
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path().to_owned()
    }

    #[getter]
    fn alignment(&self) -> u64 {
        self.inner.header().alignment
    }

    #[getter]
    fn file_size(&self) -> u64 {
        self.inner.header().file_size
    }

    #[getter]
    fn data_start(&self) -> u64 {
        self.inner.data_start()
    }

    #[getter]
    fn metadata(&self) -> BTreeMap<String, String> {
        self.inner.header().metadata.clone()
    }

    /// The tensor table, in file order.
    fn tensors(&self) -> Vec<TensorRow> {
        let h = self.inner.header();
        h.tensors
            .iter()
            .map(|t| {
                let alias = t.alias_of.map(|a| h.tensors[a].name.clone());
                (t.name.clone(), t.dtype.name(), t.shape.clone(), t.offset, t.length, t.crc32c, alias)
            })
            .collect()
    }

    /// Map the whole file copy-on-write.
    fn map(&self, py: Python<'_>) -> PyResult<PyMapping> {
        let snap = self.inner.clone();
        let mut mapping = without_gil(py, "Snapshot.map", move || snap.map_private())?;
        let base = mapping.as_mut_ptr() as usize;
        Ok(PyMapping { mapping: Arc::new(mapping), base, path: self.inner.path().to_owned() })
    }

    /// Check every checksum against the mapping, with `threads` workers (0: one per core).
    #[pyo3(signature = (mapping, threads=0))]
    fn verify(&self, py: Python<'_>, mapping: PyRef<'_, PyMapping>, threads: usize) -> PyResult<()> {
        let snap = &*self.inner;
        let data = mapping.mapping.as_slice();
        without_gil(py, "Snapshot.verify", || snap.verify(data, threads))
    }
}

/// A private mapping of a whole snapshot, exported as a writable 1-D byte buffer.
#[pyclass(name = "Mapping", module = "snapload._native", frozen)]
pub struct PyMapping {
    mapping: Arc<Mapping>,
    path: PathBuf,
    /// The mapping's first byte, taken once through `as_mut_ptr` so writes through buffers
    /// exported below are writes through a mutable pointer. Valid for as long as `mapping` lives.
    base: usize,
}

impl PyMapping {
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// Background threads populating this mapping's page tables (see `Prefetch`), at normal
    /// priority: the restore's caller is waiting for these pages.
    pub fn populate(&self, threads: usize, chunk: u64) -> Prefetch {
        Prefetch::start_mapping(&self.path, self.mapping.clone(), threads, chunk, Priority::Normal)
    }
}

#[pymethods]
impl PyMapping {
    /// Address of the first byte (the file's offset 0), for zero-copy checks.
    #[getter]
    fn address(&self) -> usize {
        self.base
    }

    fn __len__(&self) -> usize {
        self.mapping.len()
    }

    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("null Py_buffer"));
        }
        let (base, len) = {
            let me = slf.get();
            (me.base, me.mapping.len())
        };
        // SAFETY: `view` is non-null and points to a Py_buffer the caller owns (buffer protocol
        // contract). We store a strong reference to `slf` in `obj`, so the mapping that `buf`
        // points into lives at least until the consumer releases the view. `len` is the mapping's
        // exact length. The mapping is private and writable, so `readonly = 0` is truthful.
        // `shape`/`strides` point into the Py_buffer itself, as CPython's PyBuffer_FillInfo does.
        unsafe {
            (*view).obj = slf.into_any().into_ptr();
            (*view).buf = base as *mut c_void;
            (*view).len = len as isize;
            (*view).readonly = 0;
            (*view).itemsize = 1;
            (*view).format = if flags & ffi::PyBUF_FORMAT != 0 { c"B".as_ptr() as *mut _ } else { std::ptr::null_mut() };
            (*view).ndim = 1;
            (*view).shape = if flags & ffi::PyBUF_ND != 0 { &mut (*view).len } else { std::ptr::null_mut() };
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES { &mut (*view).itemsize } else { std::ptr::null_mut() };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        // Nothing was allocated per view; the reference in `obj` is dropped by CPython.
    }
}
