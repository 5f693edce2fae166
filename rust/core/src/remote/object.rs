//! One object in a store, pinned to the version seen when it was opened, read by byte ranges.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore};

use super::options::RemoteOptions;
use super::runtime::block_on_cancellable;
use super::store::{resolve, store_error};
use crate::error::{Error, Result};
use crate::source::Source;

pub struct RemoteObject {
    name: PathBuf,
    store: Arc<dyn ObjectStore>,
    location: ObjectPath,
    size: u64,
    e_tag: Option<String>,
    version: Option<String>,
    options: RemoteOptions,
    secrets: Vec<String>,
}

impl RemoteObject {
    /// Resolve the URL's store and HEAD the object: its size, ETag and version are pinned here.
    /// Gives up with `Error::Cancelled` once `cancel` is set.
    pub fn open(url: &str, options: &RemoteOptions, cancel: &AtomicBool) -> Result<RemoteObject> {
        let r = resolve(url, options)?;
        let head = async { r.store.head(&r.location).await.map_err(|e| store_error(&r.name, "HEAD", e, &r.secrets)) };
        let meta = block_on_cancellable(head, cancel, Path::new(&r.name))?;
        Ok(RemoteObject {
            name: PathBuf::from(r.name),
            store: r.store,
            location: r.location,
            size: meta.size,
            e_tag: meta.e_tag,
            version: meta.version,
            options: options.clone(),
            secrets: r.secrets,
        })
    }

    /// The ETag pinned at open (quotes included, as the server sent it), if the server sent one.
    pub fn e_tag(&self) -> Option<&str> {
        self.e_tag.as_deref()
    }

    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    pub fn options(&self) -> &RemoteOptions {
        &self.options
    }

    fn err(&self, op: &'static str, e: object_store::Error) -> Error {
        store_error(&self.name.to_string_lossy(), op, e, &self.secrets)
    }

    /// One ranged GET of `range` into `dst` (exactly its length), pinned to the opened version.
    /// `object_store` retries failed requests and resumes broken bodies (re-checking the ETag);
    /// what still comes back short or long is an error here, never silently accepted.
    pub async fn get_range(&self, range: Range<u64>, dst: &mut [u8]) -> Result<()> {
        debug_assert_eq!(dst.len() as u64, range.end - range.start);
        if range.end > self.size {
            return Err(Error::truncated(&self.name, format!("object is {} bytes, a read needs byte {}", self.size, range.end)));
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            if_match: self.e_tag.clone(),
            version: self.version.clone(),
            ..Default::default()
        };
        let result = self.store.get_opts(&self.location, options).await.map_err(|e| self.err("GET", e))?;
        if let (Some(pinned), Some(now)) = (&self.e_tag, &result.meta.e_tag) {
            // A server that ignores If-Match must still not hand us another version's bytes.
            if pinned != now {
                return Err(Error::ObjectChanged { path: self.name.clone(), reason: format!("ETag was {pinned}, a range came back with {now}") });
            }
        }
        if result.range != range {
            return Err(Error::io(
                &self.name,
                "GET",
                std::io::Error::other(format!("asked for bytes {range:?}, the server sent {:?}", result.range)),
            ));
        }
        let mut body = result.into_stream();
        let mut got = 0usize;
        while let Some(bytes) = body.try_next().await.map_err(|e| self.err("GET body", e))? {
            let end = got + bytes.len();
            if end > dst.len() {
                return Err(Error::io(&self.name, "GET body", std::io::Error::other(format!("range {range:?} returned more than {} bytes", dst.len()))));
            }
            dst[got..end].copy_from_slice(&bytes);
            got = end;
        }
        if got != dst.len() {
            return Err(Error::truncated(&self.name, format!("range {range:?} ended after {got} of {} bytes", dst.len())));
        }
        Ok(())
    }

    /// `dst` filled from `offset` with up to `options.concurrency` ranged GETs of
    /// `options.part_size` bytes in flight.
    pub async fn read_parts(&self, dst: &mut [u8], offset: u64) -> Result<()> {
        let part = self.options.part_size as usize;
        futures::stream::iter(dst.chunks_mut(part).enumerate().map(|(k, piece)| {
            let start = offset + (k * part) as u64;
            self.get_range(start..start + piece.len() as u64, piece)
        }))
        .buffer_unordered(self.options.concurrency.max(1))
        .try_collect::<()>()
        .await
    }
}

impl Source for RemoteObject {
    fn name(&self) -> &Path {
        &self.name
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.read_at_cancellable(buf, offset, &AtomicBool::new(false))
    }

    fn read_at_cancellable(&self, buf: &mut [u8], offset: u64, cancel: &AtomicBool) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        block_on_cancellable(self.read_parts(buf, offset), cancel, &self.name)
    }
}
