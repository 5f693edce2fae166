//! The header parser against hostile bytes, in bounded time: (a) every file of the saved corpus
//! (`tests/corpus/`: seeds plus anything cargo-fuzz ever found) and (b) random mutations of valid
//! files. Parsing must return `Ok` or `Err`, never panic, and whatever it accepts must keep the
//! format's promises (`invariants::check`). The open-ended search is the cargo-fuzz target in
//! `fuzz/`; this is its regression net for CI.

mod invariants;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};
use snapload_core::header::{encode_preamble, Header, PREAMBLE_LEN};
use snapload_core::{Dtype, SnapshotWriter, TensorSpec};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn parse(file: &[u8]) -> Result<Header, snapload_core::Error> {
    let h = Header::parse_bytes(Path::new("corpus"), file);
    if let Ok(h) = &h {
        invariants::check(h, file);
    }
    h
}

#[test]
fn every_corpus_file_parses_or_fails_cleanly() {
    let mut seen = 0;
    for entry in fs::read_dir(corpus_dir()).expect("tests/corpus exists") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = fs::read(&path).unwrap();
        let result = parse(&bytes);
        // Seeds say what they are; fuzz finds (crash-*, any other name) only must not panic.
        if name.starts_with("valid-") {
            assert!(result.is_ok(), "{name}: {:?}", result.err());
        } else if name.starts_with("invalid-") {
            assert!(result.is_err(), "{name} was accepted");
        }
        seen += 1;
    }
    assert!(seen >= 10, "corpus has only {seen} files");
}

/// Small valid files to mutate: no tensors; a mixed table with an alias, a 0-d and a zero-size
/// tensor and metadata; one tensor crossing a page.
fn base_files() -> &'static [Vec<u8>] {
    static FILES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        seed_tables().iter().enumerate().map(|(i, (specs, meta))| write_seed(&dir.path().join(format!("{i}")), specs, meta)).collect()
    })
}

type Table = (Vec<TensorSpec>, BTreeMap<String, String>);

fn seed_tables() -> Vec<Table> {
    let t = |name: &str, dtype, shape: &[u64], alias: Option<&str>| TensorSpec {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        alias_of: alias.map(Into::into),
    };
    vec![
        (vec![], BTreeMap::new()),
        (
            vec![
                t("embed.weight", Dtype::BF16, &[4, 3], None),
                t("scalar", Dtype::F64, &[], None),
                t("empty", Dtype::I32, &[0, 5], None),
                t("lm_head.weight", Dtype::BF16, &[4, 3], Some("embed.weight")),
                t("bits", Dtype::Bool, &[7], None),
            ],
            BTreeMap::from([("format".to_owned(), "pt".to_owned()), ("note".to_owned(), "\"q\" é".to_owned())]),
        ),
        (vec![t("big", Dtype::U8, &[5000], None), t("after", Dtype::C128, &[1], None)], BTreeMap::new()),
    ]
}

fn write_seed(dest: &Path, specs: &[TensorSpec], meta: &BTreeMap<String, String>) -> Vec<u8> {
    let w = SnapshotWriter::create(dest, specs, 4096, meta.clone()).unwrap();
    for (i, t) in w.header().tensors.iter().enumerate().filter(|(_, t)| t.alias_of.is_none()) {
        let bytes: Vec<u8> = (0..t.length).map(|k| (k as u8).wrapping_mul(31).wrapping_add(i as u8)).collect();
        w.write(i, 0, &bytes).unwrap();
    }
    w.finish().unwrap();
    fs::read(dest).unwrap()
}

fn header_len(file: &[u8]) -> Option<usize> {
    let len = u64::from_le_bytes(file.get(16..24)?.try_into().ok()?);
    let end = PREAMBLE_LEN.checked_add(len)?;
    (end <= file.len() as u64).then_some(len as usize)
}

/// Rewrite the preamble checksum so a mutated header gets past it and into validation.
fn fix_crc(file: &mut [u8]) {
    if let Some(len) = header_len(file) {
        let crc = crc32c::crc32c(&file[32..32 + len]);
        file[24..28].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Numbers that sit on the edges the validator must get right.
const EDGES: &[u64] = &[0, 1, 2, 3, 4095, 4096, 4097, 8192, 1 << 32, (1 << 32) + 1, 1 << 62, 1 << 63, u64::MAX - 4095, u64::MAX];

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit { at: Index, bit: u8, header_only: bool },
    Overwrite { at: Index, bytes: Vec<u8> },
    Truncate(Index),
    Extend(Vec<u8>),
    /// Edit the header JSON and re-encode it with a correct checksum.
    Json { tensor: Index, field: Index, value: Index, nudge: i8 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0..8u8, any::<bool>()).prop_map(|(at, bit, header_only)| Mutation::FlipBit { at, bit, header_only }),
        2 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(at, bytes)| Mutation::Overwrite { at, bytes }),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Extend),
        4 => (any::<Index>(), any::<Index>(), any::<Index>(), -2..=2i8)
            .prop_map(|(tensor, field, value, nudge)| Mutation::Json { tensor, field, value, nudge }),
    ]
}

/// Header region (JSON text) of a file, or the whole file when the preamble no longer says.
fn header_span(file: &[u8]) -> std::ops::Range<usize> {
    match header_len(file) {
        Some(len) if len > 0 => 32..32 + len,
        _ => 0..file.len(),
    }
}

fn edit_json(file: &[u8], tensor: Index, field: Index, value: Index, nudge: i8) -> Option<Vec<u8>> {
    let span = header_span(file);
    let mut h: Value = serde_json::from_slice(file.get(span)?).ok()?;
    let n = h["tensors"].as_array().map_or(0, Vec::len);
    const FIELDS: &[&str] = &["offset", "length", "shape", "dtype", "alias_of", "name", "crc32c", "file_size", "alignment", "drop"];
    let field = FIELDS[field.index(FIELDS.len())];
    let old = |v: &Value| v.as_u64().unwrap_or(0);
    let edge = EDGES[value.index(EDGES.len())];
    // Either an edge value or the old value nudged by a little.
    let number = |v: &Value| if nudge == 0 { edge } else { old(v).wrapping_add_signed(nudge as i64) };
    match field {
        "file_size" | "alignment" => h[field] = json!(number(&h[field])),
        _ if n == 0 => h["tensors"] = json!([{"name": "x", "dtype": "uint8", "shape": [number(&json!(1))], "offset": 4096, "length": 1, "crc32c": "00000000"}]),
        _ => {
            let names: Vec<Value> = h["tensors"].as_array()?.iter().map(|t| t["name"].clone()).collect();
            let t = &mut h["tensors"][tensor.index(n)];
            match field {
                "offset" | "length" => t[field] = json!(number(&t[field])),
                "shape" => t[field] = json!([number(&t[field][0]), edge]),
                "dtype" => t[field] = json!(["float32", "uint8", "complex128", "float4_e2m1fn_x2", "nope"][value.index(5)]),
                "alias_of" | "name" => t[field] = names[value.index(n)].clone(),
                "crc32c" => t[field] = json!(format!("{edge:x}")),
                _ => {
                    t.as_object_mut()?.remove(["offset", "length", "shape", "dtype", "crc32c", "name"][value.index(6)]);
                }
            }
        }
    }
    let text = serde_json::to_vec(&h).ok()?;
    let mut out = file.to_vec();
    let room = 4096.min(out.len());
    if PREAMBLE_LEN as usize + text.len() > room {
        return None;
    }
    out[..room].fill(0);
    out[..32].copy_from_slice(&encode_preamble(&text));
    out[32..32 + text.len()].copy_from_slice(&text);
    Some(out)
}

fn apply(file: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::FlipBit { at, bit, header_only } => {
            let span = if *header_only { header_span(file) } else { 0..file.len() };
            if !span.is_empty() {
                let i = span.start + at.index(span.len());
                file[i] ^= 1 << bit;
                if *header_only {
                    fix_crc(file);
                }
            }
        }
        Mutation::Overwrite { at, bytes } => {
            let span = header_span(file);
            if !span.is_empty() {
                let i = span.start + at.index(span.len());
                let end = (i + bytes.len()).min(span.end);
                file[i..end].copy_from_slice(&bytes[..end - i]);
                fix_crc(file);
            }
        }
        Mutation::Truncate(at) => {
            let keep = at.index(file.len() + 1);
            file.truncate(keep);
        }
        Mutation::Extend(bytes) => file.extend_from_slice(bytes),
        Mutation::Json { tensor, field, value, nudge } => {
            if let Some(edited) = edit_json(file, *tensor, *field, *value, *nudge) {
                *file = edited;
            }
        }
    }
}

proptest! {
    // Parsing a 4-12 KiB file takes microseconds; 30000 cases take about half a second in release.
    #![proptest_config(ProptestConfig { cases: 30_000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_files_parse_or_fail_cleanly(base in any::<Index>(), muts in prop::collection::vec(mutation(), 1..4)) {
        let files = base_files();
        let mut file = files[base.index(files.len())].clone();
        for m in &muts {
            apply(&mut file, m);
        }
        // `parse` panics (failing the case) on a panic inside the parser or a broken invariant.
        let _ = parse(&file);
    }
}

#[test]
fn unmutated_base_files_are_valid() {
    for f in base_files() {
        parse(f).unwrap();
    }
}

/// Writes the seed corpus into `tests/corpus/`. Run by hand after a format change:
/// `cargo test -p snapload-core --release --test fuzz_corpus -- --ignored write_seed_corpus`.
#[test]
#[ignore = "rewrites files in the source tree; run by hand to regenerate the seed corpus"]
fn write_seed_corpus() {
    let dir = corpus_dir();
    fs::create_dir_all(&dir).unwrap();
    let valid = base_files();
    for (i, f) in valid.iter().enumerate() {
        fs::write(dir.join(format!("valid-{i}.snap")), f).unwrap();
    }
    let mixed = &valid[1];
    let hl = header_len(mixed).unwrap();
    let mut invalid: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("short-magic", b"SNAP".to_vec()),
        ("preamble-only", mixed[..32].to_vec()),
        ("cut-in-header", mixed[..32 + hl / 2].to_vec()),
        ("cut-in-data", mixed[..mixed.len() - 1].to_vec()),
        ("extended", [&mixed[..], b"x"].concat()),
    ];
    let mut flipped = mixed.clone();
    flipped[40] ^= 4;
    invalid.push(("header-bit-flip", flipped));
    let mut huge = mixed[..64].to_vec();
    huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    invalid.push(("huge-header-len", huge));
    // Structural damage behind a correct header checksum, so the seeds reach validation.
    let edited = |edit: &dyn Fn(&mut Value)| {
        let mut h: Value = serde_json::from_slice(&mixed[32..32 + hl]).unwrap();
        edit(&mut h);
        let text = serde_json::to_vec(&h).unwrap();
        let mut out = mixed.clone();
        out[..4096].fill(0);
        out[..32].copy_from_slice(&encode_preamble(&text));
        out[32..32 + text.len()].copy_from_slice(&text);
        out
    };
    invalid.push(("offset-in-header", edited(&|h| h["tensors"][0]["offset"] = json!(0))));
    invalid.push(("alias-of-later", edited(&|h| h["tensors"][3]["alias_of"] = json!("bits"))));
    invalid.push(("shape-overflow", edited(&|h| h["tensors"][0]["shape"] = json!([1u64 << 40, 1u64 << 40]))));
    for (name, bytes) in invalid {
        fs::write(dir.join(format!("invalid-{name}.bin")), bytes).unwrap();
    }
}
