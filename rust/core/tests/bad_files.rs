//! Damaged and hostile files: each must fail with the right `Error` variant, and the message must
//! name the file (and the tensor, where one is to blame). Structural damage is made by editing the
//! header JSON and re-encoding it with a correct checksum, so that the validation rules themselves
//! are exercised rather than the header checksum.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use snapload_core::header::{encode_preamble, Header, MAX_HEADER_LEN, PREAMBLE_LEN};
use snapload_core::{Dtype, Error, Snapshot, SnapshotWriter, TensorSpec};

/// A valid 4096-aligned file: "a" f32[4,4], "b" u8[10], "tied" = alias of "a", "c" f16[3].
fn valid_file() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("v.snap");
    let spec = |name: &str, dtype, shape: &[u64], alias: Option<&str>| TensorSpec {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        alias_of: alias.map(Into::into),
    };
    let specs = [
        spec("a", Dtype::F32, &[4, 4], None),
        spec("b", Dtype::U8, &[10], None),
        spec("tied", Dtype::F32, &[4, 4], Some("a")),
        spec("c", Dtype::F16, &[3], None),
    ];
    let meta = BTreeMap::from([("source".to_owned(), "test".to_owned())]);
    let w = SnapshotWriter::create(&dest, &specs, 4096, meta).unwrap();
    w.write(0, 0, &(0..64).collect::<Vec<u8>>()).unwrap();
    w.write(1, 0, b"0123456789").unwrap();
    w.write(3, 0, &[9, 8, 7, 6, 5, 4]).unwrap();
    w.finish().unwrap();
    fs::read(&dest).unwrap()
}

fn header_len(file: &[u8]) -> usize {
    u64::from_le_bytes(file[16..24].try_into().unwrap()) as usize
}

fn header_json(file: &[u8]) -> Value {
    serde_json::from_slice(&file[32..32 + header_len(file)]).unwrap()
}

/// Replace the header with `json` (bytes, with a correct preamble checksum), keeping the data
/// where it was. The test header is far smaller than the 4096-byte header area, so it fits.
fn with_header_bytes(file: &[u8], json: &[u8]) -> Vec<u8> {
    assert!(PREAMBLE_LEN as usize + json.len() <= 4096, "edited header outgrew the header area");
    let mut out = file.to_vec();
    out[..4096].fill(0);
    out[..32].copy_from_slice(&encode_preamble(json));
    out[32..32 + json.len()].copy_from_slice(json);
    out
}

fn with_header(file: &[u8], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut h = header_json(file);
    edit(&mut h);
    with_header_bytes(file, &serde_json::to_vec(&h).unwrap())
}

fn tensor<'a>(h: &'a mut Value, name: &str) -> &'a mut Value {
    h["tensors"].as_array_mut().unwrap().iter_mut().find(|t| t["name"] == name).unwrap()
}

/// Open `bytes` as a file and return the error, checking that the in-memory parser used by the
/// fuzz target agrees on the variant.
fn open_err(bytes: &[u8]) -> (Error, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.snap");
    fs::write(&path, bytes).unwrap();
    let err = match Snapshot::open(&path) {
        Ok(_) => panic!("{} bytes opened without error", bytes.len()),
        Err(e) => e,
    };
    let mem = Header::parse_bytes(&path, bytes).expect_err("parse_bytes accepted what open rejected");
    assert_eq!(std::mem::discriminant(&err), std::mem::discriminant(&mem), "open: {err}; parse_bytes: {mem}");
    (err, path)
}

fn assert_names(err: &Error, path: &Path, words: &[&str]) {
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "message does not name the file: {msg}");
    for w in words {
        assert!(msg.contains(w), "message does not mention {w:?}: {msg}");
    }
}

fn expect_corrupt(bytes: &[u8], words: &[&str]) {
    let (err, path) = open_err(bytes);
    assert!(matches!(err, Error::CorruptHeader { .. }), "expected CorruptHeader, got {err:?}");
    assert_names(&err, &path, words);
}

fn expect_truncated(bytes: &[u8], words: &[&str]) {
    let (err, path) = open_err(bytes);
    assert!(matches!(err, Error::Truncated { .. }), "expected Truncated, got {err:?}");
    assert_names(&err, &path, words);
}

#[test]
fn the_base_file_is_valid() {
    let file = valid_file();
    let h = Header::parse_bytes(Path::new("v"), &file).unwrap();
    assert_eq!(h.tensors.len(), 4);
    // So that "the file ends at the last tensor" below is the real end.
    assert_eq!(h.file_size as usize, file.len());
    // Re-encoding without edits must give back an equally valid file.
    let same = with_header(&file, |_| {});
    assert_eq!(Header::parse_bytes(Path::new("v"), &same).unwrap(), h);
}

#[test]
fn truncation_anywhere_is_reported_as_truncation() {
    let file = valid_file();
    let hl = header_len(&file);
    // Inside the magic, inside the preamble, inside the header, inside the data, one byte short.
    for cut in [0, 3, 8, 20, 31, 32, 32 + hl / 2, 32 + hl, 4096, 4096 + 10, file.len() - 1] {
        let (err, path) = open_err(&file[..cut]);
        assert!(matches!(err, Error::Truncated { .. }), "cut at {cut}: {err:?}");
        assert_names(&err, &path, &[]);
    }
}

#[test]
fn a_short_file_that_is_not_ours_is_bad_magic() {
    let (err, path) = open_err(b"PK\x03\x04 this is a zip, not a snapshot");
    assert!(matches!(&err, Error::BadMagic { found, .. } if found == b"PK\x03\x04 thi"), "{err:?}");
    assert_names(&err, &path, &[]);
}

#[test]
fn flipped_header_bytes_fail_the_header_checksum() {
    let file = valid_file();
    let hl = header_len(&file);
    for at in [32, 33, 32 + hl / 3, 32 + hl / 2, 32 + hl - 1] {
        for bit in [0x01u8, 0x80] {
            let mut bad = file.clone();
            bad[at] ^= bit;
            expect_corrupt(&bad, &["header checksum mismatch"]);
        }
    }
    // The stored checksum itself damaged.
    let mut bad = file.clone();
    bad[25] ^= 0x10;
    expect_corrupt(&bad, &["header checksum mismatch"]);
}

#[test]
fn wrong_magic() {
    let mut bad = valid_file();
    bad[..8].copy_from_slice(b"SAFETENS");
    let (err, path) = open_err(&bad);
    assert!(matches!(&err, Error::BadMagic { found, .. } if found == b"SAFETENS"), "{err:?}");
    assert_names(&err, &path, &["bad magic"]);
}

#[test]
fn wrong_version() {
    for v in [0u32, 2, u32::MAX] {
        let mut bad = valid_file();
        bad[8..12].copy_from_slice(&v.to_le_bytes());
        let (err, path) = open_err(&bad);
        assert!(matches!(err, Error::UnsupportedVersion { found, supported: 1, .. } if found == v), "{err:?}");
        assert_names(&err, &path, &[&format!("version {v}")]);
    }
}

#[test]
fn nonzero_reserved_preamble_bytes() {
    for at in [12, 15, 28, 31] {
        let mut bad = valid_file();
        bad[at] = 1;
        expect_corrupt(&bad, &["reserved"]);
    }
}

#[test]
fn huge_or_zero_header_length() {
    for len in [0, MAX_HEADER_LEN + 1, u64::MAX / 2, u64::MAX] {
        let mut bad = valid_file();
        bad[16..24].copy_from_slice(&len.to_le_bytes());
        expect_corrupt(&bad, &["header length"]);
    }
    // Within the limit but past the end of the file: truncated, and no huge allocation.
    let mut bad = valid_file();
    bad[16..24].copy_from_slice(&MAX_HEADER_LEN.to_le_bytes());
    expect_truncated(&bad, &["header needs"]);
}

#[test]
fn header_that_is_not_json_of_the_right_shape() {
    let file = valid_file();
    for text in [&b"not json"[..], b"[]", b"{}", b"{\"alignment\":4096}", b"\xff\xfe", b"{\"alignment\":-1,\"file_size\":0,\"checksum\":\"crc32c\",\"tensors\":[]}"] {
        expect_corrupt(&with_header_bytes(&file, text), &["not valid JSON"]);
    }
    // Deep nesting in an ignored field hits serde_json's recursion limit: an error, not a stack
    // overflow.
    let deep = format!("{{\"zzz\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    // Too big for the header area; JSON errors come before any size check, so no data needed.
    let alone = [&encode_preamble(deep.as_bytes())[..], deep.as_bytes()].concat();
    expect_corrupt(&alone, &["not valid JSON"]);
}

#[test]
fn unknown_checksum_algorithm() {
    let bad = with_header(&valid_file(), |h| h["checksum"] = json!("sha256"));
    expect_corrupt(&bad, &["unknown checksum algorithm"]);
}

#[test]
fn bad_alignment() {
    for a in [0u64, 1, 2048, 4095, 6000, 1 << 31] {
        let bad = with_header(&valid_file(), |h| h["alignment"] = json!(a));
        expect_corrupt(&bad, &["alignment"]);
    }
}

#[test]
fn file_size_in_header_disagrees_with_the_file() {
    let file = valid_file();
    let n = file.len() as u64;
    expect_truncated(&with_header(&file, |h| h["file_size"] = json!(n + 1)), &[&format!("header records {}", n + 1)]);
    expect_corrupt(&with_header(&file, |h| h["file_size"] = json!(n - 1)), &["extended"]);
}

#[test]
fn file_extended_by_bytes() {
    for extra in [1usize, 7, 4096] {
        let mut bad = valid_file();
        bad.extend(vec![0xabu8; extra]);
        expect_corrupt(&bad, &["extended"]);
    }
}

#[test]
fn trailing_bytes_counted_in_the_recorded_size() {
    // Appended bytes with a matching `file_size`: the file must still end at the last tensor.
    let file = valid_file();
    let n = file.len() as u64;
    let mut bad = with_header(&file, |h| h["file_size"] = json!(n + 4096));
    bad.extend(vec![0u8; 4096]);
    expect_corrupt(&bad, &[&format!("tensors end at {n}")]);
}

#[test]
fn offset_out_of_range() {
    let file = valid_file();
    // Aligned, ordered, but past the end of the file.
    let bad = with_header(&file, |h| tensor(h, "c")["offset"] = json!(1u64 << 40));
    expect_corrupt(&bad, &["\"c\"", "outside"]);
    // offset + length overflows u64.
    let bad = with_header(&file, |h| {
        let c = tensor(h, "c");
        c["shape"] = json!([1u64 << 62]);
        c["length"] = json!(1u64 << 63);
        c["offset"] = json!(u64::MAX - 4095);
    });
    expect_corrupt(&bad, &["\"c\"", "outside"]);
}

#[test]
fn overlapping_tensors() {
    let file = valid_file();
    let a = header_json(&file)["tensors"][0]["offset"].clone();
    let bad = with_header(&file, |h| tensor(h, "b")["offset"] = a);
    expect_corrupt(&bad, &["\"b\"", "overlaps"]);
    // Tensors must also come after the header, and in header order.
    let bad = with_header(&file, |h| tensor(h, "a")["offset"] = json!(0));
    expect_corrupt(&bad, &["\"a\"", "overlaps"]);
    let bad = with_header(&file, |h| {
        let t = h["tensors"].as_array_mut().unwrap();
        t.swap(0, 1); // "b" now listed before "a" but lies after it
    });
    expect_corrupt(&bad, &["overlaps"]);
}

#[test]
fn unaligned_offset() {
    let file = valid_file();
    let off = header_json(&file)["tensors"][1]["offset"].as_u64().unwrap();
    let bad = with_header(&file, |h| tensor(h, "b")["offset"] = json!(off + 1));
    expect_corrupt(&bad, &["\"b\"", "not a multiple of the alignment"]);
}

#[test]
fn length_not_matching_shape() {
    let file = valid_file();
    let bad = with_header(&file, |h| tensor(h, "a")["length"] = json!(65));
    expect_corrupt(&bad, &["\"a\"", "does not match shape"]);
    let bad = with_header(&file, |h| tensor(h, "a")["shape"] = json!([4, 5]));
    expect_corrupt(&bad, &["\"a\"", "does not match shape"]);
    let bad = with_header(&file, |h| tensor(h, "a")["dtype"] = json!("float64"));
    expect_corrupt(&bad, &["\"a\"", "does not match shape"]);
}

#[test]
fn shapes_that_overflow_u64() {
    let file = valid_file();
    let bad = with_header(&file, |h| tensor(h, "a")["shape"] = json!([1u64 << 32, 1u64 << 32, 2]));
    expect_corrupt(&bad, &["\"a\"", "overflows"]);
    let bad = with_header(&file, |h| tensor(h, "a")["shape"] = json!([u64::MAX]));
    expect_corrupt(&bad, &["\"a\"", "overflows"]);
    // A zero dimension makes the product 0 however large the rest: a length mismatch, not a wrap.
    let bad = with_header(&file, |h| tensor(h, "a")["shape"] = json!([0, u64::MAX]));
    expect_corrupt(&bad, &["\"a\"", "does not match shape"]);
}

#[test]
fn rank_above_the_limit() {
    let bad = with_header(&valid_file(), |h| {
        let t = tensor(h, "b");
        t["shape"] = json!(vec![1u64; 65]);
        t["length"] = json!(1);
    });
    expect_corrupt(&bad, &["\"b\"", "rank 65"]);
}

#[test]
fn unknown_dtype() {
    let bad = with_header(&valid_file(), |h| tensor(h, "b")["dtype"] = json!("float128"));
    expect_corrupt(&bad, &["\"b\"", "unknown dtype \"float128\""]);
}

#[test]
fn missing_or_malformed_fields() {
    let file = valid_file();
    for field in ["dtype", "shape", "offset", "length", "crc32c"] {
        let bad = with_header(&file, |h| {
            tensor(h, "b").as_object_mut().unwrap().remove(field);
        });
        expect_corrupt(&bad, &["\"b\"", &format!("missing field \"{field}\"")]);
    }
    for crc in ["1234567", "123456789", "xyzxyzxy", ""] {
        let bad = with_header(&file, |h| tensor(h, "b")["crc32c"] = json!(crc));
        expect_corrupt(&bad, &["\"b\"", "8 hex digits"]);
    }
    let bad = with_header(&file, |h| tensor(h, "b")["offset"] = json!(-4096));
    expect_corrupt(&bad, &["not valid JSON"]);
}

#[test]
fn aliases_must_point_back_to_a_real_tensor() {
    let file = valid_file();
    let later = with_header(&file, |h| tensor(h, "tied")["alias_of"] = json!("c"));
    expect_corrupt(&later, &["\"tied\"", "not an earlier tensor"]);
    let missing = with_header(&file, |h| tensor(h, "tied")["alias_of"] = json!("nope"));
    expect_corrupt(&missing, &["\"tied\"", "\"nope\"", "not an earlier tensor"]);
    let itself = with_header(&file, |h| tensor(h, "tied")["alias_of"] = json!("tied"));
    expect_corrupt(&itself, &["\"tied\"", "not an earlier tensor"]);
    let chained = with_header(&file, |h| {
        h["tensors"].as_array_mut().unwrap().push(json!({"name": "tied2", "alias_of": "tied"}));
    });
    expect_corrupt(&chained, &["\"tied2\"", "itself an alias"]);
    let with_fields = with_header(&file, |h| tensor(h, "tied")["offset"] = json!(4096));
    expect_corrupt(&with_fields, &["\"tied\"", "must not carry"]);
}

#[test]
fn duplicate_and_empty_names() {
    let file = valid_file();
    let dup = with_header(&file, |h| tensor(h, "c")["name"] = json!("b"));
    expect_corrupt(&dup, &["\"b\"", "twice"]);
    let dup_alias = with_header(&file, |h| tensor(h, "tied")["name"] = json!("a"));
    expect_corrupt(&dup_alias, &["\"a\"", "twice"]);
    let empty = with_header(&file, |h| tensor(h, "b")["name"] = json!(""));
    expect_corrupt(&empty, &["tensor #1", "empty name"]);
}

#[test]
fn damaged_data_is_caught_by_verify_naming_the_tensor() {
    let mut file = valid_file();
    let off = header_json(&file)["tensors"][1]["offset"].as_u64().unwrap() as usize;
    file[off + 3] ^= 0x20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.snap");
    fs::write(&path, &file).unwrap();
    // The header is intact, so opening succeeds; only the checksum pass sees the damage.
    let snap = Snapshot::open(&path).unwrap();
    let map = snap.map_private().unwrap();
    let err = snap.verify(map.as_slice(), 2).unwrap_err();
    assert!(matches!(&err, Error::ChecksumMismatch { tensor, .. } if tensor == "b"), "{err:?}");
    assert_names(&err, &path, &["\"b\""]);
}

#[test]
fn missing_file_and_directory_are_io_errors_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.snap");
    let err = Snapshot::open(&missing).err().unwrap();
    assert!(matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound), "{err:?}");
    assert_names(&err, &missing, &[]);
    let err = Snapshot::open(dir.path()).err().unwrap();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert_names(&err, dir.path(), &[]);
}
