//! What every consumer relies on once a header validates. Shared by the corpus tests and the
//! cargo-fuzz target (`fuzz/fuzz_targets/header.rs` includes this file by path).

use snapload_core::header::{byte_length, round_up, Header, PREAMBLE_LEN};

/// Panics unless `h`, accepted from the whole file `file`, keeps the format's promises: each
/// tensor lies inside the file after the header, at an aligned offset, in header order without
/// overlap, with a length that matches its shape; aliases share an earlier real tensor's region;
/// the file ends where the last tensor does.
pub fn check(h: &Header, file: &[u8]) {
    let size = file.len() as u64;
    assert_eq!(h.file_size, size, "accepted a header whose size disagrees with the file");
    assert!(h.alignment.is_power_of_two() && h.alignment >= 4096, "alignment {}", h.alignment);
    let header_len = u64::from_le_bytes(file[16..24].try_into().expect("8 bytes"));
    let mut prev_end = round_up(PREAMBLE_LEN + header_len, h.alignment).expect("bounded header");
    for (i, t) in h.tensors.iter().enumerate() {
        assert!(!t.name.is_empty());
        assert_eq!(t.offset % h.alignment, 0, "tensor {:?} unaligned", t.name);
        let end = t.offset.checked_add(t.length).expect("end overflows");
        assert!(end <= size, "tensor {:?} ends at {end}, past {size}", t.name);
        assert_eq!(byte_length(t.dtype, &t.shape), Some(t.length), "tensor {:?} length", t.name);
        match t.alias_of {
            Some(a) => {
                assert!(a < i && h.tensors[a].alias_of.is_none(), "tensor {:?} bad alias", t.name);
                let o = &h.tensors[a];
                assert_eq!((t.offset, t.length, t.dtype, &t.shape), (o.offset, o.length, o.dtype, &o.shape));
            }
            None => {
                assert!(t.offset >= prev_end, "tensor {:?} overlaps", t.name);
                prev_end = end;
            }
        }
        assert!(h.tensors[..i].iter().all(|o| o.name != t.name), "duplicate name {:?}", t.name);
    }
    assert_eq!(prev_end, size, "file does not end at the last tensor");
}
