//! A whole snapshot fetched into memory (a CPU restore's arena, or a cache file's mapping), with
//! every tensor's CRC32C checked from the pieces hashed as each part lands.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::checksum::{self, Piece};
use crate::error::{Error, Result};
use crate::reader::Snapshot;

/// Fill `dst` (exactly the file's size) with the snapshot's bytes, `part_size` bytes a read and
/// `concurrency` reads in flight, each on its own thread (for a remote source one ranged GET per
/// read; the copies and the hashing spread over the cores). Fails on the first error, on a
/// checksum mismatch, or when `cancel` is set.
pub fn fetch_verified(snapshot: &Snapshot, dst: &mut [u8], part_size: u64, concurrency: usize, cancel: &AtomicBool) -> Result<()> {
    let header = snapshot.header();
    if dst.len() as u64 != header.file_size {
        return Err(Error::InvalidArgument(format!(
            "{}: the destination holds {} bytes, the snapshot {}",
            snapshot.path().display(),
            dst.len(),
            header.file_size
        )));
    }
    let owners: Vec<usize> = (0..header.tensors.len()).filter(|&i| header.tensors[i].alias_of.is_none()).collect();
    let pieces: Vec<Mutex<Vec<Piece>>> = owners.iter().map(|_| Mutex::new(Vec::new())).collect();
    let part = part_size.max(4096) as usize;
    let parts: Vec<Mutex<Option<&mut [u8]>>> = dst.chunks_mut(part).map(|c| Mutex::new(Some(c))).collect();
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let source = snapshot.source();
    let work = || loop {
        if stop.load(Ordering::Relaxed) || cancel.load(Ordering::Relaxed) {
            break;
        }
        let k = next.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = parts.get(k) else { break };
        let buf = slot.lock().expect("no panics while held").take().expect("each part is taken once");
        let start = (k * part) as u64;
        match source.read_at_cancellable(buf, start, cancel) {
            Ok(()) => checksum::hash_tensor_pieces(header, &owners, &pieces, start, buf),
            Err(e) => {
                failed.lock().expect("no panics while held").get_or_insert(e);
                stop.store(true, Ordering::Relaxed);
            }
        }
    };
    let threads = concurrency.clamp(1, parts.len().max(1));
    std::thread::scope(|s| {
        // Joined one by one rather than left to the scope, which waits only for the closures to
        // end: when this returns (on cancel too) no thread of ours exists any more.
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
        for h in handles {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
    if let Some(e) = failed.into_inner().expect("no panics while held") {
        return Err(e);
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled { path: snapshot.path().to_owned() });
    }
    for (k, &i) in owners.iter().enumerate() {
        let t = &header.tensors[i];
        let mut p = std::mem::take(&mut *pieces[k].lock().expect("no panics while held"));
        let actual = checksum::combine(&mut p, t.length).expect("parts tile the file");
        if actual != t.crc32c {
            return Err(Error::ChecksumMismatch { path: snapshot.path().to_owned(), tensor: t.name.clone(), expected: t.crc32c, actual });
        }
    }
    Ok(())
}
