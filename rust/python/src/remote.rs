//! Remote snapshots: fetching a whole object into a writable buffer (a CPU restore's arena), into
//! the local stream-through cache, or through a cache entry that a CUDA restore fills as it reads.
//! URL detection for `Snapshot(...)` lives in snapshot.rs. Every call here may wait on a server:
//! all of them go through `without_gil_interruptible`, so Ctrl-C stops them within a moment.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use snapload_core::remote::{self, Entry, Publishing, RemoteOptions, StreamThrough};
use snapload_core::Snapshot;

use crate::gil::{without_gil, without_gil_interruptible};
use crate::snapshot::PySnapshot;

/// A flag that another thread sets to stop a call in progress (`fetch_to_cache` run by a
/// background prefetch: only the main thread sees Ctrl-C, and it cancels the download here).
#[pyclass(name = "CancelToken", module = "snapload._native", frozen)]
#[derive(Default)]
pub struct PyCancelToken {
    flag: Arc<AtomicBool>,
}

#[pymethods]
impl PyCancelToken {
    #[new]
    fn new() -> Self {
        PyCancelToken::default()
    }

    /// Ask the call using this token to stop; it fails with `CancelledError` soon after.
    fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }

    #[getter]
    fn cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

impl PyCancelToken {
    /// The flag, for a native call that takes the token.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }
}

/// The local, verified copy of `url` in `cache_dir`: `(path, downloaded)`. Several processes
/// asking at once share one download (a lock per entry). Ctrl-C, or `cancel` being set, stops
/// it: no file is published and the lock is released.
#[pyfunction]
#[pyo3(signature = (url, cache_dir, cancel=None))]
pub fn fetch_to_cache(py: Python<'_>, url: String, cache_dir: PathBuf, cancel: Option<PyRef<'_, PyCancelToken>>) -> PyResult<(String, bool)> {
    let options = RemoteOptions::from_env();
    let flag = cancel.map(|c| c.flag()).unwrap_or_default();
    let c = without_gil_interruptible(py, "fetch_to_cache", &flag, |cancel| remote::fetch_to_cache(&url, &cache_dir, &options, cancel))?;
    Ok((c.path.to_string_lossy().into_owned(), c.downloaded))
}

/// Whether `path` names an object in a store (s3://, http://, https://) rather than a file.
#[pyfunction]
pub fn is_url(path: &str) -> bool {
    remote::is_url(path)
}

/// Fill `buffer` (writable, C-contiguous, exactly the snapshot's size) with the whole file,
/// checking every tensor's checksum as the parts arrive.
pub fn fetch_into(py: Python<'_>, snapshot: &PySnapshot, buffer: &Bound<'_, PyAny>, cancel: Arc<AtomicBool>) -> PyResult<()> {
    let buf = PyBuffer::<u8>::get(buffer)?;
    if buf.readonly() || !buf.is_c_contiguous() {
        return Err(PyValueError::new_err("fetch_into needs a writable, C-contiguous byte buffer"));
    }
    let (addr, len) = (buf.buf_ptr() as usize, buf.len_bytes());
    let snap = snapshot.inner().clone();
    let options = RemoteOptions::from_env();
    without_gil_interruptible(py, "Snapshot.fetch_into", &cancel, move |cancel| {
        // SAFETY: `buf` holds the exporter's buffer (and a reference to its owner) until it is
        // dropped after this call returns, and the helper thread running this is joined before
        // the call returns (on Ctrl-C too); the exporter said it is writable and C-contiguous, so
        // `addr..addr+len` is one live writable region. Python code cannot touch it meanwhile
        // through us; a caller that writes the same buffer from another thread gets torn bytes,
        // as with any buffer-protocol writer.
        let dst = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) };
        remote::fetch_verified(&snap, dst, options.part_size, options.concurrency, cancel)
    })?;
    drop(buf);
    Ok(())
}

/// A URL's entry in the cache directory, for a restore that fills it as it reads (CUDA): either
/// published already (`path`; `snapshot` is None) or held by this process, its lock taken, with
/// `snapshot` reading from the object and writing every byte it reads into the entry's temporary
/// file. After a verified read of every tensor, `publish()`; on any failure, `abort()` (dropping
/// the entry does the same).
#[pyclass(name = "CacheEntry", module = "snapload._native", frozen)]
pub struct PyCacheEntry {
    path: PathBuf,
    fill: Option<(Arc<StreamThrough>, Arc<Snapshot>)>,
    /// Set by `publish_in_background`.
    publishing: OnceLock<Arc<Publishing>>,
}

#[pymethods]
impl PyCacheEntry {
    /// HEAD the object, take the entry's lock (waiting while another process fills it) and read
    /// the header through the entry. Ctrl-C stops the wait.
    #[new]
    fn new(py: Python<'_>, url: String, cache_dir: PathBuf) -> PyResult<Self> {
        let options = RemoteOptions::from_env();
        let entry = without_gil_interruptible(py, "CacheEntry()", &AtomicBool::new(false), |cancel| remote::open_entry(&url, &cache_dir, &options, cancel))?;
        Ok(match entry {
            Entry::Published(path) => PyCacheEntry { path, fill: None, publishing: OnceLock::new() },
            Entry::Fill { fill, snapshot } => PyCacheEntry { path: fill.final_path().to_owned(), fill: Some((fill, Arc::new(snapshot))), publishing: OnceLock::new() },
        })
    }

    /// The entry's final path (published once `publish()` returned, or already when `snapshot`
    /// is None).
    #[getter]
    fn path(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// The snapshot to restore from, reading through the entry; None when already published.
    #[getter]
    fn snapshot(&self) -> Option<PySnapshot> {
        self.fill.as_ref().map(|(_, snap)| PySnapshot::from_inner(snap.clone()))
    }

    /// Bytes written into the entry's temporary file so far.
    #[getter]
    fn bytes_written(&self) -> u64 {
        self.fill.as_ref().map_or(0, |(fill, _)| fill.bytes_written())
    }

    /// Fetch what the restore did not read (padding), sync, rename to `path`, release the lock.
    /// Only after every tensor's checksum was verified on the bytes read through `snapshot`.
    fn publish(&self, py: Python<'_>) -> PyResult<String> {
        if let Some((fill, snap)) = &self.fill {
            without_gil_interruptible(py, "CacheEntry.publish", &AtomicBool::new(false), |cancel| fill.publish(snap.header(), cancel))?;
        }
        Ok(self.path())
    }

    /// Fetch the whole object into the entry's temporary file (every checksum verified) and
    /// return it opened as a local snapshot (a CPU restore maps it); then `publish_in_background`.
    fn fill(&self, py: Python<'_>) -> PyResult<PySnapshot> {
        let (fill, snap) = self.filling()?;
        let options = RemoteOptions::from_env();
        let local = without_gil_interruptible(py, "CacheEntry.fill", &AtomicBool::new(false), |cancel| remote::fill_whole(fill, snap, &options, cancel))?;
        Ok(PySnapshot::from_inner(Arc::new(local)))
    }

    /// Start publishing (as `publish`) on a thread of the core's, and return at once; on failure
    /// the entry is aborted there. `wait_published()` joins it.
    fn publish_in_background(&self) -> PyResult<()> {
        let (fill, snap) = self.filling()?;
        let publishing = fill.publish_in_background(snap.header().clone()).map_err(crate::errors::to_pyerr)?;
        self.publishing
            .set(Arc::new(publishing))
            .map_err(|_| PyValueError::new_err(format!("{}: publishing was started already", self.path.display())))
    }

    /// Block until the background publish has finished: the final path, or its error.
    fn wait_published(&self, py: Python<'_>) -> PyResult<String> {
        let Some(publishing) = self.publishing.get().cloned() else {
            return Err(PyValueError::new_err(format!("{}: publish_in_background() was not called", self.path.display())));
        };
        let path = without_gil(py, "CacheEntry.wait_published", move || publishing.wait())?;
        Ok(path.to_string_lossy().into_owned())
    }

    /// Remove the temporary file and release the lock; a no-op once published or aborted.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        let Some((fill, _)) = &self.fill else { return Ok(()) };
        without_gil(py, "CacheEntry.abort", || {
            fill.abort();
            Ok(())
        })
    }
}

impl PyCacheEntry {
    fn filling(&self) -> PyResult<(&Arc<StreamThrough>, &Arc<Snapshot>)> {
        self.fill
            .as_ref()
            .map(|(fill, snap)| (fill, snap))
            .ok_or_else(|| PyValueError::new_err(format!("{}: this cache entry is published already", self.path.display())))
    }
}
