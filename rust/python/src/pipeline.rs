//! `Ring` and `Pipeline`: the core read pipeline, driven from Python by a copy engine (CUDA via
//! cuda-python, or a host sink in tests). Waiting for a filled slot releases the GIL.

use std::collections::BTreeMap;
use std::sync::Arc;

use pyo3::prelude::*;
use snapload_core::pipeline::{Options, Pipeline, ReadMode, Ring};

use crate::closable::Closable;
use crate::errors::to_pyerr;
use crate::gil::{without_gil, without_gil_polling, SIGNAL_POLL};
use crate::snapshot::PySnapshot;

#[pyclass(name = "Ring", module = "snapload._native", frozen)]
pub struct PyRing {
    inner: Arc<Ring>,
}

#[pymethods]
impl PyRing {
    /// `slots` page-aligned host buffers of `slot_size` bytes each (a multiple of 4096).
    #[new]
    fn new(py: Python<'_>, slots: usize, slot_size: usize) -> PyResult<Self> {
        let inner = without_gil(py, "Ring()", || Ring::new(slots, slot_size))?;
        Ok(PyRing { inner: Arc::new(inner) })
    }

    #[getter]
    fn slots(&self) -> usize {
        self.inner.slots()
    }

    #[getter]
    fn slot_size(&self) -> usize {
        self.inner.slot_size()
    }

    /// Each buffer's address, stable for the ring's life (for page-locking with the driver).
    #[getter]
    fn addresses(&self) -> Vec<usize> {
        self.inner.addresses()
    }

    /// Whether a pipeline holds this ring now (a second one would be refused).
    #[getter]
    fn leased(&self) -> bool {
        self.inner.is_leased()
    }
}

#[pyclass(name = "Pipeline", module = "snapload._native", frozen)]
pub struct PyPipeline {
    inner: Closable<Pipeline>,
    arena_size: u64,
    dst_offsets: Vec<u64>,
    chunks: usize,
}

#[pymethods]
impl PyPipeline {
    /// Start reader threads for `snapshot` into `ring`. `mode`: auto, mmap, direct, buffered.
    #[new]
    #[pyo3(signature = (snapshot, ring, threads=0, mode="auto", verify=false))]
    fn new(py: Python<'_>, snapshot: PyRef<'_, PySnapshot>, ring: PyRef<'_, PyRing>, threads: usize, mode: &str, verify: bool) -> PyResult<Self> {
        let mode: ReadMode = mode.parse().map_err(to_pyerr)?;
        let (snap, ring) = (snapshot.inner().clone(), ring.inner.clone());
        let p = without_gil(py, "Pipeline()", || Pipeline::start(snap, ring, &Options { threads, mode, verify }))?;
        let layout = p.layout().clone();
        let chunks = p.chunk_count();
        Ok(PyPipeline { inner: Closable::new(p, "pipeline"), arena_size: layout.arena_size, dst_offsets: layout.dst_offsets, chunks })
    }

    /// Bytes of the device allocation the snapshot needs.
    #[getter]
    fn arena_size(&self) -> u64 {
        self.arena_size
    }

    /// Per tensor (header order), its byte offset in the arena.
    #[getter]
    fn dst_offsets(&self) -> Vec<u64> {
        self.dst_offsets.clone()
    }

    #[getter]
    fn chunk_count(&self) -> usize {
        self.chunks
    }

    /// Wait for the next filled slot: `(slot, dst_offset, length)`, or `None` when all are done.
    /// Ctrl-C while waiting raises KeyboardInterrupt here (the caller then cancels).
    fn next_filled(&self, py: Python<'_>) -> PyResult<Option<(usize, u64, u64)>> {
        let f = without_gil_polling(py, "Pipeline.next_filled", || self.inner.with(|p| p.next_filled_within(SIGNAL_POLL)))?;
        Ok(f.map(|f| (f.slot, f.dst_offset, f.len)))
    }

    /// The copy out of `slot` has completed; readers may reuse it.
    fn release(&self, slot: usize) -> PyResult<()> {
        self.inner.with(|p| p.release(slot)).map_err(to_pyerr)
    }

    /// Stop the readers and wait for them to return, which gives the ring back; a no-op once
    /// finished, so error paths may always call it.
    fn cancel(&self, py: Python<'_>) -> PyResult<()> {
        without_gil(py, "Pipeline.cancel", || {
            self.inner.if_open(Pipeline::cancel);
            Ok(())
        })
    }

    /// Reader threads still running (0 once cancelled or finished).
    #[getter]
    fn readers_alive(&self) -> usize {
        self.inner.with(|p| Ok(p.readers_alive())).unwrap_or(0)
    }

    /// Join the readers, check checksums (with verify) and return byte counts per read path.
    fn finish(&self, py: Python<'_>) -> PyResult<BTreeMap<&'static str, u64>> {
        let p = self.inner.take()?;
        let s = without_gil(py, "Pipeline.finish", move || p.finish())?;
        Ok(BTreeMap::from([
            ("chunks", s.chunks),
            ("bytes", s.bytes),
            ("mmap_bytes", s.mmap_bytes),
            ("direct_bytes", s.direct_bytes),
            ("buffered_bytes", s.buffered_bytes),
            ("remote_bytes", s.remote_bytes),
        ]))
    }
}
