//! Remote snapshots: fetching a whole object into a writable buffer (a CPU restore's arena) and
//! into the local stream-through cache. URL detection for `Snapshot(...)` lives in snapshot.rs.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use snapload_core::remote::{self, RemoteOptions};

use crate::gil::without_gil;
use crate::snapshot::PySnapshot;

/// The local, verified copy of `url` in `cache_dir`: `(path, downloaded)`. Several processes
/// asking at once share one download (a lock per entry).
#[pyfunction]
pub fn fetch_to_cache(py: Python<'_>, url: String, cache_dir: PathBuf) -> PyResult<(String, bool)> {
    let options = RemoteOptions::from_env();
    let cancel = AtomicBool::new(false);
    let c = without_gil(py, "fetch_to_cache", || remote::fetch_to_cache(&url, &cache_dir, &options, &cancel))?;
    Ok((c.path.to_string_lossy().into_owned(), c.downloaded))
}

/// Whether `path` names an object in a store (s3://, http://, https://) rather than a file.
#[pyfunction]
pub fn is_url(path: &str) -> bool {
    remote::is_url(path)
}

/// Fill `buffer` (writable, C-contiguous, exactly the snapshot's size) with the whole file,
/// checking every tensor's checksum as the parts arrive.
pub fn fetch_into(py: Python<'_>, snapshot: &PySnapshot, buffer: &Bound<'_, PyAny>) -> PyResult<()> {
    let buf = PyBuffer::<u8>::get(buffer)?;
    if buf.readonly() || !buf.is_c_contiguous() {
        return Err(PyValueError::new_err("fetch_into needs a writable, C-contiguous byte buffer"));
    }
    let (addr, len) = (buf.buf_ptr() as usize, buf.len_bytes());
    let snap = snapshot.inner().clone();
    let options = RemoteOptions::from_env();
    let cancel = AtomicBool::new(false);
    without_gil(py, "Snapshot.fetch_into", move || {
        // SAFETY: `buf` holds the exporter's buffer (and a reference to its owner) until it is
        // dropped after this call returns; the exporter said it is writable and C-contiguous, so
        // `addr..addr+len` is one live writable region. Python code cannot touch it meanwhile
        // through us; a caller that writes the same buffer from another thread gets torn bytes,
        // as with any buffer-protocol writer.
        let dst = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) };
        remote::fetch_verified(&snap, dst, options.part_size, options.concurrency, &cancel)
    })?;
    drop(buf);
    Ok(())
}
