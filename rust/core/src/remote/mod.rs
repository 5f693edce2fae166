//! Snapshots in object storage (`s3://bucket/key`, `http(s)://host/path`), read with ranged GETs
//! through the `object_store` crate on a tokio runtime that the core owns.
//!
//! Opening a URL costs one HEAD (size, ETag, version) and one small ranged GET that covers the
//! preamble and, usually, the whole header, which is then validated exactly as for a file. Every
//! later range carries the pinned ETag (`If-Match`) and version, so an object overwritten in the
//! middle of a restore fails with `Error::ObjectChanged` instead of mixing two versions; the
//! checksums of remote bytes are always verified on top of that.

mod cache;
mod credentials;
mod fetch;
mod object;
mod options;
mod redact;
mod runtime;
mod store;
mod stream_through;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub use cache::{cache_file_name, fetch_to_cache, fill_whole, open_entry, Cached, Entry};
pub use fetch::fetch_verified;
pub use object::RemoteObject;
pub use options::RemoteOptions;
pub use stream_through::{Publishing, StreamThrough};

use crate::error::Result;
use crate::reader::Snapshot;

/// URL schemes read from object storage; anything else is a local path.
pub const SCHEMES: [&str; 3] = ["s3://", "http://", "https://"];

pub fn is_url(s: &str) -> bool {
    SCHEMES.iter().any(|p| s.len() > p.len() && s[..p.len()].eq_ignore_ascii_case(p))
}

/// Bytes asked for by the first ranged GET: the preamble plus room for a typical header
/// (a few hundred bytes a tensor), so that one request covers both.
pub const FIRST_READ: u64 = 256 << 10;

/// Open and validate a remote snapshot (one HEAD, one ranged GET, rarely a second for a very
/// large header); gives up with `Error::Cancelled` once `cancel` is set.
pub fn open(url: &str, options: &RemoteOptions, cancel: &AtomicBool) -> Result<Snapshot> {
    let object = RemoteObject::open(url, options, cancel)?;
    Snapshot::from_source_cancellable(Arc::new(object), FIRST_READ, cancel)
}
