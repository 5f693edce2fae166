//! The read pipeline behind device restores.
//!
//! Reader threads take chunks of the snapshot's data in turn, wait for a free slot of a bounded
//! ring of page-aligned host buffers, fill it (from the page cache when the chunk is resident,
//! with O_DIRECT when it is not) and hand it to the consumer. The consumer (Python, with
//! cuda-python) issues the device copy and releases the slot only once that copy's event has
//! completed. Pinned memory is therefore bounded by the ring, whatever the model's size, and
//! reading, copying and the next read overlap. The consumer side is deliberately thin so that
//! a host sink can stand in for the device in tests: every byte path but the final copy is the
//! same.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use memmap2::{Mmap, MmapOptions};

use crate::checksum::{self, Piece};
use crate::error::{Error, IoContext, Result};
use crate::header::{round_up, Header};
use crate::reader::Snapshot;
use crate::residency::mapped_resident_bytes;

/// Direct I/O wants file offsets, lengths and buffer addresses on this boundary.
pub const DIRECT_ALIGN: usize = 4096;
/// Tensors start on this boundary in the device arena (and runs of them that are contiguous in
/// a 4096-aligned file stay contiguous, so one chunk may span several tensors).
pub const ARENA_ALIGN: u64 = 4096;

/// A page-aligned heap buffer that the ring owns. Its address is stable for its whole life, so
/// the consumer may register it with the device driver (page-locking) once.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is plain heap memory with no thread affinity; concurrent access is
// coordinated by the ring's slot protocol (a slot is owned by one reader or by the consumer).
unsafe impl Send for AlignedBuf {}
// SAFETY: as above; shared references only expose the address.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len, DIRECT_ALIGN).expect("valid layout")
    }

    pub fn new(len: usize) -> Result<AlignedBuf> {
        if len == 0 || len % DIRECT_ALIGN != 0 {
            return Err(Error::InvalidArgument(format!("ring buffer size {len} must be a positive multiple of {DIRECT_ALIGN}")));
        }
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc(Self::layout(len)) };
        let ptr = NonNull::new(raw)
            .ok_or_else(|| Error::InvalidArgument(format!("cannot allocate a {len}-byte ring buffer")))?;
        Ok(AlignedBuf { ptr, len })
    }

    pub fn address(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// # Safety
    /// The caller must own this buffer's slot exclusively for the lifetime of the slice.
    // A `&mut` from `&self` is the point: the ring is shared, and exclusivity comes from the slot
    // protocol (the free list under the pipeline's mutex), not from the borrow checker.
    #[allow(clippy::mut_from_ref)]
    unsafe fn as_mut_slice(&self) -> &mut [u8] {
        // SAFETY: `ptr` is a live allocation of `len` bytes; exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

/// The bounded ring of host buffers. It outlives every pipeline that uses it (they hold an
/// `Arc`), so buffers registered with a driver stay valid until the ring itself is dropped.
///
/// A ring serves one pipeline at a time: `Pipeline::start` takes its lease and gives it back only
/// once every reader thread has been joined. The slot protocol (the free list) is per pipeline,
/// so two pipelines on one ring would hand the same buffer to two writers; the lease makes that
/// an error instead of silent corruption.
pub struct Ring {
    bufs: Vec<AlignedBuf>,
    leased: AtomicBool,
}

/// Exclusive use of a ring; dropping it makes the ring available to the next pipeline.
pub struct RingLease {
    ring: Arc<Ring>,
}

impl Drop for RingLease {
    fn drop(&mut self) {
        self.ring.leased.store(false, Ordering::Release);
    }
}

impl Ring {
    pub fn new(slots: usize, slot_size: usize) -> Result<Ring> {
        if slots == 0 {
            return Err(Error::InvalidArgument("a ring needs at least one slot".into()));
        }
        Ok(Ring { bufs: (0..slots).map(|_| AlignedBuf::new(slot_size)).collect::<Result<_>>()?, leased: AtomicBool::new(false) })
    }

    /// Take the ring for one pipeline, or fail at once if another pipeline holds it (callers that
    /// share rings between threads keep a pool and wait there; see `snapload._pipeline.RingPool`).
    pub fn lease(ring: &Arc<Ring>) -> Result<RingLease> {
        if ring.leased.swap(true, Ordering::AcqRel) {
            return Err(Error::InvalidArgument(
                "this ring is in use by another restore: each concurrent restore needs a ring of its own".into(),
            ));
        }
        Ok(RingLease { ring: ring.clone() })
    }

    /// Whether a pipeline holds the ring now.
    pub fn is_leased(&self) -> bool {
        self.leased.load(Ordering::Acquire)
    }

    pub fn slots(&self) -> usize {
        self.bufs.len()
    }

    pub fn slot_size(&self) -> usize {
        self.bufs[0].len()
    }

    pub fn addresses(&self) -> Vec<usize> {
        self.bufs.iter().map(AlignedBuf::address).collect()
    }
}

/// A run of bytes that is contiguous both in the file and in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub file_offset: u64,
    pub dst_offset: u64,
    pub len: u64,
}

/// Where each tensor lands in one device allocation, and the spans that fill it.
#[derive(Clone, Debug)]
pub struct ArenaLayout {
    /// Per tensor (aliases share their target's), byte offset in the arena.
    pub dst_offsets: Vec<u64>,
    pub arena_size: u64,
    pub spans: Vec<Span>,
}

/// Pack tensors into an arena at `ARENA_ALIGN` boundaries, in file order. In a file aligned to
/// 4096 the arena mirrors the data region exactly (padding included, under 4 KiB a tensor), so
/// neighbouring tensors merge into long spans; with larger alignments the padding is dropped.
pub fn arena_layout(header: &Header) -> ArenaLayout {
    let mut dst_offsets = vec![0u64; header.tensors.len()];
    let mut spans: Vec<Span> = Vec::new();
    let mut cursor = 0u64;
    for (i, t) in header.tensors.iter().enumerate() {
        if let Some(target) = t.alias_of {
            dst_offsets[i] = dst_offsets[target];
            continue;
        }
        let dst = round_up(cursor, ARENA_ALIGN).expect("validated sizes");
        dst_offsets[i] = dst;
        if t.length == 0 {
            continue;
        }
        cursor = dst + t.length;
        match spans.last_mut() {
            // Same file-to-arena shift as the previous span: extend it over the gap.
            Some(s) if s.file_offset + s.len <= t.offset && t.offset - s.file_offset == dst - s.dst_offset => {
                s.len = t.end() - s.file_offset;
            }
            _ => spans.push(Span { file_offset: t.offset, dst_offset: dst, len: t.length }),
        }
    }
    ArenaLayout { dst_offsets, arena_size: cursor.max(1), spans }
}

/// Split spans into chunks of at most `chunk` bytes (a multiple of `DIRECT_ALIGN`), so every
/// chunk starts on a direct-I/O boundary in the file.
pub fn chunk_spans(spans: &[Span], chunk: u64) -> Vec<Span> {
    spans
        .iter()
        .flat_map(|s| {
            let n = s.len.div_ceil(chunk);
            (0..n).map(move |k| Span {
                file_offset: s.file_offset + k * chunk,
                dst_offset: s.dst_offset + k * chunk,
                len: chunk.min(s.len - k * chunk),
            })
        })
        .collect()
}

/// How a chunk's bytes reach the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// Per chunk: buffered read when its pages are all cached (mincore), direct I/O otherwise.
    Auto,
    /// Copy out of a mapping of the file.
    Mmap,
    /// O_DIRECT reads (falling back to buffered where the file system refuses them).
    Direct,
    /// Plain pread through the page cache.
    Buffered,
}

impl std::str::FromStr for ReadMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<ReadMode> {
        match s {
            "auto" => Ok(ReadMode::Auto),
            "mmap" => Ok(ReadMode::Mmap),
            "direct" => Ok(ReadMode::Direct),
            "buffered" => Ok(ReadMode::Buffered),
            _ => Err(Error::InvalidArgument(format!("read mode {s:?} is not one of auto, mmap, direct, buffered"))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub threads: usize,
    pub mode: ReadMode,
    pub verify: bool,
}

/// A filled slot: copy `len` bytes from ring slot `slot` to arena offset `dst_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filled {
    pub slot: usize,
    pub dst_offset: u64,
    pub len: u64,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub chunks: u64,
    pub bytes: u64,
    pub mmap_bytes: u64,
    pub direct_bytes: u64,
    pub buffered_bytes: u64,
    pub remote_bytes: u64,
}

#[derive(Default)]
struct Counters {
    mmap: AtomicU64,
    direct: AtomicU64,
    buffered: AtomicU64,
    remote: AtomicU64,
}

struct State {
    free: Vec<usize>,
    filled: VecDeque<Filled>,
    error: Option<Error>,
    failed: bool,
    cancelled: bool,
    workers_done: usize,
    delivered: usize,
    released: usize,
    /// Slots handed to the consumer and not yet released.
    held: Vec<bool>,
}

struct Shared {
    snapshot: Arc<Snapshot>,
    ring: Arc<Ring>,
    chunks: Vec<Span>,
    next: AtomicUsize,
    state: Mutex<State>,
    wake: Condvar,
    /// A read-only mapping of a local snapshot (mincore, `ReadMode::Mmap`); `None` when remote.
    map: Option<Mmap>,
    direct: Option<File>,
    direct_refused: AtomicBool,
    mode: ReadMode,
    counters: Counters,
    /// Owner tensors in file order, for the checksum pieces a chunk covers (verify only).
    owners: Vec<usize>,
    pieces: Option<Vec<Mutex<Vec<Piece>>>>,
    workers: usize,
    /// Set with `cancelled` or `failed`: remote reads in flight watch it and drop their requests,
    /// so `cancel` (Ctrl-C) need not wait for a stalled server's timeout.
    stop: AtomicBool,
}

pub struct Pipeline {
    shared: Arc<Shared>,
    /// Reader threads; `cancel` and `finish` join them (under this lock, so a concurrent
    /// `cancel` returns only once no reader can touch the ring any more).
    handles: Mutex<Vec<JoinHandle<()>>>,
    layout: ArenaLayout,
    /// Released after the readers are joined (field order: dropped after `handles` is emptied).
    lease: Mutex<Option<RingLease>>,
}

impl Pipeline {
    /// Start reader threads at once; the consumer may still be setting up its device.
    pub fn start(snapshot: Arc<Snapshot>, ring: Arc<Ring>, options: &Options) -> Result<Pipeline> {
        let path = snapshot.path().to_owned();
        let lease = Ring::lease(&ring)?;
        let layout = arena_layout(snapshot.header());
        let chunks = chunk_spans(&layout.spans, ring.slot_size() as u64);
        // A remote snapshot has no file: no mapping, no O_DIRECT; every chunk is a ranged read.
        let map = match snapshot.file() {
            Some(file) => Some(map_for_reads(file, &path, snapshot.header().file_size)?),
            None => None,
        };
        let direct = match options.mode {
            ReadMode::Auto | ReadMode::Direct if map.is_some() => open_direct(&path),
            _ => None,
        };
        let header = snapshot.header();
        let owners: Vec<usize> = (0..header.tensors.len()).filter(|&i| header.tensors[i].alias_of.is_none()).collect();
        // Remote bytes crossed a network: their checksums are always checked (and they are being
        // touched anyway, so hashing them as they arrive costs little).
        let verify = options.verify || snapshot.is_remote();
        let pieces = verify.then(|| owners.iter().map(|_| Mutex::new(Vec::new())).collect());
        let workers = if options.threads == 0 { checksum::default_threads() } else { options.threads }.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                free: (0..ring.slots()).rev().collect(),
                filled: VecDeque::new(),
                error: None,
                failed: false,
                cancelled: false,
                workers_done: 0,
                delivered: 0,
                released: 0,
                held: vec![false; ring.slots()],
            }),
            snapshot,
            ring,
            chunks,
            next: AtomicUsize::new(0),
            wake: Condvar::new(),
            map,
            direct,
            direct_refused: AtomicBool::new(false),
            mode: options.mode,
            counters: Counters::default(),
            owners,
            pieces,
            workers,
            stop: AtomicBool::new(false),
        });
        let handles = (0..workers)
            .map(|_| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name("snapload-reader".into())
                    .spawn(move || s.run_worker())
                    .map_err(|e| Error::io(&path, "spawn reader thread", e))
            })
            .collect::<Result<Vec<_>>>();
        let handles = match handles {
            Ok(h) => h,
            Err(e) => {
                // Some readers may have started: stop them before the lease goes back.
                shared.lock().cancelled = true;
                shared.wake.notify_all();
                return Err(e);
            }
        };
        Ok(Pipeline { shared, handles: Mutex::new(handles), layout, lease: Mutex::new(Some(lease)) })
    }

    pub fn layout(&self) -> &ArenaLayout {
        &self.layout
    }

    pub fn chunk_count(&self) -> usize {
        self.shared.chunks.len()
    }

    /// Reader threads that have not returned yet (each holds a reference to the shared state
    /// until its last statement). Zero after `cancel` or `finish`.
    pub fn readers_alive(&self) -> usize {
        Arc::strong_count(&self.shared) - 1
    }

    /// The next filled slot, blocking until one is ready; `None` once every chunk was delivered.
    pub fn next_filled(&self) -> Result<Option<Filled>> {
        loop {
            if let Poll::Ready(f) = self.next_filled_within(Duration::from_secs(3600))? {
                return Ok(f);
            }
        }
    }

    /// `next_filled` that waits at most `timeout`: `Poll::Pending` if no slot was filled by
    /// then, so that a caller can look for a signal (Ctrl-C) between waits.
    pub fn next_filled_within(&self, timeout: Duration) -> Result<Poll<Option<Filled>>> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if st.failed {
                return Err(st.error.take().unwrap_or_else(|| self.shared.cancelled_error()));
            }
            if st.cancelled {
                return Err(self.shared.cancelled_error());
            }
            if let Some(f) = st.filled.pop_front() {
                st.delivered += 1;
                st.held[f.slot] = true;
                return Ok(Poll::Ready(Some(f)));
            }
            if st.delivered == self.shared.chunks.len() {
                return Ok(Poll::Ready(None));
            }
            if st.delivered - st.released == self.shared.ring.slots() {
                return Err(Error::InvalidArgument(
                    "the consumer holds every ring slot: release completed copies before waiting for more".into(),
                ));
            }
            if st.workers_done == self.shared.workers {
                return Err(Error::InvalidArgument("reader threads stopped before every chunk was read".into()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Poll::Pending);
            }
            st = self.shared.wake.wait_timeout(st, left).expect("no panics while held").0;
        }
    }

    /// The consumer is done with `slot` (its copy completed); readers may refill it.
    pub fn release(&self, slot: usize) -> Result<()> {
        if slot >= self.shared.ring.slots() {
            return Err(Error::InvalidArgument(format!("slot {slot} out of range")));
        }
        let mut st = self.shared.lock();
        if !st.held[slot] {
            return Err(Error::InvalidArgument(format!("slot {slot} is not held by the consumer")));
        }
        st.held[slot] = false;
        st.free.push(slot);
        st.released += 1;
        self.shared.wake.notify_all();
        Ok(())
    }

    /// Stop the readers and wait until every one of them has returned (a read in progress
    /// finishes first), then give the ring's lease back; `next_filled` then fails with
    /// `Cancelled`. Slots the consumer still holds are the consumer's to drain before it reuses
    /// the ring.
    pub fn cancel(&self) {
        self.shared.lock().cancelled = true;
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
        self.join();
    }

    /// Join the readers and, with `verify`, check every tensor's checksum from the pieces the
    /// readers hashed as they went (no second pass over the data).
    pub fn finish(self) -> Result<Stats> {
        self.join();
        let s = &self.shared;
        {
            let mut st = s.lock();
            if st.failed {
                return Err(st.error.take().unwrap_or_else(|| s.cancelled_error()));
            }
            if st.cancelled || st.delivered != s.chunks.len() {
                return Err(s.cancelled_error());
            }
        }
        if let Some(pieces) = &s.pieces {
            let header = s.snapshot.header();
            for (k, &i) in s.owners.iter().enumerate() {
                let t = &header.tensors[i];
                let mut p = std::mem::take(&mut *pieces[k].lock().expect("no panics while held"));
                let actual = checksum::combine(&mut p, t.length).expect("chunks tile every tensor");
                if actual != t.crc32c {
                    return Err(Error::ChecksumMismatch { path: s.snapshot.path().to_owned(), tensor: t.name.clone(), expected: t.crc32c, actual });
                }
            }
        }
        let c = &s.counters;
        let (mmap, direct, buffered) = (c.mmap.load(Ordering::Relaxed), c.direct.load(Ordering::Relaxed), c.buffered.load(Ordering::Relaxed));
        let remote = c.remote.load(Ordering::Relaxed);
        Ok(Stats {
            chunks: s.chunks.len() as u64,
            bytes: mmap + direct + buffered + remote,
            mmap_bytes: mmap,
            direct_bytes: direct,
            buffered_bytes: buffered,
            remote_bytes: remote,
        })
    }

    /// Join every reader, then release the ring. Idempotent.
    fn join(&self) {
        let mut handles = self.handles.lock().expect("no panics while held");
        for h in handles.drain(..) {
            let _ = h.join();
        }
        drop(self.lease.lock().expect("no panics while held").take());
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// A read-only shared mapping of a local snapshot, sized to its validated header.
fn map_for_reads(file: &File, path: &Path, file_size: u64) -> Result<Mmap> {
    let size = file.metadata().at(path, "stat")?.len();
    if size < file_size {
        return Err(Error::truncated(path, format!("file shrank to {size} bytes after it was opened")));
    }
    // SAFETY: read-only shared mapping of a file we hold open, sized to the validated header
    // (re-checked against the file's size right above). Snapshots are immutable by contract
    // (docs/format.md); it is read only in `ReadMode::Mmap` and otherwise serves mincore.
    unsafe { MmapOptions::new().len(file_size as usize).map(file) }.at(path, "mmap")
}

fn open_direct(path: &Path) -> Option<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path).ok()
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("no panics while held")
    }

    fn cancelled_error(&self) -> Error {
        Error::Cancelled { path: self.snapshot.path().to_owned() }
    }

    fn run_worker(&self) {
        loop {
            let k = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(chunk) = self.chunks.get(k).copied() else { break };
            let Some(slot) = self.acquire_slot() else { break };
            // SAFETY: `slot` came off the free list under the lock, so this thread owns it
            // exclusively until it is pushed to `filled` (below) or back to `free`.
            let buf = unsafe { self.ring.bufs[slot].as_mut_slice() };
            match self.read_chunk(&chunk, buf) {
                Ok(()) => {
                    self.hash_pieces(&chunk, &buf[..chunk.len as usize]);
                    let mut st = self.lock();
                    st.filled.push_back(Filled { slot, dst_offset: chunk.dst_offset, len: chunk.len });
                    self.wake.notify_all();
                }
                Err(e) => {
                    let mut st = self.lock();
                    st.free.push(slot);
                    if !st.failed {
                        st.failed = true;
                        st.error = Some(e);
                    }
                    self.stop.store(true, Ordering::Relaxed); // the other readers' requests too
                    self.wake.notify_all();
                    break;
                }
            }
        }
        self.lock().workers_done += 1;
        self.wake.notify_all();
    }

    /// A free slot, or `None` if the pipeline failed or was cancelled meanwhile.
    fn acquire_slot(&self) -> Option<usize> {
        let mut st = self.lock();
        loop {
            if st.failed || st.cancelled {
                return None;
            }
            if let Some(slot) = st.free.pop() {
                return Some(slot);
            }
            st = self.wake.wait(st).expect("no panics while held");
        }
    }

    fn read_chunk(&self, c: &Span, buf: &mut [u8]) -> Result<()> {
        let path = self.snapshot.path();
        let len = c.len as usize;
        let (off, end) = (c.file_offset as usize, c.file_offset as usize + len);
        let Some(map) = &self.map else {
            // Remote: concurrent ranged GETs straight into the slot (see `remote::RemoteObject`),
            // dropped at once if the pipeline is cancelled or another reader failed.
            self.snapshot.source().read_at_cancellable(&mut buf[..len], c.file_offset, &self.stop)?;
            self.counters.remote.fetch_add(c.len, Ordering::Relaxed);
            return Ok(());
        };
        let mode = match self.mode {
            ReadMode::Auto => {
                let cached = mapped_resident_bytes(map, c.file_offset, c.len).at(path, "mincore")? == c.len;
                if cached { ReadMode::Buffered } else { ReadMode::Direct }
            }
            m => m,
        };
        match mode {
            ReadMode::Mmap => {
                buf[..len].copy_from_slice(&map[off..end]);
                self.counters.mmap.fetch_add(c.len, Ordering::Relaxed);
            }
            ReadMode::Direct if self.direct.is_some() && !self.direct_refused.load(Ordering::Relaxed) => {
                match self.read_direct(c, buf) {
                    Ok(()) => {
                        self.counters.direct.fetch_add(c.len, Ordering::Relaxed);
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        // This file system takes O_DIRECT at open but not at read: stop trying.
                        self.direct_refused.store(true, Ordering::Relaxed);
                        self.read_buffered(c, buf)?;
                    }
                    Err(e) => return Err(Error::io(path, "direct read", e)),
                }
            }
            _ => self.read_buffered(c, buf)?,
        }
        Ok(())
    }

    fn read_buffered(&self, c: &Span, buf: &mut [u8]) -> Result<()> {
        self.snapshot.source().read_at(&mut buf[..c.len as usize], c.file_offset)?;
        self.counters.buffered.fetch_add(c.len, Ordering::Relaxed);
        Ok(())
    }

    /// O_DIRECT read of a whole number of blocks; the tail past the chunk (or short at EOF) is
    /// read into the slot's slack and ignored.
    fn read_direct(&self, c: &Span, buf: &mut [u8]) -> std::io::Result<()> {
        let file = self.direct.as_ref().expect("checked by caller");
        let want = (c.len as usize).next_multiple_of(DIRECT_ALIGN).min(buf.len());
        debug_assert_eq!(c.file_offset as usize % DIRECT_ALIGN, 0);
        let mut got = 0usize;
        while got < c.len as usize {
            let n = file.read_at(&mut buf[got..want], c.file_offset + got as u64)?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file ends inside a chunk"));
            }
            got += n;
            if got % DIRECT_ALIGN != 0 && got < c.len as usize {
                // A short read that is not block-aligned cannot be continued with O_DIRECT.
                return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
            }
        }
        Ok(())
    }

    /// With verify: the CRC32C of each tensor piece this chunk covers.
    fn hash_pieces(&self, c: &Span, data: &[u8]) {
        if let Some(pieces) = &self.pieces {
            checksum::hash_tensor_pieces(self.snapshot.header(), &self.owners, pieces, c.file_offset, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{plan, TensorSpec};
    use crate::Dtype;

    fn header(alignment: u64, lens: &[u64]) -> Header {
        let specs: Vec<TensorSpec> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| TensorSpec { name: format!("t{i}"), dtype: Dtype::U8, shape: vec![n], alias_of: None })
            .collect();
        plan(&specs, alignment, Default::default()).unwrap().header
    }

    #[test]
    fn arena_mirrors_a_4k_aligned_file_as_one_span() {
        let h = header(4096, &[10, 5000, 0, 4096, 1]);
        let a = arena_layout(&h);
        assert_eq!(a.spans.len(), 1, "contiguous tensors merge: {:?}", a.spans);
        let base = h.tensors[0].offset;
        for (t, &dst) in h.tensors.iter().zip(&a.dst_offsets) {
            assert_eq!(dst % ARENA_ALIGN, 0);
            if t.length > 0 {
                assert_eq!(t.offset - base, dst);
            }
        }
        assert_eq!(a.arena_size, h.tensors[4].end() - base);
    }

    #[test]
    fn large_alignment_is_compacted_in_the_arena() {
        let h = header(2 << 20, &[10, 5000, 3]);
        let a = arena_layout(&h);
        assert_eq!(a.dst_offsets, vec![0, 4096, 4096 + 8192]);
        assert_eq!(a.spans.len(), 3);
        assert_eq!(a.arena_size, 4096 + 8192 + 3);
    }

    #[test]
    fn chunks_tile_spans_on_direct_io_boundaries() {
        let spans = [Span { file_offset: 8192, dst_offset: 0, len: 3 * 4096 + 17 }, Span { file_offset: 1 << 20, dst_offset: 20480, len: 5 }];
        let chunks = chunk_spans(&spans, 8192);
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| c.file_offset % DIRECT_ALIGN as u64 == 0 && c.len <= 8192));
        assert_eq!(chunks.iter().map(|c| c.len).sum::<u64>(), spans.iter().map(|s| s.len).sum::<u64>());
        assert_eq!(chunks[1], Span { file_offset: 16384, dst_offset: 8192, len: 4096 + 17 });
    }
}
