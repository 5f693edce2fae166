//! What of a file is in the page cache (mincore), pushing it out (fadvise DONTNEED), and pulling
//! it in ahead of use with parallel kernel readahead (no copy into user space).

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use memmap2::MmapOptions;

use crate::error::{Error, IoContext, Result};
use crate::reader::{open_regular_file, Mapping};

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u64 } else { 4096 }
}

/// Bytes of `file[offset..offset+len]` resident in the page cache, counted by whole pages.
/// Maps the range read-only and asks `mincore`; nothing is faulted in.
pub fn resident_bytes(file: &File, path: &Path, offset: u64, len: u64) -> Result<u64> {
    if len == 0 {
        return Ok(0);
    }
    let page = page_size();
    let start = offset / page * page;
    let map_len = (offset + len - start) as usize;
    // SAFETY: a shared read-only mapping that we never read through: it exists only so that
    // mincore can be asked about its pages, so a concurrent truncation cannot fault us.
    let map = unsafe { MmapOptions::new().offset(start).len(map_len).map(file) }.at(path, "mmap for mincore")?;
    mapped_resident_bytes(&map, offset - start, len).map_err(|e| Error::io(path, "mincore", e))
}

/// Bytes of `map[offset..offset+len]` whose pages are resident. `map` must start on a page
/// boundary (every mmap does).
pub fn mapped_resident_bytes(map: &[u8], offset: u64, len: u64) -> std::io::Result<u64> {
    assert!(offset.checked_add(len).is_some_and(|end| end <= map.len() as u64), "range inside the mapping");
    if len == 0 {
        return Ok(0);
    }
    let page = page_size();
    let first = offset / page * page;
    let span = (offset + len - first) as usize;
    let mut vec = vec![0u8; span.div_ceil(page as usize)];
    // SAFETY: `map[first..first+span]` lies inside a live mapping (asserted above, rounded down
    // to a page boundary, which stays inside because mappings start on one) and `vec` holds one
    // byte per page of it, as mincore requires.
    let rc = unsafe { libc::mincore(map.as_ptr().add(first as usize) as *mut libc::c_void, span, vec.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Count each resident page's overlap with the range (the first and last may be partial).
    let end = offset + len;
    Ok(vec
        .iter()
        .enumerate()
        .filter(|(_, &b)| b & 1 == 1)
        .map(|(i, _)| {
            let p0 = first + i as u64 * page;
            (p0 + page).min(end) - p0.max(offset)
        })
        .sum())
}

/// (resident bytes, file size) of a whole file.
pub fn residency(path: &Path) -> Result<(u64, u64)> {
    let (file, size) = open_regular_file(path)?;
    Ok((resident_bytes(&file, path, 0, size)?, size))
}

/// Ask the kernel to drop a file's clean pages from the page cache (a cold-start benchmark's
/// eviction; pages other processes map stay).
pub fn evict(path: &Path) -> Result<()> {
    let (file, _) = open_regular_file(path)?;
    // SAFETY: fadvise on a descriptor we own; length 0 means to the end of the file.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(Error::io(path, "posix_fadvise(DONTNEED)", std::io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

/// How hard a prefetch competes with the process it runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// Ordinary threads: the fastest fill when nothing else needs the CPUs or the disk.
    Normal,
    /// Lowest CPU priority (nice 19) and the idle I/O class for the prefetch threads only: they
    /// soak up idle CPU and disk time while the handler's own work (`import torch` reading its
    /// libraries, building the model) goes first. The I/O scheduler ages idle-class requests, so
    /// they are delayed, not starved. Measured in docs/benchmarks.md (end-to-end cold start).
    Background,
}

impl Priority {
    /// Apply to the calling thread. Linux schedules threads individually, so this lowers only
    /// this thread; lowering needs no privilege, and a refusal just leaves the thread as it was.
    fn apply_to_current_thread(self) {
        if self == Priority::Normal {
            return;
        }
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
        // SAFETY: setpriority with PRIO_PROCESS and a thread id of this process changes only that
        // thread's nice value; it reads and writes no memory of ours.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 19) };
        const IOPRIO_WHO_PROCESS: libc::c_long = 1;
        const IOPRIO_CLASS_IDLE: libc::c_long = 3;
        const IOPRIO_CLASS_SHIFT: u32 = 13;
        // SAFETY: ioprio_set takes three integers (who = 0: the calling thread) and touches no
        // memory of ours.
        unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT) };
    }
}

#[derive(Clone)]
enum Source {
    File(Arc<File>),
    Mapping(Arc<Mapping>),
}

/// Background threads that pull a file into the page cache with `readahead(2)`, chunk by chunk,
/// in parallel. Made to run while `import torch` and model construction do.
pub struct Prefetch {
    path: PathBuf,
    total: u64,
    done: Arc<AtomicU64>,
    cancel: Arc<AtomicBool>,
    workers: Mutex<Vec<JoinHandle<std::io::Result<()>>>>,
    detached: AtomicBool,
}

impl Prefetch {
    /// Pull a file into the page cache (for a restore that has not mapped it yet).
    pub fn start(path: &Path, threads: usize, chunk: u64, priority: Priority) -> Result<Prefetch> {
        let (file, total) = open_regular_file(path)?;
        Ok(Self::spawn(path, Source::File(Arc::new(file)), total, threads, chunk, priority))
    }

    /// Populate the page tables of an existing mapping (a CPU restore's), so that later touches
    /// of its tensors neither read the disk nor take page faults.
    pub fn start_mapping(path: &Path, mapping: Arc<Mapping>, threads: usize, chunk: u64, priority: Priority) -> Prefetch {
        let total = mapping.len() as u64;
        Self::spawn(path, Source::Mapping(mapping), total, threads, chunk, priority)
    }

    fn spawn(path: &Path, source: Source, total: u64, threads: usize, chunk: u64, priority: Priority) -> Prefetch {
        // Whole pages per chunk, so populate calls stay page-aligned inside a mapping.
        let chunk = chunk.max(1 << 20).next_multiple_of(page_size());
        let next = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let cancel = Arc::new(AtomicBool::new(false));
        let workers = (0..threads.max(1))
            .map(|_| {
                let (source, next, done, cancel) = (source.clone(), next.clone(), done.clone(), cancel.clone());
                std::thread::Builder::new()
                    .name("snapload-prefetch".into())
                    .spawn(move || -> std::io::Result<()> {
                        priority.apply_to_current_thread();
                        while !cancel.load(Ordering::Relaxed) {
                            let at = next.fetch_add(chunk, Ordering::Relaxed);
                            if at >= total {
                                break;
                            }
                            let len = chunk.min(total - at);
                            match &source {
                                Source::File(file) => pull_into_cache(file, at, len)?,
                                Source::Mapping(map) => populate_mapping(map, at, len),
                            }
                            done.fetch_add(len, Ordering::Relaxed);
                        }
                        Ok(())
                    })
                    .expect("spawn prefetch thread")
            })
            .collect();
        Prefetch { path: path.to_owned(), total, done, cancel, workers: Mutex::new(workers), detached: AtomicBool::new(false) }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn bytes_done(&self) -> u64 {
        self.done.load(Ordering::Relaxed).min(self.total)
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Let the workers run to completion on their own; dropping this handle then neither
    /// cancels nor waits. They own what they read (file or mapping), so nothing dangles.
    pub fn detach(&self) {
        self.detached.store(true, Ordering::Relaxed);
        self.workers.lock().expect("no panics while held").clear();
    }

    /// Wait for every worker; the first I/O error is returned.
    pub fn wait(&self) -> Result<()> {
        let workers = std::mem::take(&mut *self.workers.lock().expect("no panics while held"));
        let mut first = None;
        for w in workers {
            if let Err(e) = w.join().expect("prefetch thread panicked") {
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) => Err(Error::io(&self.path, "prefetch", e)),
            None => Ok(()),
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        if !self.detached.load(Ordering::Relaxed) {
            self.cancel();
            let _ = self.wait();
        }
    }
}

/// Populate `map[offset..offset+len]`'s page tables from the page cache (reading the disk where
/// needed), then touch each page once if some had to come from the disk (see
/// `touch_each_page`). Where `MADV_POPULATE_READ` is refused, the touch alone faults them in.
fn populate_mapping(map: &Mapping, offset: u64, len: u64) {
    let bytes = map.as_slice();
    let was_cached = fully_resident(bytes, offset, len);
    let (offset, len) = (offset as usize, len as usize);
    let populated = map.advise(memmap2::Advice::PopulateRead, offset, len).is_ok();
    if !(was_cached && populated) {
        touch_each_page(&bytes[offset..offset + len]);
    }
}

/// Whether every page of `map[offset..offset+len]` is in the page cache already (false when
/// mincore cannot tell).
fn fully_resident(map: &[u8], offset: u64, len: u64) -> bool {
    mapped_resident_bytes(map, offset, len).is_ok_and(|resident| resident == len)
}

/// Read one byte of every page. On bare metal this costs a cache miss a page, which is why the
/// callers skip it for ranges that were cached before they started (measurable on a warm 4 GB
/// restore). In a microVM (this was measured on Firecracker) the first CPU access to a
/// page the virtual disk has just filled costs about a microsecond of hypervisor work, charged
/// to whichever thread touches it first: 0.4 s for 1.5 GB. Paying it here, on a prefetch thread
/// that runs while the handler imports torch, keeps it out of the first forward pass, where it
/// measured +1 s. The mapping covers an immutable snapshot (docs/reliability.md, SIGBUS).
fn touch_each_page(bytes: &[u8]) {
    let page = page_size() as usize;
    let mut sum = 0u8;
    for i in (0..bytes.len()).step_by(page) {
        sum = sum.wrapping_add(bytes[i]);
    }
    std::hint::black_box(sum);
}

/// Fill the page cache for `file[offset..offset+len]` and wait until it is there, without
/// copying to user space: a shared read-only mapping of the range is populated with
/// `MADV_POPULATE_READ` (Linux 5.14+; `readahead(2)` alone returns before the I/O completes).
/// Where that is refused, a plain read into a scratch buffer does the job. Either way each page
/// is touched once by this thread (see `touch_each_page`); a range cached already is skipped.
fn pull_into_cache(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let page = page_size();
    let start = offset / page * page;
    // SAFETY: a shared read-only mapping of a range of a file we hold open. The kernel populates
    // it and reports failure (not SIGBUS) for a range past EOF; we read through it only after a
    // populate succeeded, and snapshots are never shrunk in place (docs/reliability.md, SIGBUS).
    let map = unsafe { MmapOptions::new().offset(start).len((offset + len - start) as usize).map(file) }?;
    if fully_resident(&map, offset - start, len) {
        return Ok(()); // cached already (and touched by whoever read it in): nothing to do
    }
    if map.advise(memmap2::Advice::PopulateRead).is_ok() {
        // Populated without error, so every page of the range exists in the file.
        touch_each_page(&map);
        return Ok(());
    }
    use std::os::unix::fs::FileExt;
    let mut scratch = vec![0u8; (1 << 20).min(len as usize)];
    let mut at = offset;
    while at < offset + len {
        let n = file.read_at(&mut scratch, at)?;
        if n == 0 {
            break;
        }
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current_thread_priorities() -> (i32, libc::c_long) {
        // SAFETY: gettid, getpriority and ioprio_get take integers and touch no memory of ours.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            *libc::__errno_location() = 0;
            let nice = libc::getpriority(libc::PRIO_PROCESS, tid);
            (nice, libc::syscall(libc::SYS_ioprio_get, 1, 0))
        }
    }

    #[test]
    fn background_priority_lowers_only_the_calling_thread() {
        let before = current_thread_priorities();
        let (nice, ioprio) = std::thread::spawn(|| {
            Priority::Background.apply_to_current_thread();
            current_thread_priorities()
        })
        .join()
        .unwrap();
        assert_eq!(nice, 19);
        assert_eq!(ioprio, 3 << 13, "the idle I/O class");
        assert_eq!(current_thread_priorities(), before, "the spawning thread is untouched");
    }

    #[test]
    fn fully_resident_follows_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        let file = File::open(&path).unwrap();
        file.sync_all().unwrap();
        // SAFETY: a read-only mapping of a file this test owns and never changes.
        let map = unsafe { MmapOptions::new().map(&file) }.unwrap();
        assert!(fully_resident(&map, 0, 1 << 20), "just written, so cached");
        assert!(fully_resident(&map, 100, 5000), "partial pages at both ends");
        evict(&path).unwrap();
        if mapped_resident_bytes(&map, 0, 1 << 20).unwrap() == 0 {
            assert!(!fully_resident(&map, 0, 1 << 20));
            // A prefetch brings it back, touching what it read.
            pull_into_cache(&file, 0, 1 << 20).unwrap();
            assert!(fully_resident(&map, 0, 1 << 20));
        } // else: this file system ignores DONTNEED (tmpfs); nothing to check
    }

    #[test]
    fn normal_priority_changes_nothing() {
        let (nice, ioprio) = std::thread::spawn(|| {
            let before = current_thread_priorities();
            Priority::Normal.apply_to_current_thread();
            (before, current_thread_priorities())
        })
        .join()
        .unwrap();
        assert_eq!(nice, ioprio);
    }
}
