//! The stream-through cache: a remote snapshot is fetched once into a local file, published
//! under its final name (by rename) only once complete and verified, so that the next cold start
//! on this host reads local disk or the page cache. The file is filled either by a whole-object
//! fetch into its mapping (`fetch_to_cache`: CPU restores, `prefetch`, `snapload warm`) or by
//! the restore itself reading through a `StreamThrough` (CUDA restores).
//!
//! The file's name is a hash of the URL and the pinned ETag/version/size: a new version of the
//! object gets a new file. A lock file per entry (`flock`) makes several processes restoring the
//! same URL share one download: the first fetches, the others wait on the lock and then find the
//! published file. The lock dies with its holder, and a crashed download leaves only a `.tmp.*`
//! file, which the next holder of the lock removes.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use memmap2::MmapOptions;
use sha2::{Digest, Sha256};

use super::object::RemoteObject;
use super::options::RemoteOptions;
use super::runtime::CANCEL_POLL;
use super::stream_through::StreamThrough;
use super::{fetch_verified, FIRST_READ};
use crate::error::{Error, IoContext, Result};
use crate::reader::Snapshot;
use crate::source::Source;

/// The cache entry's file name for an object: readable prefix, then a hash of what pins it.
pub fn cache_file_name(name: &str, e_tag: Option<&str>, version: Option<&str>, size: u64) -> String {
    let mut h = Sha256::new();
    for part in [name, e_tag.unwrap_or(""), version.unwrap_or(""), &size.to_string()] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let digest: String = h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect();
    let stem: String = name
        .rsplit('/')
        .next()
        .unwrap_or("snapshot")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' { c } else { '_' })
        .take(64)
        .collect();
    let stem = stem.strip_suffix(".snap").unwrap_or(&stem);
    format!("{stem}-{digest}.snap")
}

/// What `fetch_to_cache` did: the published file, and whether this call downloaded it.
pub struct Cached {
    pub path: PathBuf,
    pub downloaded: bool,
}

/// A cache entry as `open_entry` found it: published already (by this process earlier or by
/// another), or to be filled by the caller, who holds its lock until it publishes or aborts.
pub enum Entry {
    Published(PathBuf),
    /// The snapshot reads through `fill` (its header already came through and was written).
    Fill { fill: Arc<StreamThrough>, snapshot: Snapshot },
}

/// The entry for `url` in `cache_dir`: HEAD the object (pinning its version), take the entry's
/// lock (waiting while another process fills it; giving up if `cancel` is set), then either the
/// published file or a new temporary file to fill.
pub fn open_entry(url: &str, cache_dir: &Path, options: &RemoteOptions, cancel: &AtomicBool) -> Result<Entry> {
    let object = Arc::new(RemoteObject::open(url, options, cancel)?);
    let name = object.name().to_string_lossy().into_owned();
    let file_name = cache_file_name(&name, object.e_tag(), object.version(), object.size());
    std::fs::create_dir_all(cache_dir).at(cache_dir, "create cache directory")?;
    let final_path = cache_dir.join(&file_name);
    let lock_path = cache_dir.join(format!("{file_name}.lock"));
    let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).at(&lock_path, "open cache lock")?;
    lock_exclusive(&lock, &lock_path, cancel)?;
    // From here on this process owns the entry until `lock` is closed.
    if final_path.exists() {
        let local = Snapshot::open(&final_path)?;
        if local.header().file_size == object.size() {
            return Ok(Entry::Published(final_path));
        }
        // Same name, different size: not ours (a hash collision or a hand edit); fetch anew.
    }
    remove_stale_temporaries(cache_dir, &file_name);
    let tmp_path = cache_dir.join(format!("{file_name}.tmp.{}", std::process::id()));
    let tmp = OpenOptions::new().create_new(true).read(true).write(true).open(&tmp_path).at(&tmp_path, "create cache file")?;
    let fill = Arc::new(StreamThrough::new(object.clone(), tmp, tmp_path, final_path, lock));
    let (tmp, tmp_path) = fill.tmp_file();
    tmp.set_len(object.size()).at(tmp_path, "size cache file")?;
    // Any failure from here drops `fill`, which removes the temporary file and the lock.
    let snapshot = Snapshot::from_source_cancellable(fill.clone(), FIRST_READ, cancel)?;
    Ok(Entry::Fill { fill, snapshot })
}

/// The local, verified copy of the snapshot at `url` in `cache_dir`, downloading it first unless
/// a published copy of the same version is there already.
pub fn fetch_to_cache(url: &str, cache_dir: &Path, options: &RemoteOptions, cancel: &AtomicBool) -> Result<Cached> {
    match open_entry(url, cache_dir, options, cancel)? {
        Entry::Published(path) => Ok(Cached { path, downloaded: false }),
        Entry::Fill { fill, snapshot } => {
            let result = write_verified(&snapshot, &fill, options, cancel).and_then(|()| fill.publish(snapshot.header(), cancel));
            if result.is_err() {
                fill.abort();
            }
            Ok(Cached { path: result?, downloaded: true })
        }
    }
}

/// Fetch the whole object into the entry's temporary file (verified) and open that file as a
/// local snapshot, for a CPU restore that maps it while the entry is published in the background
/// (`StreamThrough::publish_in_background`): the snapshot holds the file open, so the rename that
/// publishes it does not disturb the mapping.
pub fn fill_whole(fill: &StreamThrough, snapshot: &Snapshot, options: &RemoteOptions, cancel: &AtomicBool) -> Result<Snapshot> {
    write_verified(snapshot, fill, options, cancel)?;
    Snapshot::open(fill.tmp_file().1)
}

/// Fetch the whole object into the entry's file through a shared writable mapping (the bytes go
/// straight into its page cache pages) and check every checksum.
fn write_verified(snapshot: &Snapshot, fill: &StreamThrough, options: &RemoteOptions, cancel: &AtomicBool) -> Result<()> {
    let size = snapshot.header().file_size;
    let (file, tmp_path) = fill.tmp_file();
    // Straight from the object into the mapping: through `fill` each range would also be
    // written onto itself, a second copy for nothing.
    let snapshot = snapshot.with_source(fill.object().clone());
    if size > 0 {
        // SAFETY: a shared mapping of a file this process just created under a name no other
        // process uses (`.tmp.<pid>`, removed only under the entry's lock, which we hold); its
        // length was set when it was created, and nothing else truncates it while mapped.
        let mut map = unsafe { MmapOptions::new().len(size as usize).map_mut(file) }.at(tmp_path, "mmap cache file")?;
        fetch_verified(&snapshot, &mut map, options.part_size, options.concurrency, cancel)?;
        // No msync here: `publish` fsyncs the file, which writes back the pages dirtied through
        // this mapping too (unmapping hands their dirty bits to the page cache).
    }
    fill.mark_complete();
    Ok(())
}

fn remove_stale_temporaries(dir: &Path, file_name: &str) {
    let prefix = format!("{file_name}.tmp.");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// `flock` the entry's lock file, polling so that a wait on another process's download can be
/// cancelled (Ctrl-C); the lock is still the kernel's, held until the descriptor is closed.
fn lock_exclusive(file: &File, path: &Path, cancel: &AtomicBool) -> Result<()> {
    loop {
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => {}
            _ => return Err(Error::io(path, "lock cache entry", e)),
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled { path: path.to_owned() });
        }
        std::thread::sleep(CANCEL_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_change_with_the_version_and_stay_readable() {
        let a = cache_file_name("s3://b/models/llama.snap", Some("\"e1\""), None, 10);
        let b = cache_file_name("s3://b/models/llama.snap", Some("\"e2\""), None, 10);
        assert_ne!(a, b);
        assert!(a.starts_with("llama-") && a.ends_with(".snap"), "{a}");
        assert_eq!(a, cache_file_name("s3://b/models/llama.snap", Some("\"e1\""), None, 10));
    }
}
