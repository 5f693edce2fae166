//! Write → open → map → verify round trips over random tensor tables, plus the writer's
//! lifecycle rules (temporary files, partial writes, aliases, overruns) and the reader's
//! copy-on-write promise.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use proptest::prelude::*;
use proptest::sample::Index;
use snapload_core::{Dtype, Error, Snapshot, SnapshotWriter, TensorSpec, WriteJob};

/// Small deterministic generator for bytes and write orders: proptest shrinking buys nothing for
/// tensor contents, and drawing megabytes through strategies would be slow.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[derive(Clone, Debug)]
enum Gen {
    New { dtype: Dtype, shape: Vec<u64> },
    /// Alias of one of the earlier non-alias tensors (picked by index); a real tensor when none.
    Alias(Index),
}

fn shape() -> impl Strategy<Value = Vec<u64>> {
    prop_oneof![
        // 0-d up to rank 4, with zero-size dimensions now and then.
        4 => prop::collection::vec(0..=6u64, 0..=4),
        // One longer vector, so some tensors cross page boundaries.
        1 => prop::collection::vec(500..=3000u64, 1),
    ]
}

fn gen_entry() -> impl Strategy<Value = Gen> {
    prop_oneof![
        4 => (prop::sample::select(Dtype::ALL), shape()).prop_map(|(dtype, shape)| Gen::New { dtype, shape }),
        1 => any::<Index>().prop_map(Gen::Alias),
    ]
}

/// Names and metadata with characters that need JSON escaping and multi-byte UTF-8.
fn text() -> impl Strategy<Value = String> {
    "[a-z0-9_./\"\\\\ \u{e9}\u{4e2d}\u{1F600}\n]{0,10}"
}

#[derive(Clone, Debug)]
struct Case {
    specs: Vec<TensorSpec>,
    metadata: BTreeMap<String, String>,
    alignment: u64,
    seed: u64,
    parallel: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec((text(), gen_entry()), 0..=8),
        prop::collection::btree_map(text(), text(), 0..=4),
        // 2 MiB alignment is the large-page case; files stay sparse, but keep it rare.
        prop_oneof![9 => Just(4096u64), 1 => Just(2u64 << 20)],
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(entries, metadata, alignment, seed, parallel)| {
            let mut specs: Vec<TensorSpec> = Vec::new();
            for (i, (base, g)) in entries.into_iter().enumerate() {
                // The index suffix keeps names unique whatever the random part is.
                let name = format!("{base}#{i}");
                let owners: Vec<&TensorSpec> = specs.iter().filter(|s| s.alias_of.is_none()).collect();
                let spec = match g {
                    Gen::New { dtype, shape } => TensorSpec { name, dtype, shape, alias_of: None },
                    Gen::Alias(_) if owners.is_empty() => TensorSpec { name, dtype: Dtype::F32, shape: vec![], alias_of: None },
                    Gen::Alias(pick) => {
                        let t = owners[pick.index(owners.len())];
                        TensorSpec { name, dtype: t.dtype, shape: t.shape.clone(), alias_of: Some(t.name.clone()) }
                    }
                };
                specs.push(spec);
            }
            Case { specs, metadata, alignment, seed, parallel }
        })
}

fn byte_len(s: &TensorSpec) -> usize {
    snapload_core::header::byte_length(s.dtype, &s.shape).expect("small shapes") as usize
}

fn temporaries_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".snapload-tmp-"))
        .collect()
}

fn run_case(c: &Case) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("model.snap");
    let mut rng = Rng(c.seed);
    // Contents per tensor index; aliases have none of their own.
    let data: Vec<Option<Vec<u8>>> =
        c.specs.iter().map(|s| s.alias_of.is_none().then(|| rng.bytes(byte_len(s)))).collect();

    let writer = SnapshotWriter::create(&dest, &c.specs, c.alignment, c.metadata.clone()).unwrap();
    let owned: Vec<(usize, &[u8])> =
        data.iter().enumerate().filter_map(|(i, d)| d.as_deref().map(|d| (i, d))).collect();
    if c.parallel {
        // Whole tensors or two halves each, on 0 (= default) to 4 threads.
        let mut jobs = Vec::new();
        for &(index, bytes) in &owned {
            let cut = rng.below(bytes.len() as u64 + 1) as usize;
            if rng.below(2) == 0 {
                jobs.push(WriteJob { index, offset: 0, data: bytes });
            } else {
                jobs.push(WriteJob { index, offset: 0, data: &bytes[..cut] });
                jobs.push(WriteJob { index, offset: cut as u64, data: &bytes[cut..] });
            }
        }
        writer.write_parallel(&jobs, rng.below(5) as usize).unwrap();
    } else {
        // Every tensor cut into up to three pieces, all pieces written in a shuffled order.
        let mut pieces: Vec<(usize, usize, &[u8])> = Vec::new();
        for &(index, bytes) in &owned {
            let mut cuts = [rng.below(bytes.len() as u64 + 1) as usize, rng.below(bytes.len() as u64 + 1) as usize];
            cuts.sort_unstable();
            pieces.push((index, 0, &bytes[..cuts[0]]));
            pieces.push((index, cuts[0], &bytes[cuts[0]..cuts[1]]));
            pieces.push((index, cuts[1], &bytes[cuts[1]..]));
        }
        for i in (1..pieces.len()).rev() {
            pieces.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for (index, offset, bytes) in pieces {
            writer.write(index, offset as u64, bytes).unwrap();
        }
    }
    let written = writer.finish().unwrap();
    prop_assert!(temporaries_in(dir.path()).is_empty(), "temporary left behind: {:?}", temporaries_in(dir.path()));

    let snap = Snapshot::open(&dest).unwrap();
    let h = snap.header();
    prop_assert_eq!(h, &written);
    prop_assert_eq!(h.alignment, c.alignment);
    prop_assert_eq!(&h.metadata, &c.metadata);
    prop_assert_eq!(h.file_size, fs::metadata(&dest).unwrap().len());
    prop_assert_eq!(h.tensors.len(), c.specs.len());
    prop_assert!(snap.data_start() % c.alignment == 0);

    let map = snap.map_private().unwrap();
    let bytes = map.as_slice();
    prop_assert_eq!(bytes.len() as u64, h.file_size);
    for (i, (t, s)) in h.tensors.iter().zip(&c.specs).enumerate() {
        prop_assert_eq!(&t.name, &s.name);
        prop_assert_eq!(t.dtype, s.dtype);
        prop_assert_eq!(&t.shape, &s.shape);
        prop_assert_eq!(t.length as usize, byte_len(s));
        prop_assert!(t.offset % c.alignment == 0, "tensor {} at unaligned offset {}", t.name, t.offset);
        prop_assert!(t.offset >= snap.data_start());
        let region = &bytes[t.offset as usize..t.end() as usize];
        prop_assert_eq!(t.crc32c, crc32c::crc32c(region));
        match &s.alias_of {
            None => {
                prop_assert_eq!(t.alias_of, None);
                prop_assert!(region == data[i].as_deref().unwrap(), "bytes of {} differ", t.name);
            }
            Some(target) => {
                let ti = c.specs.iter().position(|x| &x.name == target).unwrap();
                prop_assert_eq!(t.alias_of, Some(ti));
                prop_assert_eq!(t.offset, h.tensors[ti].offset);
                prop_assert_eq!(t.length, h.tensors[ti].length);
                prop_assert_eq!(t.crc32c, h.tensors[ti].crc32c);
            }
        }
    }
    snap.verify(bytes, 0).unwrap();
    snap.verify(bytes, 3).unwrap();
    Ok(())
}

proptest! {
    // Each case writes, fsyncs and renames a real file; 128 cases take about a second.
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn write_open_map_verify_round_trips(c in case()) {
        run_case(&c)?;
    }
}

fn specs_a_b_tied() -> Vec<TensorSpec> {
    vec![
        TensorSpec { name: "a".into(), dtype: Dtype::F32, shape: vec![3, 5], alias_of: None },
        TensorSpec { name: "b".into(), dtype: Dtype::U8, shape: vec![7], alias_of: None },
        TensorSpec { name: "tied".into(), dtype: Dtype::F32, shape: vec![3, 5], alias_of: Some("a".into()) },
    ]
}

#[test]
fn dropped_writer_leaves_no_temporary_and_keeps_the_destination() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.snap");
    fs::write(&dest, b"previous snapshot").unwrap();
    let writer = SnapshotWriter::create(&dest, &specs_a_b_tied(), 4096, BTreeMap::new()).unwrap();
    let tmp = writer.temporary_path().to_owned();
    assert!(tmp.exists());
    writer.write(0, 0, &[1u8; 60]).unwrap();
    drop(writer);
    assert!(!tmp.exists());
    assert!(temporaries_in(dir.path()).is_empty());
    assert_eq!(fs::read(&dest).unwrap(), b"previous snapshot");
}

#[test]
fn finish_fails_naming_a_tensor_that_was_not_fully_written() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.snap");
    let writer = SnapshotWriter::create(&dest, &specs_a_b_tied(), 4096, BTreeMap::new()).unwrap();
    writer.write(0, 0, &[1u8; 60]).unwrap();
    writer.write(1, 0, &[2u8; 3]).unwrap(); // 4 of b's 7 bytes missing
    let err = writer.finish().unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("\"b\"") && msg.contains("from 3"), "{msg}");
    assert!(!dest.exists());
    assert!(temporaries_in(dir.path()).is_empty());
}

#[test]
fn finish_fails_when_a_range_is_written_twice() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.snap");
    let writer = SnapshotWriter::create(&dest, &specs_a_b_tied(), 4096, BTreeMap::new()).unwrap();
    writer.write(0, 0, &[1u8; 60]).unwrap();
    writer.write(1, 0, &[2u8; 7]).unwrap();
    writer.write(1, 2, &[2u8; 2]).unwrap();
    let err = writer.finish().unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("\"b\"")), "{err:?}");
    assert!(!dest.exists());
}

#[test]
fn writing_to_an_alias_fails() {
    let dir = tempfile::tempdir().unwrap();
    let writer = SnapshotWriter::create(&dir.path().join("m.snap"), &specs_a_b_tied(), 4096, BTreeMap::new()).unwrap();
    let err = writer.write(2, 0, &[0u8; 4]).unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("\"tied\"") && m.contains("alias")), "{err:?}");
    let err = writer.write(3, 0, &[]).unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("index 3")), "{err:?}");
}

#[test]
fn overrunning_a_tensor_fails() {
    let dir = tempfile::tempdir().unwrap();
    let writer = SnapshotWriter::create(&dir.path().join("m.snap"), &specs_a_b_tied(), 4096, BTreeMap::new()).unwrap();
    for (offset, len) in [(6u64, 2usize), (0, 8), (8, 0), (u64::MAX, 1)] {
        let err = writer.write(1, offset, &vec![0u8; len]).unwrap_err();
        assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("\"b\"") && m.contains("overrun")), "{err:?}");
    }
    // The failed writes recorded nothing: a complete write afterwards still finishes.
    writer.write(0, 0, &[1u8; 60]).unwrap();
    writer.write(1, 0, &[2u8; 7]).unwrap();
    writer.finish().unwrap();
}

#[test]
fn temporaries_of_dead_writers_are_removed_by_the_next_writer() {
    let dir = tempfile::tempdir().unwrap();
    // pid_max is at most 4194304 on Linux, so pid 999999 is normally free; make sure.
    let dead = (999_999..).find(|p| !Path::new(&format!("/proc/{p}")).exists()).unwrap();
    let stale = dir.path().join(format!(".m.snap.snapload-tmp-{dead}-x"));
    let live = dir.path().join(format!(".m.snap.snapload-tmp-{}-y", std::process::id()));
    let other = dir.path().join(format!(".other.snap.snapload-tmp-{dead}-x"));
    for p in [&stale, &live, &other] {
        fs::write(p, b"junk").unwrap();
    }
    let writer = SnapshotWriter::create(&dir.path().join("m.snap"), &specs_a_b_tied(), 4096, BTreeMap::new()).unwrap();
    assert!(!stale.exists(), "temporary of dead pid {dead} was not removed");
    assert!(live.exists(), "temporary of a live writer must be kept");
    assert!(other.exists(), "temporary of another destination must be kept");
    drop(writer);
}

#[test]
fn writing_into_the_private_mapping_leaves_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.snap");
    let writer = SnapshotWriter::create(&dest, &specs_a_b_tied(), 4096, BTreeMap::new()).unwrap();
    writer.write(0, 0, &[1u8; 60]).unwrap();
    writer.write(1, 0, &[2u8; 7]).unwrap();
    writer.finish().unwrap();
    let before = fs::read(&dest).unwrap();

    let snap = Snapshot::open(&dest).unwrap();
    let mut map = snap.map_private().unwrap();
    let a = snap.header().tensors[0].offset as usize;
    let len = map.len();
    // SAFETY: the mapping is `len` bytes long and writable (copy-on-write); we write inside it.
    unsafe { std::ptr::write_bytes(map.as_mut_ptr(), 0xee, len) };
    assert_eq!(map.as_slice()[a], 0xee);
    drop(map);
    drop(snap);

    assert_eq!(fs::read(&dest).unwrap(), before);
    let again = Snapshot::open(&dest).unwrap();
    let map = again.map_private().unwrap();
    assert_eq!(map.as_slice()[a], 1);
    again.verify(map.as_slice(), 1).unwrap();
}

#[test]
fn sizes_that_overflow_u64_are_rejected_not_wrapped() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.snap");
    // Each tensor alone fits in u64; the two together do not.
    let half = 1u64 << 63;
    let specs: Vec<TensorSpec> = ["x", "y"]
        .iter()
        .map(|n| TensorSpec { name: (*n).into(), dtype: Dtype::U8, shape: vec![half], alias_of: None })
        .collect();
    let err = SnapshotWriter::create(&dest, &specs, 4096, BTreeMap::new()).err().expect("must fail");
    assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("overflow")), "{err:?}");
    assert!(temporaries_in(dir.path()).is_empty());
}
