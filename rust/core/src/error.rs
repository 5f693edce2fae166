//! One error type for the core. Every variant that concerns a file names it; the glue crate maps
//! variants to the Python exception hierarchy and `Io` to the built-in `OSError` subclasses.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {op}: {source}")]
    Io { path: PathBuf, op: &'static str, #[source] source: io::Error },

    #[error("{path}: not a snapload snapshot (bad magic bytes {found:02x?})")]
    BadMagic { path: PathBuf, found: Vec<u8> },

    #[error("{path}: snapshot format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion { path: PathBuf, found: u32, supported: u32 },

    #[error("{path}: corrupt header: {reason}")]
    CorruptHeader { path: PathBuf, reason: String },

    #[error("{path}: truncated file: {reason}")]
    Truncated { path: PathBuf, reason: String },

    #[error("{path}: checksum mismatch in tensor {tensor:?}: header says {expected:08x}, data gives {actual:08x}")]
    ChecksumMismatch { path: PathBuf, tensor: String, expected: u32, actual: u32 },

    #[error("{0}")]
    InvalidArgument(String),

    #[error("{path}: operation cancelled")]
    Cancelled { path: PathBuf },

    /// A remote object was replaced while it was being read: its ETag (or version) no longer
    /// matches the one pinned when it was opened, so bytes of two versions must not be mixed.
    #[error("{path}: the object changed while it was being read ({reason}); restore again to read the new version")]
    ObjectChanged { path: PathBuf, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: &Path, op: &'static str, source: io::Error) -> Self {
        Error::Io { path: path.to_owned(), op, source }
    }

    pub fn corrupt(path: &Path, reason: impl Into<String>) -> Self {
        Error::CorruptHeader { path: path.to_owned(), reason: reason.into() }
    }

    pub fn truncated(path: &Path, reason: impl Into<String>) -> Self {
        Error::Truncated { path: path.to_owned(), reason: reason.into() }
    }
}

/// Attach a path and an operation to an `io::Result`.
pub trait IoContext<T> {
    fn at(self, path: &Path, op: &'static str) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path, op: &'static str) -> Result<T> {
        self.map_err(|e| Error::io(path, op, e))
    }
}
