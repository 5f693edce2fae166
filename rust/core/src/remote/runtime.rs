//! The tokio runtime behind every remote read. It is the core's own (callers need none), made
//! on first use and kept for the process: reader threads block on it, and its workers drive the
//! sockets and timers meanwhile.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use futures::future::{select, Either};
use tokio::runtime::{Builder, Runtime};

use crate::error::{Error, Result};

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// How often a blocked remote call looks at its cancel flag. Short against a human's patience
/// (Ctrl-C) and against a request's timeout; long against the cost of one atomic load.
pub const CANCEL_POLL: Duration = Duration::from_millis(20);

pub fn runtime() -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("snapload-net")
            .enable_all()
            .build()
            .expect("a tokio runtime (threads and an epoll instance) can be created")
    })
}

/// Run `work` to completion on the runtime, or until `cancel` is set: then `work` is dropped,
/// which drops every request it has in flight (their connections are closed, their retries and
/// backoff sleeps never happen), and the result is `Error::Cancelled` naming `name`.
pub fn block_on_cancellable<T>(work: impl Future<Output = Result<T>>, cancel: &AtomicBool, name: &Path) -> Result<T> {
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled { path: name.to_owned() });
    }
    let watch = async {
        while !cancel.load(Ordering::Relaxed) {
            tokio::time::sleep(CANCEL_POLL).await;
        }
    };
    runtime().block_on(async {
        match select(Box::pin(work), Box::pin(watch)).await {
            Either::Left((done, _)) => done,
            Either::Right(((), _)) => Err(Error::Cancelled { path: name.to_owned() }),
        }
    })
}
