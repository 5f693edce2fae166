//! Where a snapshot's bytes come from: a local file (read with `pread`) or an object in a store
//! (ranged GETs, see `remote`). The header parser and the read pipeline see only this trait, so a
//! remote snapshot is validated and read exactly like a file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::error::{Error, Result};

pub trait Source: Send + Sync {
    /// The file's path or the object's URL (without any query string), for error messages.
    fn name(&self) -> &Path;

    /// Size in bytes, as seen when the source was opened.
    fn size(&self) -> u64;

    /// Fill all of `buf` with the bytes at `offset..offset + buf.len()`; a source that ends
    /// first is `Error::Truncated`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// `read_at` that gives up with `Error::Cancelled` soon after `cancel` is set: a remote read
    /// may wait on a stalled server for its whole timeout (and retries), and Ctrl-C or a
    /// cancelled pipeline must not. A local read is short and ignores the flag.
    fn read_at_cancellable(&self, buf: &mut [u8], offset: u64, cancel: &AtomicBool) -> Result<()> {
        let _ = cancel;
        self.read_at(buf, offset)
    }

    /// The open file behind a local source (mapping, mincore, O_DIRECT); `None` for a remote one.
    fn as_file(&self) -> Option<&File> {
        None
    }
}

/// Today's path: an open local file.
pub struct FileSource {
    path: PathBuf,
    file: File,
    size: u64,
}

impl FileSource {
    pub fn new(path: &Path, file: File, size: u64) -> FileSource {
        FileSource { path: path.to_owned(), file, size }
    }
}

impl Source for FileSource {
    fn name(&self) -> &Path {
        &self.path
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::truncated(&self.path, format!("file ends before byte {}", offset + buf.len() as u64))
            } else {
                Error::io(&self.path, "read", e)
            }
        })
    }

    fn as_file(&self) -> Option<&File> {
        Some(&self.file)
    }
}
