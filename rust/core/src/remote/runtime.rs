//! The tokio runtime behind every remote read. It is the core's own (callers need none), made
//! on first use and kept for the process: reader threads block on it, and its workers drive the
//! sockets and timers meanwhile.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

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
