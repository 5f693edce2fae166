//! Writing a snapshot: laid out up front, filled by pieces from any thread, published atomically.
//!
//! The bytes go to a temporary file in the destination's folder; `finish` writes the header with
//! the checksums gathered while writing, fsyncs, and renames over the destination. A writer that
//! is dropped unfinished (error, cancellation) deletes its temporary file, and a new writer
//! removes temporaries left by writers that died (their process is gone).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::checksum::{self, Piece};
use crate::error::{Error, IoContext, Result};
use crate::header::{encode_preamble, Header, PREAMBLE_LEN};
use crate::layout::{plan, TensorSpec};

const TMP_MARKER: &str = ".snapload-tmp-";
/// Source bytes are hashed and written in pieces of this size, so one large tensor still
/// spreads over all writer threads.
pub const WRITE_PIECE: usize = 32 << 20;

pub struct SnapshotWriter {
    dest: PathBuf,
    tmp: PathBuf,
    file: File,
    header: Header,
    header_len: u64,
    pieces: Vec<Mutex<Vec<Piece>>>,
    finished: bool,
}

/// One piece of tensor data to write: tensor index, byte offset inside the tensor, the bytes.
pub struct WriteJob<'a> {
    pub index: usize,
    pub offset: u64,
    pub data: &'a [u8],
}

impl SnapshotWriter {
    pub fn create(dest: &Path, specs: &[TensorSpec], alignment: u64, metadata: BTreeMap<String, String>) -> Result<Self> {
        let layout = plan(specs, alignment, metadata)?;
        let (dir, file_name) = check_destination(dest)?;
        remove_stale_temporaries(&dir, &file_name);
        let tmp = dir.join(format!(".{file_name}{TMP_MARKER}{}-{}", std::process::id(), unique_suffix()));
        // Errors name the destination the caller gave, never the hidden temporary file.
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp).at(dest, "create temporary file")?;
        let pieces = layout.header.tensors.iter().map(|_| Mutex::new(Vec::new())).collect();
        let writer = SnapshotWriter { dest: dest.to_owned(), tmp, file, header: layout.header, header_len: layout.header_len, pieces, finished: false };
        // Sized up front: gaps stay holes (read as zeros) and pieces may land in any order.
        writer.file.set_len(writer.header.file_size).at(dest, "size temporary file")?;
        Ok(writer)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn temporary_path(&self) -> &Path {
        &self.tmp
    }

    /// Write `data` at `offset` bytes into tensor `index`; safe to call from many threads.
    pub fn write(&self, index: usize, offset: u64, data: &[u8]) -> Result<()> {
        let t = self
            .header
            .tensors
            .get(index)
            .ok_or_else(|| Error::InvalidArgument(format!("tensor index {index} out of range")))?;
        if t.alias_of.is_some() {
            return Err(Error::InvalidArgument(format!("tensor {:?} is an alias; write its target instead", t.name)));
        }
        offset.checked_add(data.len() as u64).filter(|&e| e <= t.length).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "tensor {:?}: {} bytes at {offset} overrun its {} bytes",
                t.name,
                data.len(),
                t.length
            ))
        })?;
        let crc = crc32c::crc32c(data);
        self.file.write_all_at(data, t.offset + offset).at(&self.dest, "write tensor data to the temporary file")?;
        self.pieces[index].lock().expect("no panics while held").push(Piece { start: offset, len: data.len() as u64, crc });
        Ok(())
    }

    /// Write whole tensors (or pieces) with `threads` workers; big inputs are split so that all
    /// workers stay busy. Hashing happens in the same pass as the write.
    pub fn write_parallel(&self, jobs: &[WriteJob<'_>], threads: usize) -> Result<()> {
        let split: Vec<(usize, u64, &[u8])> = jobs
            .iter()
            .flat_map(|j| {
                let n = j.data.len().div_ceil(WRITE_PIECE).max(1);
                (0..n).map(move |k| {
                    let s = k * WRITE_PIECE;
                    let e = ((k + 1) * WRITE_PIECE).min(j.data.len());
                    (j.index, j.offset + s as u64, &j.data[s..e])
                })
            })
            .collect();
        let next = AtomicUsize::new(0);
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        let threads = if threads == 0 { checksum::default_threads() } else { threads };
        std::thread::scope(|s| {
            for _ in 0..threads.min(split.len()).max(1) {
                s.spawn(|| loop {
                    if first_error.lock().expect("no panics while held").is_some() {
                        break;
                    }
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(index, offset, data)) = split.get(k) else { break };
                    if let Err(e) = self.write(index, offset, data) {
                        first_error.lock().expect("no panics while held").get_or_insert(e);
                        break;
                    }
                });
            }
        });
        match first_error.into_inner().expect("no panics while held") {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Check every tensor was written exactly once, write the header, fsync, rename into place.
    pub fn finish(mut self) -> Result<Header> {
        for i in 0..self.header.tensors.len() {
            let t = &self.header.tensors[i];
            if t.alias_of.is_some() {
                continue;
            }
            let mut pieces = std::mem::take(&mut *self.pieces[i].lock().expect("no panics while held"));
            let crc = checksum::combine(&mut pieces, t.length).map_err(|at| {
                Error::InvalidArgument(format!(
                    "tensor {:?}: bytes from {at} were not written exactly once (of {})",
                    t.name, t.length
                ))
            })?;
            self.header.tensors[i].crc32c = crc;
        }
        for i in 0..self.header.tensors.len() {
            if let Some(target) = self.header.tensors[i].alias_of {
                self.header.tensors[i].crc32c = self.header.tensors[target].crc32c;
            }
        }
        let json = self.header.encode();
        assert_eq!(json.len() as u64, self.header_len, "checksums are fixed width, so the header length is fixed");
        self.file.write_all_at(&encode_preamble(&json), 0).at(&self.dest, "write preamble to the temporary file")?;
        self.file.write_all_at(&json, PREAMBLE_LEN).at(&self.dest, "write header to the temporary file")?;
        self.file.sync_all().at(&self.dest, "fsync temporary file")?;
        fs::rename(&self.tmp, &self.dest).at(&self.dest, "rename temporary file into place")?;
        self.finished = true;
        if let Some(dir) = self.dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Make the rename itself durable; a folder that cannot be opened is not an error.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(self.header.clone())
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Check that a snapshot can be published at `dest` before any work is done for it: `dest` names
/// a file (not a folder), its folder exists, is a folder and is writable. Returns that folder and
/// the file name. Every error names `dest`, the path the caller gave.
pub fn check_destination(dest: &Path) -> Result<(PathBuf, String)> {
    let not_a_file = || Error::InvalidArgument(format!("{}: not a file path", dest.display()));
    let file_name = dest.file_name().ok_or_else(not_a_file)?.to_string_lossy().into_owned();
    if dest.is_dir() {
        return Err(Error::io(dest, "destination is a directory", io::Error::from_raw_os_error(libc::EISDIR)));
    }
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    match fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(Error::io(dest, "destination's parent is not a directory", io::Error::from_raw_os_error(libc::ENOTDIR))),
        Err(e) => return Err(Error::io(dest, "destination's directory", e)),
    }
    let c_dir = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| not_a_file())?;
    // SAFETY: access reads the NUL-terminated path we own and writes no memory. W_OK|X_OK is what
    // creating a file in the folder needs; it also reports a read-only file system (EROFS).
    if unsafe { libc::access(c_dir.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(Error::io(dest, "destination's directory is not writable", io::Error::last_os_error()));
    }
    Ok((dir, file_name))
}

fn unique_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{nanos:08x}{:04x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Delete `.NAME.snapload-tmp-PID-*` files whose writer process no longer exists.
fn remove_stale_temporaries(dir: &Path, file_name: &str) {
    let prefix = format!(".{file_name}{TMP_MARKER}");
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        if !process_alive(pid) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 sends nothing; it only asks whether `pid` exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
