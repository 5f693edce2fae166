//! Where each tensor goes in a new snapshot file.

use std::collections::{BTreeMap, HashMap};

use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::header::{byte_length, check_alignment, round_up, Header, TensorEntry, MAX_HEADER_LEN, MAX_RANK, PREAMBLE_LEN};

/// What the caller says about one tensor before any byte of it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Name of an earlier tensor whose bytes this one shares (tied weights).
    pub alias_of: Option<String>,
}

/// The planned file: header (checksums still zero), the encoded header length, and the file size.
#[derive(Clone, Debug)]
pub struct Layout {
    pub header: Header,
    pub header_len: u64,
}

/// Lay tensors out in the order given, each at a multiple of `alignment`.
///
/// The header's length depends on the offsets' digits and the offsets depend on where data
/// starts, which depends on the header's length; so iterate to a fixed point (data start only
/// ever grows, and it converges in two or three rounds).
pub fn plan(specs: &[TensorSpec], alignment: u64, metadata: BTreeMap<String, String>) -> Result<Layout> {
    check_alignment(alignment).map_err(Error::InvalidArgument)?;
    let arg = |s: String| Error::InvalidArgument(s);
    let mut index_of: HashMap<&str, usize> = HashMap::new();
    let mut tensors = Vec::with_capacity(specs.len());
    for (i, s) in specs.iter().enumerate() {
        if s.name.is_empty() {
            return Err(arg(format!("tensor #{i} has an empty name")));
        }
        if index_of.insert(&s.name, i).is_some() {
            return Err(arg(format!("tensor {:?} appears twice", s.name)));
        }
        if s.shape.len() > MAX_RANK {
            return Err(arg(format!("tensor {:?}: rank {} exceeds {MAX_RANK}", s.name, s.shape.len())));
        }
        let length = byte_length(s.dtype, &s.shape)
            .ok_or_else(|| arg(format!("tensor {:?}: shape {:?} overflows", s.name, s.shape)))?;
        let alias_of = match &s.alias_of {
            None => None,
            Some(target) => {
                let t = *index_of
                    .get(target.as_str())
                    .filter(|&&t| t < i)
                    .ok_or_else(|| arg(format!("tensor {:?} aliases {target:?}, which is not an earlier tensor", s.name)))?;
                let owner: &TensorEntry = &tensors[t];
                if owner.alias_of.is_some() || owner.dtype != s.dtype || owner.shape != s.shape {
                    return Err(arg(format!(
                        "tensor {:?} aliases {target:?}, which must be a non-alias of the same dtype and shape",
                        s.name
                    )));
                }
                Some(t)
            }
        };
        tensors.push(TensorEntry { name: s.name.clone(), dtype: s.dtype, shape: s.shape.clone(), offset: 0, length, crc32c: 0, alias_of });
    }
    let mut header = Header { alignment, file_size: 0, metadata, tensors };
    let mut data_start = alignment;
    loop {
        let mut cursor = data_start;
        for i in 0..header.tensors.len() {
            if let Some(t) = header.tensors[i].alias_of {
                header.tensors[i].offset = header.tensors[t].offset;
                continue;
            }
            let t = &mut header.tensors[i];
            t.offset = cursor;
            cursor = cursor
                .checked_add(t.length)
                .and_then(|end| round_up(end, alignment))
                .ok_or_else(|| arg("snapshot size overflows".into()))?;
        }
        // The file ends right after the last tensor's bytes, not at the padded cursor.
        header.file_size = header
            .tensors
            .iter()
            .filter(|t| t.alias_of.is_none())
            .map(TensorEntry::end)
            .max()
            .unwrap_or(data_start)
            .max(data_start);
        let header_len = header.encode().len() as u64;
        if header_len > MAX_HEADER_LEN {
            return Err(arg(format!("header of {header_len} bytes exceeds the {MAX_HEADER_LEN}-byte limit")));
        }
        let needed = round_up(PREAMBLE_LEN + header_len, alignment).expect("bounded");
        if needed <= data_start {
            return Ok(Layout { header, header_len });
        }
        data_start = needed;
    }
}
