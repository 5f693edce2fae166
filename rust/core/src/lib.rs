//! snapload core: the page-aligned snapshot format, its writer and zero-copy reader, and the
//! chunked read pipeline that feeds device copies. No Python here; `rust/python` is the glue.

pub mod checksum;
pub mod dtype;
pub mod error;
pub mod header;
pub mod layout;
pub mod pipeline;
pub mod plan;
pub mod reader;
pub mod remote;
pub mod residency;
pub mod source;
pub mod writer;

pub use dtype::Dtype;
pub use error::{Error, Result};
pub use header::{Header, TensorEntry};
pub use layout::TensorSpec;
pub use reader::{Mapping, Snapshot};
pub use writer::{check_destination, SnapshotWriter, WriteJob};
