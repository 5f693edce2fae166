//! CRC32C over tensor bytes, in parallel. CRC32C is *combinable*: the checksum of `a ++ b` follows
//! from the checksums of `a` and `b` and the length of `b`. So a tensor may be hashed as pieces, by
//! any thread, in any order (writer chunks, verify workers, the GPU pipeline's reader threads),
//! and the pieces folded together afterwards. That is why the format uses it and not a hash.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Checksum of one piece of a tensor, at `start` bytes into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub start: u64,
    pub len: u64,
    pub crc: u32,
}

/// Fold pieces into the checksum of the whole `total`-byte tensor. Fails (returns the first
/// missing or doubled byte offset) unless the pieces tile `0..total` exactly.
pub fn combine(pieces: &mut [Piece], total: u64) -> Result<u32, u64> {
    pieces.sort_unstable_by_key(|p| p.start);
    let mut crc = 0u32;
    let mut covered = 0u64;
    for p in pieces.iter().filter(|p| p.len > 0) {
        if p.start != covered {
            return Err(covered);
        }
        crc = crc32c::crc32c_combine(crc, p.crc, p.len as usize);
        covered += p.len;
    }
    if covered != total {
        return Err(covered);
    }
    Ok(crc)
}

/// Number of worker threads to use when the caller passes 0.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Checksums of `regions`, split into pieces of at most `chunk` bytes hashed by `threads` workers.
pub fn parallel_crc32c(regions: &[&[u8]], threads: usize, chunk: usize) -> Vec<u32> {
    parallel_crc32c_with(regions, threads, chunk, |_| ())
}

/// As `parallel_crc32c`, calling `prepare` on each piece just before it is hashed (a verify over
/// a mapping uses it to read the piece in with one batched call instead of page faults).
pub fn parallel_crc32c_with(regions: &[&[u8]], threads: usize, chunk: usize, prepare: impl Fn(&[u8]) + Sync) -> Vec<u32> {
    assert!(chunk > 0);
    let jobs: Vec<(usize, usize, usize)> = regions
        .iter()
        .enumerate()
        .flat_map(|(r, data)| {
            let n = data.len().div_ceil(chunk).max(1);
            (0..n).map(move |k| (r, k * chunk, ((k + 1) * chunk).min(data.len())))
        })
        .collect();
    let pieces: Vec<Mutex<Vec<Piece>>> = regions.iter().map(|_| Mutex::new(Vec::new())).collect();
    let next = AtomicUsize::new(0);
    let workers = threads.max(1).min(jobs.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(r, start, end)) = jobs.get(j) else { break };
                prepare(&regions[r][start..end]);
                let crc = crc32c::crc32c(&regions[r][start..end]);
                let piece = Piece { start: start as u64, len: (end - start) as u64, crc };
                pieces[r].lock().expect("no panics while held").push(piece);
            });
        }
    });
    pieces
        .into_iter()
        .zip(regions)
        .map(|(p, data)| {
            let mut p = p.into_inner().expect("no panics while held");
            combine(&mut p, data.len() as u64).expect("jobs tile each region")
        })
        .collect()
}

/// The CRC32C of each piece of an owner tensor that `data` (the file's bytes from `start`) covers,
/// pushed to that tensor's list; `combine` later joins a tensor's pieces into its checksum.
/// `owners` are the non-alias tensors in file order, `pieces[k]` belongs to `owners[k]`.
pub(crate) fn hash_tensor_pieces(header: &crate::Header, owners: &[usize], pieces: &[Mutex<Vec<Piece>>], start: u64, data: &[u8]) {
    let end = start + data.len() as u64;
    let first = owners.partition_point(|&i| header.tensors[i].end() <= start);
    for (k, &i) in owners.iter().enumerate().skip(first) {
        let t = &header.tensors[i];
        if t.offset >= end {
            break;
        }
        let (a, b) = (t.offset.max(start), t.end().min(end));
        if a >= b {
            continue;
        }
        let crc = crc32c::crc32c(&data[(a - start) as usize..(b - start) as usize]);
        pieces[k].lock().expect("no panics while held").push(Piece { start: a - t.offset, len: b - a, crc });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_matches_serial() {
        let data: Vec<u8> = (0..100_003u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let regions = [&data[..], &data[5..5], &data[17..90_000]];
        let got = parallel_crc32c(&regions, 3, 4096);
        let want: Vec<u32> = regions.iter().map(|r| crc32c::crc32c(r)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn combine_rejects_gaps_and_overlaps() {
        let mut gap = [Piece { start: 0, len: 4, crc: 0 }, Piece { start: 5, len: 1, crc: 0 }];
        assert_eq!(combine(&mut gap, 6), Err(4));
        let mut short = [Piece { start: 0, len: 4, crc: 0 }];
        assert_eq!(combine(&mut short, 6), Err(4));
    }
}
