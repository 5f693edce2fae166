//! The preamble and header of a snapshot: encoding, parsing, and the validation that runs before
//! any tensor byte is touched. See `docs/format.md` for the specification this implements.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::dtype::Dtype;
use crate::error::{Error, Result};

pub const MAGIC: [u8; 8] = *b"SNAPLOAD";
pub const FORMAT_VERSION: u32 = 1;
pub const PREAMBLE_LEN: u64 = 32;
/// Largest header accepted; a flipped length byte must not make us allocate gigabytes.
pub const MAX_HEADER_LEN: u64 = 128 << 20;
pub const MIN_ALIGNMENT: u64 = 4096;
pub const MAX_ALIGNMENT: u64 = 1 << 30;
pub const DEFAULT_ALIGNMENT: u64 = 4096;
pub const MAX_RANK: usize = 64;
const CHECKSUM_ALGORITHM: &str = "crc32c";

/// One tensor of a validated header. Aliases carry their target's region and checksum, so every
/// consumer can treat all entries alike; `alias_of` says which entry owns the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub offset: u64,
    pub length: u64,
    pub crc32c: u32,
    pub alias_of: Option<usize>,
}

impl TensorEntry {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// A validated header: every offset, length and name has been checked against the file size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub alignment: u64,
    pub file_size: u64,
    pub metadata: BTreeMap<String, String>,
    pub tensors: Vec<TensorEntry>,
}

#[derive(Serialize, Deserialize)]
struct RawHeader {
    alignment: u64,
    file_size: u64,
    checksum: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    tensors: Vec<RawEntry>,
}

#[derive(Serialize, Deserialize, Default)]
struct RawEntry {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alias_of: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shape: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crc32c: Option<String>,
}

pub fn round_up(value: u64, alignment: u64) -> Option<u64> {
    debug_assert!(alignment.is_power_of_two());
    value.checked_add(alignment - 1).map(|v| v & !(alignment - 1))
}

/// Product of the dimensions times the item size, or `None` on overflow.
pub fn byte_length(dtype: Dtype, shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(dtype.itemsize(), |acc, &d| acc.checked_mul(d))
}

pub fn check_alignment(alignment: u64) -> std::result::Result<(), String> {
    if !alignment.is_power_of_two() || !(MIN_ALIGNMENT..=MAX_ALIGNMENT).contains(&alignment) {
        return Err(format!(
            "alignment {alignment} must be a power of two between {MIN_ALIGNMENT} and {MAX_ALIGNMENT}"
        ));
    }
    Ok(())
}

/// The fixed 32-byte preamble: magic, version, flags, header length, header CRC32C.
pub fn encode_preamble(header_json: &[u8]) -> [u8; PREAMBLE_LEN as usize] {
    let mut out = [0u8; PREAMBLE_LEN as usize];
    out[0..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    // bytes 12..16: flags, zero in version 1
    out[16..24].copy_from_slice(&(header_json.len() as u64).to_le_bytes());
    out[24..28].copy_from_slice(&crc32c::crc32c(header_json).to_le_bytes());
    // bytes 28..32: reserved, zero
    out
}

/// What the preamble says: the header's length and checksum.
#[derive(Clone, Copy, Debug)]
pub struct Preamble {
    pub header_len: u64,
    pub header_crc32c: u32,
}

pub fn parse_preamble(path: &Path, bytes: &[u8], file_size: u64) -> Result<Preamble> {
    if bytes.len() < PREAMBLE_LEN as usize {
        // A short file that starts like a snapshot is truncated; anything else is not one.
        if MAGIC.starts_with(&bytes[..bytes.len().min(MAGIC.len())]) || bytes.starts_with(&MAGIC) {
            return Err(Error::truncated(
                path,
                format!("{} bytes is shorter than the {PREAMBLE_LEN}-byte preamble", bytes.len()),
            ));
        }
        return Err(Error::BadMagic { path: path.into(), found: bytes[..bytes.len().min(MAGIC.len())].to_vec() });
    }
    if bytes[0..8] != MAGIC {
        return Err(Error::BadMagic { path: path.into(), found: bytes[0..8].to_vec() });
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion { path: path.into(), found: version, supported: FORMAT_VERSION });
    }
    if u32_at(12) != 0 || u32_at(28) != 0 {
        return Err(Error::corrupt(path, "reserved preamble bytes are not zero"));
    }
    let header_len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    if header_len == 0 || header_len > MAX_HEADER_LEN {
        return Err(Error::corrupt(
            path,
            format!("header length {header_len} is outside 1..={MAX_HEADER_LEN} bytes"),
        ));
    }
    if PREAMBLE_LEN + header_len > file_size {
        return Err(Error::truncated(
            path,
            format!("header needs {} bytes but the file has {file_size}", PREAMBLE_LEN + header_len),
        ));
    }
    Ok(Preamble { header_len, header_crc32c: u32_at(24) })
}

impl Header {
    /// Parse and validate the header JSON of a file of `file_size` bytes.
    pub fn parse(path: &Path, preamble: Preamble, json: &[u8], file_size: u64) -> Result<Header> {
        if json.len() as u64 != preamble.header_len {
            return Err(Error::truncated(path, "file ends inside the header"));
        }
        let actual = crc32c::crc32c(json);
        if actual != preamble.header_crc32c {
            return Err(Error::corrupt(
                path,
                format!(
                    "header checksum mismatch (preamble says {:08x}, header gives {actual:08x})",
                    preamble.header_crc32c
                ),
            ));
        }
        let raw: RawHeader = serde_json::from_slice(json)
            .map_err(|e| Error::corrupt(path, format!("header is not valid JSON of the expected shape: {e}")))?;
        let header = Header::from_raw(path, raw)?;
        header.validate(path, preamble.header_len, file_size)?;
        Ok(header)
    }

    /// Parse a whole file held in memory (used by the fuzz target and the corpus tests).
    pub fn parse_bytes(path: &Path, file: &[u8]) -> Result<Header> {
        let size = file.len() as u64;
        let preamble = parse_preamble(path, &file[..file.len().min(PREAMBLE_LEN as usize)], size)?;
        let start = PREAMBLE_LEN as usize;
        let json = &file[start..start + preamble.header_len as usize];
        Header::parse(path, preamble, json, size)
    }

    fn from_raw(path: &Path, raw: RawHeader) -> Result<Header> {
        if raw.checksum != CHECKSUM_ALGORITHM {
            return Err(Error::corrupt(path, format!("unknown checksum algorithm {:?}", raw.checksum)));
        }
        let mut index_of: HashMap<&str, usize> = HashMap::with_capacity(raw.tensors.len());
        let mut tensors: Vec<TensorEntry> = Vec::with_capacity(raw.tensors.len());
        for (i, e) in raw.tensors.iter().enumerate() {
            let bad = |what: String| Error::corrupt(path, format!("tensor {:?}: {what}", e.name));
            if e.name.is_empty() {
                return Err(Error::corrupt(path, format!("tensor #{i} has an empty name")));
            }
            if index_of.insert(&e.name, i).is_some() {
                return Err(bad("name appears twice".into()));
            }
            if let Some(target) = &e.alias_of {
                if e.dtype.is_some() || e.shape.is_some() || e.offset.is_some() || e.length.is_some() || e.crc32c.is_some() {
                    return Err(bad("an alias must not carry its own dtype, shape, offset, length or checksum".into()));
                }
                let t = *index_of
                    .get(target.as_str())
                    .filter(|&&t| t < i)
                    .ok_or_else(|| bad(format!("alias of {target:?}, which is not an earlier tensor")))?;
                if tensors[t].alias_of.is_some() {
                    return Err(bad(format!("alias of {target:?}, which is itself an alias")));
                }
                let mut entry = tensors[t].clone();
                entry.name = e.name.clone();
                entry.alias_of = Some(t);
                tensors.push(entry);
                continue;
            }
            let missing = |field: &str| bad(format!("missing field {field:?}"));
            let dtype: Dtype = e
                .dtype
                .as_deref()
                .ok_or_else(|| missing("dtype"))?
                .parse()
                .map_err(|u| bad(format!("{u}")))?;
            let shape = e.shape.clone().ok_or_else(|| missing("shape"))?;
            let offset = e.offset.ok_or_else(|| missing("offset"))?;
            let length = e.length.ok_or_else(|| missing("length"))?;
            let crc_text = e.crc32c.as_deref().ok_or_else(|| missing("crc32c"))?;
            if crc_text.len() != 8 || !crc_text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(bad(format!("checksum {crc_text:?} is not 8 hex digits (lower case)")));
            }
            let crc32c = u32::from_str_radix(crc_text, 16)
                .map_err(|_| bad(format!("checksum {crc_text:?} is not 8 hex digits")))?;
            tensors.push(TensorEntry { name: e.name.clone(), dtype, shape, offset, length, crc32c, alias_of: None });
        }
        Ok(Header { alignment: raw.alignment, file_size: raw.file_size, metadata: raw.metadata, tensors })
    }

    /// Every structural rule of the format, checked against the real file size.
    pub fn validate(&self, path: &Path, header_len: u64, actual_file_size: u64) -> Result<()> {
        check_alignment(self.alignment).map_err(|e| Error::corrupt(path, e))?;
        if actual_file_size < self.file_size {
            return Err(Error::truncated(
                path,
                format!("header records {} bytes but the file has {actual_file_size}", self.file_size),
            ));
        }
        if actual_file_size > self.file_size {
            return Err(Error::corrupt(
                path,
                format!(
                    "file has {actual_file_size} bytes but the header records {} (extended or appended to)",
                    self.file_size
                ),
            ));
        }
        let data_start = round_up(PREAMBLE_LEN + header_len, self.alignment)
            .ok_or_else(|| Error::corrupt(path, "header length overflows"))?;
        let mut prev_end = data_start;
        for t in self.tensors.iter().filter(|t| t.alias_of.is_none()) {
            let bad = |what: String| Error::corrupt(path, format!("tensor {:?}: {what}", t.name));
            if t.shape.len() > MAX_RANK {
                return Err(bad(format!("rank {} exceeds {MAX_RANK}", t.shape.len())));
            }
            let expected = byte_length(t.dtype, &t.shape)
                .ok_or_else(|| bad(format!("shape {:?} overflows a 64-bit byte count", t.shape)))?;
            if expected != t.length {
                return Err(bad(format!(
                    "length {} does not match shape {:?} of {} ({expected} bytes)",
                    t.length, t.shape, t.dtype
                )));
            }
            if t.offset % self.alignment != 0 {
                return Err(bad(format!("offset {} is not a multiple of the alignment {}", t.offset, self.alignment)));
            }
            if t.offset < prev_end {
                return Err(bad(format!(
                    "offset {} overlaps the header or the previous tensor (which ends at {prev_end})",
                    t.offset
                )));
            }
            let end = t
                .offset
                .checked_add(t.length)
                .filter(|&end| end <= self.file_size)
                .ok_or_else(|| bad(format!("bytes {}..+{} lie outside the {}-byte file", t.offset, t.length, self.file_size)))?;
            prev_end = end;
        }
        // The format ends the file at the last tensor's bytes (or at the data start when there are
        // none): trailing bytes counted in `file_size` would otherwise go unnoticed.
        if self.file_size != prev_end {
            return Err(Error::corrupt(
                path,
                format!("header records {} bytes but the tensors end at {prev_end}", self.file_size),
            ));
        }
        Ok(())
    }

    /// The JSON text of this header (checksums as fixed-width hex, so its length does not depend
    /// on their values: the writer lays the file out before it knows them).
    pub fn encode(&self) -> Vec<u8> {
        let tensors = self
            .tensors
            .iter()
            .map(|t| match t.alias_of {
                Some(target) => RawEntry {
                    name: t.name.clone(),
                    alias_of: Some(self.tensors[target].name.clone()),
                    ..RawEntry::default()
                },
                None => RawEntry {
                    name: t.name.clone(),
                    alias_of: None,
                    dtype: Some(t.dtype.name().to_owned()),
                    shape: Some(t.shape.clone()),
                    offset: Some(t.offset),
                    length: Some(t.length),
                    crc32c: Some(format!("{:08x}", t.crc32c)),
                },
            })
            .collect();
        let raw = RawHeader {
            alignment: self.alignment,
            file_size: self.file_size,
            checksum: CHECKSUM_ALGORITHM.to_owned(),
            metadata: self.metadata.clone(),
            tensors,
        };
        serde_json::to_vec(&raw).expect("a header always serializes")
    }

    /// Where tensor data may begin for a header of `header_len` bytes.
    pub fn data_start(&self, header_len: u64) -> u64 {
        round_up(PREAMBLE_LEN + header_len, self.alignment).expect("validated")
    }
}
