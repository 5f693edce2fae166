//! Opening a snapshot: the header is read and validated with plain reads before any mapping is
//! made, so nothing later trusts the file blindly.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use memmap2::{MmapMut, MmapOptions};

use crate::checksum;
use crate::error::{Error, IoContext, Result};
use crate::header::{parse_preamble, Header, PREAMBLE_LEN};
use crate::source::{FileSource, Source};

/// Open `path` for reading and return it with its size; a folder is `EISDIR` and any other
/// non-regular file (a device, a FIFO) `InvalidInput`, both naming `path`, instead of whatever a
/// later `mmap` or read of it would say ("No such device" for a folder).
pub fn open_regular_file(path: &Path) -> Result<(File, u64)> {
    let file = File::open(path).at(path, "open")?;
    let meta = file.metadata().at(path, "stat")?;
    if meta.is_dir() {
        return Err(Error::io(path, "open", std::io::Error::from_raw_os_error(libc::EISDIR)));
    }
    if !meta.is_file() {
        return Err(Error::io(path, "open", std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")));
    }
    Ok((file, meta.len()))
}

/// An open snapshot: the validated header and the open file it came from. The file stays open
/// for as long as this (and any mapping made from it) lives, so a rename over the path while
/// tensors are in use changes nothing for them.
pub struct Snapshot {
    path: PathBuf,
    source: Arc<dyn Source>,
    header: Header,
    header_len: u64,
}

impl Snapshot {
    pub fn open(path: &Path) -> Result<Snapshot> {
        let (file, size) = open_regular_file(path)?;
        // Local reads are cheap: read exactly the preamble, then exactly the header.
        Snapshot::from_source(Arc::new(FileSource::new(path, file, size)), PREAMBLE_LEN)
    }

    /// Read and validate the preamble and header of any source. The first read takes
    /// `first_read` bytes (at least the preamble): a remote source passes enough to hold a
    /// typical header, so one ranged request usually covers both.
    pub fn from_source(source: Arc<dyn Source>, first_read: u64) -> Result<Snapshot> {
        Snapshot::from_source_cancellable(source, first_read, &AtomicBool::new(false))
    }

    /// `from_source` whose reads give up once `cancel` is set (a remote header read may stall).
    pub fn from_source_cancellable(source: Arc<dyn Source>, first_read: u64, cancel: &AtomicBool) -> Result<Snapshot> {
        let path = source.name().to_owned();
        let size = source.size();
        let mut head = vec![0u8; first_read.max(PREAMBLE_LEN).min(size) as usize];
        source.read_at_cancellable(&mut head, 0, cancel)?;
        let pre = parse_preamble(&path, &head[..PREAMBLE_LEN.min(size) as usize], size)?;
        let json_end = (PREAMBLE_LEN + pre.header_len) as usize;
        if head.len() < json_end {
            let have = head.len();
            head.resize(json_end, 0);
            source.read_at_cancellable(&mut head[have..], have as u64, cancel)?;
        }
        let header = Header::parse(&path, pre, &head[PREAMBLE_LEN as usize..json_end], size)?;
        Ok(Snapshot { path, source, header, header_len: pre.header_len })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The same validated snapshot read from another source holding the same bytes (a cache
    /// entry's snapshot, read from the object itself rather than through the entry).
    pub fn with_source(&self, source: Arc<dyn Source>) -> Snapshot {
        Snapshot { path: self.path.clone(), source, header: self.header.clone(), header_len: self.header_len }
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The open file of a local snapshot; `None` for a remote one.
    pub fn file(&self) -> Option<&File> {
        self.source.as_file()
    }

    /// Where the bytes come from (a local file or a remote object).
    pub fn source(&self) -> &Arc<dyn Source> {
        &self.source
    }

    pub fn is_remote(&self) -> bool {
        self.source.as_file().is_none()
    }

    /// The local file, or an error saying that a remote snapshot has none.
    fn local_file(&self) -> Result<&File> {
        self.file().ok_or_else(|| {
            Error::InvalidArgument(format!("{}: a remote snapshot cannot be mapped; fetch it into memory or a cache first", self.path.display()))
        })
    }

    pub fn data_start(&self) -> u64 {
        self.header.data_start(self.header_len)
    }

    /// Map the whole file copy-on-write: pages are shared with the page cache until written, and
    /// writes never reach the file.
    pub fn map_private(&self) -> Result<Mapping> {
        self.check_size_unchanged()?;
        let file = self.local_file()?;
        // SAFETY: MAP_PRIVATE of a file we hold open. The format's contract (docs/format.md) is that
        // snapshots are immutable and replaced by rename, never rewritten in place; we checked the
        // size still matches the validated header just above, so every validated offset is mapped.
        // MAP_NORESERVE: a private writable mapping is otherwise charged in full against the
        // commit limit, so a snapshot larger than RAM + swap could not be mapped at all. Only
        // pages a caller writes become private copies; those are ordinary anonymous memory.
        let map = unsafe { MmapOptions::new().len(self.header.file_size as usize).no_reserve_swap().map_copy(file) }
            .at(&self.path, "mmap")?;
        Ok(Mapping { map, file: file.try_clone().at(&self.path, "dup file descriptor")? })
    }

    fn check_size_unchanged(&self) -> Result<()> {
        let now = self.local_file()?.metadata().at(&self.path, "stat")?.len();
        if now < self.header.file_size {
            return Err(Error::truncated(&self.path, format!("file shrank to {now} bytes after it was opened")));
        }
        Ok(())
    }

    /// Check every tensor's checksum against `data` (the file's bytes, normally the mapping), in
    /// parallel; aliases share their target's bytes and are checked once.
    pub fn verify(&self, data: &[u8], threads: usize) -> Result<()> {
        assert_eq!(data.len() as u64, self.header.file_size, "verify needs the whole file");
        let owners: Vec<_> = self.header.tensors.iter().filter(|t| t.alias_of.is_none()).collect();
        let regions: Vec<&[u8]> = owners.iter().map(|t| &data[t.offset as usize..t.end() as usize]).collect();
        let threads = if threads == 0 { checksum::default_threads() } else { threads };
        // Pieces start on the alignment (a page multiple), so each can be populated in one
        // batched call right before it is hashed: the read and the hash of a piece happen on
        // one thread, back to back, and the other workers' reads overlap them. Failing that
        // (old kernel), the hash itself faults the pages in.
        let populate = |piece: &[u8]| {
            // SAFETY: `piece` lies inside the live mapping `data`, starts on a page boundary
            // (tensor offsets are multiples of the alignment, pieces multiples of 8 MiB), and
            // MADV_POPULATE_READ only reads pages in; it never changes their contents.
            let _ = unsafe { libc::madvise(piece.as_ptr() as *mut libc::c_void, piece.len(), libc::MADV_POPULATE_READ) };
        };
        // More workers than cores: while some wait on the disk, others hash.
        let crcs = checksum::parallel_crc32c_with(&regions, threads.max(4), 8 << 20, populate);
        for (t, actual) in owners.iter().zip(crcs) {
            if actual != t.crc32c {
                return Err(Error::ChecksumMismatch { path: self.path.clone(), tensor: t.name.clone(), expected: t.crc32c, actual });
            }
        }
        Ok(())
    }
}

/// A private (copy-on-write) mapping of a whole snapshot file. It owns a descriptor of the file,
/// so it stays valid whatever happens to the path.
pub struct Mapping {
    map: MmapMut,
    #[allow(dead_code)] // held only to keep the inode open
    file: File,
}

impl Mapping {
    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Hint the kernel about how a byte range will be used (see `residency::Advice`).
    pub fn advise(&self, advice: memmap2::Advice, offset: usize, len: usize) -> std::io::Result<()> {
        self.map.advise_range(advice, offset, len)
    }
}
