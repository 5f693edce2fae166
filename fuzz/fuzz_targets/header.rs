//! Parse arbitrary bytes as a whole snapshot file. Any panic is a bug: hostile files must give an
//! `Error`, and a header that is accepted must keep the format's promises.
//!
//! Each input is parsed twice: as given, and with the preamble's header checksum recomputed, so
//! that mutations of the JSON reach validation instead of stopping at the checksum.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use snapload_core::header::Header;

#[path = "../../rust/core/tests/invariants/mod.rs"]
mod invariants;

fn parse(data: &[u8]) {
    if let Ok(h) = Header::parse_bytes(Path::new("fuzz"), data) {
        invariants::check(&h, data);
    }
}

fuzz_target!(|data: &[u8]| {
    parse(data);
    let Some(len) = data.get(16..24).map(|b| u64::from_le_bytes(b.try_into().unwrap())) else { return };
    if len.checked_add(32).is_some_and(|end| end <= data.len() as u64) {
        let mut fixed = data.to_vec();
        let crc = crc32c::crc32c(&data[32..32 + len as usize]);
        fixed[24..28].copy_from_slice(&crc.to_le_bytes());
        parse(&fixed);
    }
});
