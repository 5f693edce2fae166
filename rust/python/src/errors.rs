//! The Python exception hierarchy and the one mapping from core errors to it.
//!
//! `SnapshotError` is the base of everything snapload raises about a snapshot's contents; I/O
//! failures become the built-in `OSError` subclasses (`FileNotFoundError`, `PermissionError`, ...)
//! carrying errno and the file name, as Python's own `open` would raise them.

use std::io::ErrorKind;

use pyo3::create_exception;
use pyo3::exceptions::{
    PyBlockingIOError, PyException, PyFileExistsError, PyFileNotFoundError, PyInterruptedError, PyIsADirectoryError,
    PyNotADirectoryError, PyOSError, PyPermissionError, PyTimeoutError, PyValueError,
};
use pyo3::prelude::*;
use snapload_core::Error;

create_exception!(snapload._native, SnapshotError, PyException, "Base of every error snapload raises about a snapshot.");
create_exception!(snapload._native, BadMagicError, SnapshotError, "The file is not a snapload snapshot.");
create_exception!(snapload._native, UnsupportedVersionError, SnapshotError, "The snapshot's format version is not readable by this build.");
create_exception!(snapload._native, CorruptHeaderError, SnapshotError, "The header fails validation (checksum, JSON, offsets, shapes, dtypes).");
create_exception!(snapload._native, TruncatedFileError, SnapshotError, "The file is shorter than its header says.");
create_exception!(snapload._native, ChecksumMismatchError, SnapshotError, "A tensor's bytes do not match the checksum recorded for it.");
create_exception!(snapload._native, CancelledError, SnapshotError, "A restore or write was cancelled before it finished.");
create_exception!(snapload._native, ObjectChangedError, SnapshotError, "A remote object was overwritten while it was being read.");

pub fn to_pyerr(err: Error) -> PyErr {
    let msg = err.to_string();
    match err {
        Error::Io { path, op, source } => io_error(&path.to_string_lossy(), op, source),
        Error::BadMagic { .. } => BadMagicError::new_err(msg),
        Error::UnsupportedVersion { .. } => UnsupportedVersionError::new_err(msg),
        Error::CorruptHeader { .. } => CorruptHeaderError::new_err(msg),
        Error::Truncated { .. } => TruncatedFileError::new_err(msg),
        Error::ChecksumMismatch { .. } => ChecksumMismatchError::new_err(msg),
        Error::Cancelled { .. } => CancelledError::new_err(msg),
        Error::ObjectChanged { .. } => ObjectChangedError::new_err(msg),
        Error::InvalidArgument(_) => PyValueError::new_err(msg),
    }
}

/// An `OSError` subclass with errno, message and file name set, as `open()` would raise it.
fn io_error(path: &str, op: &str, source: std::io::Error) -> PyErr {
    let text = format!("{op}: {source}");
    if let Some(errno) = source.raw_os_error() {
        // OSError(errno, ...) itself picks the subclass for the errno (ENOENT -> FileNotFoundError).
        return PyOSError::new_err((errno, text, path.to_owned()));
    }
    // (errno, strerror, filename) with errno None, so .strerror and .filename are set right.
    let args = (None::<i32>, text, path.to_owned());
    match source.kind() {
        ErrorKind::NotFound => PyFileNotFoundError::new_err(args),
        ErrorKind::PermissionDenied => PyPermissionError::new_err(args),
        ErrorKind::AlreadyExists => PyFileExistsError::new_err(args),
        ErrorKind::Interrupted => PyInterruptedError::new_err(args),
        ErrorKind::WouldBlock => PyBlockingIOError::new_err(args),
        ErrorKind::TimedOut => PyTimeoutError::new_err(args),
        ErrorKind::IsADirectory => PyIsADirectoryError::new_err(args),
        ErrorKind::NotADirectory => PyNotADirectoryError::new_err(args),
        _ => PyOSError::new_err(args),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("SnapshotError", py.get_type::<SnapshotError>())?;
    m.add("BadMagicError", py.get_type::<BadMagicError>())?;
    m.add("UnsupportedVersionError", py.get_type::<UnsupportedVersionError>())?;
    m.add("CorruptHeaderError", py.get_type::<CorruptHeaderError>())?;
    m.add("TruncatedFileError", py.get_type::<TruncatedFileError>())?;
    m.add("ChecksumMismatchError", py.get_type::<ChecksumMismatchError>())?;
    m.add("CancelledError", py.get_type::<CancelledError>())?;
    m.add("ObjectChangedError", py.get_type::<ObjectChangedError>())?;
    Ok(())
}
