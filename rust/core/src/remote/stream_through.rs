//! A cache entry being filled by the restore that reads it: a `Source` that fetches ranges from
//! the object and writes each one, as it lands, into the entry's temporary file at the same
//! offset (a tee). A CUDA restore with a cache directory reads through it, so the device copies
//! overlap the download instead of waiting for it, and the file is published afterwards.
//!
//! The bytes written are the very buffer that the reader then hashes and hands on (the pipeline
//! hashes a ring slot after `read_at` returns, and nothing else touches the slot meanwhile), so a
//! checksum that passed covers the file's copy too. `publish` is called only once the reader has
//! checked every tensor (`Pipeline::finish`); it fetches what no reader asked for (the padding
//! between tensors that the pipeline skips), syncs, and renames under the entry's lock. Until
//! then the file has its temporary name, and dropping or aborting the entry removes it.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::object::RemoteObject;
use crate::error::{Error, IoContext, Result};
use crate::header::Header;
use crate::source::Source;

pub struct StreamThrough {
    object: Arc<RemoteObject>,
    tmp: File,
    tmp_path: PathBuf,
    final_path: PathBuf,
    /// The entry's lock file, `flock`ed by this process; `None` once published or aborted.
    lock: Mutex<Option<File>>,
    /// Byte ranges of the object written into `tmp` so far (unsorted, may overlap).
    written: Mutex<Vec<Range<u64>>>,
}

impl StreamThrough {
    /// Takes over `tmp` (created empty under `tmp_path`, sized to the object) and the held `lock`.
    pub(super) fn new(object: Arc<RemoteObject>, tmp: File, tmp_path: PathBuf, final_path: PathBuf, lock: File) -> StreamThrough {
        StreamThrough { object, tmp, tmp_path, final_path, lock: Mutex::new(Some(lock)), written: Mutex::new(Vec::new()) }
    }

    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Bytes written into the temporary file so far (overlaps counted twice).
    pub fn bytes_written(&self) -> u64 {
        self.written.lock().expect("no panics while held").iter().map(|r| r.end - r.start).sum()
    }

    /// Mark all of the object as written (a whole-object fetch that wrote through a mapping).
    pub(super) fn mark_complete(&self) {
        self.written.lock().expect("no panics while held").push(0..self.object.size());
    }

    /// The object itself, for a fetch that writes the file by other means (its mapping).
    pub(super) fn object(&self) -> &Arc<RemoteObject> {
        &self.object
    }

    pub(super) fn tmp_file(&self) -> (&File, &Path) {
        (&self.tmp, &self.tmp_path)
    }

    /// Complete the file and publish it: fetch the ranges no reader asked for (never tensor
    /// bytes: those must have come through a reader that checked them, or this fails), `fsync`,
    /// rename to the final name, sync the directory, release the lock. Call it only after every
    /// tensor's checksum was verified on the bytes read through this source.
    pub fn publish(&self, header: &Header, cancel: &AtomicBool) -> Result<PathBuf> {
        let mut lock = self.lock.lock().expect("no panics while held");
        if lock.is_none() {
            return Err(Error::InvalidArgument(format!("{}: this cache entry was already published or aborted", self.object.name().display())));
        }
        for gap in self.gaps() {
            if let Some(t) = header.tensors.iter().find(|t| t.length > 0 && t.offset < gap.end && gap.start < t.end()) {
                return Err(Error::InvalidArgument(format!(
                    "{}: cannot publish the cache file: tensor {:?} was never read through it",
                    self.object.name().display(),
                    t.name
                )));
            }
            let mut buf = vec![0u8; (gap.end - gap.start) as usize];
            self.read_at_cancellable(&mut buf, gap.start, cancel)?;
        }
        self.tmp.sync_all().at(&self.tmp_path, "sync cache file")?;
        std::fs::rename(&self.tmp_path, &self.final_path).at(&self.final_path, "publish cache file")?;
        let dir = self.final_path.parent().unwrap_or(Path::new("."));
        File::open(dir).and_then(|d| d.sync_all()).at(dir, "sync cache directory")?;
        drop(lock.take()); // closing the descriptor releases the flock
        Ok(self.final_path.clone())
    }

    /// `publish` on a thread of its own, for a restore that already holds every tensor: the
    /// caller goes on (serves) while the file is completed, synced and renamed; the `fsync` of a
    /// whole model would otherwise sit on the cold start's path. On failure the entry is aborted
    /// (temporary file removed, lock released: the next restore fetches again). The file keeps
    /// its temporary name until then, so a process killed meanwhile leaves nothing that looks
    /// complete, and the next holder of the lock removes the leftover.
    pub fn publish_in_background(self: &Arc<Self>, header: Header) -> Result<Publishing> {
        let fill = self.clone();
        let handle = std::thread::Builder::new()
            .name("snapload-publish".into())
            .spawn(move || {
                let published = fill.publish(&header, &AtomicBool::new(false));
                if published.is_err() {
                    fill.abort();
                }
                published
            })
            .at(&self.tmp_path, "start the thread that publishes the cache file")?;
        Ok(Publishing { handle: Mutex::new(Some(handle)), final_path: self.final_path.clone() })
    }

    /// Remove the temporary file and release the lock; a no-op once published or aborted.
    pub fn abort(&self) {
        if self.lock.lock().expect("no panics while held").take().is_some() {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }

    /// The ranges of `0..size` that nothing has written yet, in order.
    fn gaps(&self) -> Vec<Range<u64>> {
        let mut written = self.written.lock().expect("no panics while held").clone();
        written.sort_unstable_by_key(|r| r.start);
        let mut gaps = Vec::new();
        let mut covered = 0u64;
        for r in written {
            if r.start > covered {
                gaps.push(covered..r.start);
            }
            covered = covered.max(r.end);
        }
        if covered < self.object.size() {
            gaps.push(covered..self.object.size());
        }
        gaps
    }
}

/// A cache file being published by `StreamThrough::publish_in_background`.
pub struct Publishing {
    handle: Mutex<Option<JoinHandle<Result<PathBuf>>>>,
    final_path: PathBuf,
}

impl Publishing {
    /// Block until the file is published (its final path) or has failed to be (the entry was
    /// then aborted). A second call answers at once with an error naming the file.
    pub fn wait(&self) -> Result<PathBuf> {
        let handle = self.handle.lock().expect("no panics while held").take();
        match handle {
            Some(h) => h.join().unwrap_or_else(|_| Err(Error::InvalidArgument(format!("{}: the publishing thread panicked", self.final_path.display())))),
            None => Err(Error::InvalidArgument(format!("{}: already waited for", self.final_path.display()))),
        }
    }
}

impl Source for StreamThrough {
    fn name(&self) -> &Path {
        self.object.name()
    }

    fn size(&self) -> u64 {
        self.object.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.read_at_cancellable(buf, offset, &AtomicBool::new(false))
    }

    /// Fetch from the object, then write the same bytes into the temporary file (`pwrite`
    /// from several reader threads at once, each to its own range).
    fn read_at_cancellable(&self, buf: &mut [u8], offset: u64, cancel: &AtomicBool) -> Result<()> {
        self.object.read_at_cancellable(buf, offset, cancel)?;
        self.tmp.write_all_at(buf, offset).at(&self.tmp_path, "write cache file")?;
        start_writeback(&self.tmp, offset, buf.len() as u64);
        self.written.lock().expect("no panics while held").push(offset..offset + buf.len() as u64);
        Ok(())
    }
}

/// Start writing these pages to disk now, without waiting: the kernel would otherwise hold them
/// dirty until its background threshold (a tenth of memory: most of a model), and the `fsync`
/// before publishing would then write nearly the whole file while the restore waits. Advisory:
/// an error here only means the `fsync` does all the work.
fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: sync_file_range on a descriptor we own; no memory is passed.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), offset as libc::off64_t, len as libc::off64_t, libc::SYNC_FILE_RANGE_WRITE) };
}

impl Drop for StreamThrough {
    /// A restore that failed or was dropped half-way leaves no temporary file behind (a crash
    /// leaves one, never under the final name; the next holder of the lock removes it).
    fn drop(&mut self) {
        self.abort();
    }
}
