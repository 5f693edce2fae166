//! The ring is exclusive to one pipeline at a time, and `cancel` returns only once no reader
//! thread can write into it any more: the two guarantees concurrent restores rely on.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use snapload_core::pipeline::{Options, Pipeline, ReadMode, Ring};
use snapload_core::{Dtype, Error, Snapshot, SnapshotWriter, TensorSpec};

const TENSORS: usize = 6;
const LEN: usize = 64 << 10;

fn write_snapshot(dest: &Path, seed: u8) -> Vec<Vec<u8>> {
    let specs: Vec<TensorSpec> = (0..TENSORS)
        .map(|i| TensorSpec { name: format!("t{i}"), dtype: Dtype::U8, shape: vec![LEN as u64], alias_of: None })
        .collect();
    let data: Vec<Vec<u8>> = (0..TENSORS).map(|i| (0..LEN).map(|j| (j as u8) ^ (i as u8) ^ seed).collect()).collect();
    let writer = SnapshotWriter::create(dest, &specs, 4096, BTreeMap::new()).unwrap();
    for (i, d) in data.iter().enumerate() {
        writer.write(i, 0, d).unwrap();
    }
    writer.finish().unwrap();
    data
}

fn options() -> Options {
    Options { threads: 3, mode: ReadMode::Buffered, verify: true }
}

/// Drive a pipeline to the end with a host sink; returns the arena.
fn drain(p: &Pipeline, ring: &Ring) -> Vec<u8> {
    let mut arena = vec![0u8; p.layout().arena_size as usize];
    let addresses = ring.addresses();
    while let Some(f) = p.next_filled().unwrap() {
        // SAFETY: the slot was handed to this consumer by `next_filled` and is not released
        // until after the copy; its buffer is `slot_size` bytes long and `len` fits in it.
        let src = unsafe { std::slice::from_raw_parts(addresses[f.slot] as *const u8, f.len as usize) };
        arena[f.dst_offset as usize..(f.dst_offset + f.len) as usize].copy_from_slice(src);
        p.release(f.slot).unwrap();
    }
    arena
}

#[test]
fn a_leased_ring_refuses_a_second_pipeline_until_the_first_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.snap"), dir.path().join("b.snap"));
    let data_a = write_snapshot(&a, 1);
    write_snapshot(&b, 2);
    let ring = Arc::new(Ring::new(2, 16 << 10).unwrap());
    let first = Pipeline::start(Arc::new(Snapshot::open(&a).unwrap()), ring.clone(), &options()).unwrap();
    assert!(ring.is_leased());
    let second = Pipeline::start(Arc::new(Snapshot::open(&b).unwrap()), ring.clone(), &options());
    assert!(matches!(second, Err(Error::InvalidArgument(ref m)) if m.contains("in use by another restore")));

    let arena = drain(&first, &ring);
    let layout = first.layout().clone();
    first.finish().unwrap();
    assert!(!ring.is_leased(), "finish gives the ring back");
    for (i, d) in data_a.iter().enumerate() {
        let at = layout.dst_offsets[i] as usize;
        assert_eq!(&arena[at..at + LEN], &d[..], "tensor {i}");
    }
    let again = Pipeline::start(Arc::new(Snapshot::open(&b).unwrap()), ring.clone(), &options()).unwrap();
    drain(&again, &ring);
    again.finish().unwrap();
}

#[test]
fn cancel_joins_the_readers_before_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.snap");
    write_snapshot(&path, 3);
    let ring = Arc::new(Ring::new(2, 4096).unwrap());
    let snap = Arc::new(Snapshot::open(&path).unwrap());
    let p = Pipeline::start(snap.clone(), ring.clone(), &options()).unwrap();
    // Readers fill both slots and wait for more; the consumer takes one and walks away.
    let held = p.next_filled().unwrap().unwrap();
    p.cancel();
    assert_eq!(p.readers_alive(), 0, "reader threads still running after cancel returned");
    assert!(!ring.is_leased(), "cancel gives the ring back once the readers are gone");
    // No reader writes into the ring any more: poison every slot and check it stays poisoned.
    for &a in &ring.addresses() {
        // SAFETY: the pipeline was cancelled and its readers joined, so nothing else writes the
        // slots; each is `slot_size` bytes long.
        unsafe { std::ptr::write_bytes(a as *mut u8, 0xCD, ring.slot_size()) };
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    for &a in &ring.addresses() {
        // SAFETY: as above, read only.
        let s = unsafe { std::slice::from_raw_parts(a as *const u8, ring.slot_size()) };
        assert!(s.iter().all(|&b| b == 0xCD), "a reader wrote into the ring after cancel");
    }
    assert!(matches!(p.next_filled(), Err(Error::Cancelled { .. })));
    assert!(p.release(held.slot).is_ok(), "the consumer may still hand back what it held");
    drop(p);
    assert_eq!(Arc::strong_count(&snap), 1);
}

#[test]
fn dropping_a_pipeline_mid_read_releases_the_ring() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.snap");
    write_snapshot(&path, 4);
    let ring = Arc::new(Ring::new(1, 4096).unwrap());
    for _ in 0..3 {
        let p = Pipeline::start(Arc::new(Snapshot::open(&path).unwrap()), ring.clone(), &options()).unwrap();
        let _ = p.next_filled().unwrap();
        drop(p);
        assert!(!ring.is_leased());
    }
}
