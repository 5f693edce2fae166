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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_wait_ends_with_cancelled_and_drops_the_work() {
        let cancel = AtomicBool::new(false);
        let dropped = std::sync::Arc::new(AtomicBool::new(false));
        struct SetOnDrop(std::sync::Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let guard = SetOnDrop(dropped.clone());
        // A request that never answers (an hour): only the cancel flag can end this wait.
        let stalled = async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        };
        let result = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                cancel.store(true, Ordering::Relaxed);
            });
            block_on_cancellable(stalled, &cancel, Path::new("s3://b/k"))
        });
        assert!(matches!(result, Err(Error::Cancelled { .. })), "{result:?}");
        assert!(dropped.load(Ordering::Relaxed), "the stalled work was dropped, not left running");
        assert!(matches!(block_on_cancellable(async { Ok(1) }, &cancel, Path::new("x")), Err(Error::Cancelled { .. })), "set before: no work starts");
        assert_eq!(block_on_cancellable(async { Ok(7) }, &AtomicBool::new(false), Path::new("x")).unwrap(), 7);
    }
}
