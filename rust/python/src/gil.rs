//! The single place where the GIL is released. Every call into the core that may block (I/O,
//! hashing, waiting on threads) goes through here, so other Python threads run meanwhile and
//! core errors are mapped in one way.
//!
//! Each call names its site, and the site is counted from inside the released section:
//! `_native._gil_releases()` lets the test suite check that every blocking entry point really
//! passes through here (tests/test_gil.py), not only the few whose slowness can be timed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use pyo3::prelude::*;

use crate::errors::to_pyerr;

static RELEASES: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

pub fn without_gil<T, F>(py: Python<'_>, site: &'static str, work: F) -> PyResult<T>
where
    F: Send + FnOnce() -> snapload_core::Result<T>,
    T: Send,
{
    py.detach(move || {
        count(site);
        work()
    })
    .map_err(to_pyerr)
}

fn count(site: &'static str) {
    *RELEASES.lock().unwrap_or_else(|e| e.into_inner()).entry(site).or_default() += 1;
}

/// How often a released call that may wait long (on a server, on another process) looks for a
/// pending signal. Python runs signal handlers only when a thread holding the GIL checks, so
/// without this a Ctrl-C would wait for the call to end (a stalled server: its timeout and
/// retries, minutes).
pub const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// The signal handlers' verdict, the GIL taken for a moment: `Err` (KeyboardInterrupt for
/// Ctrl-C) if one raised.
fn check_signals() -> PyResult<()> {
    Python::attach(|py| py.check_signals())
}

thread_local! {
    static MAIN_THREAD: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Whether this is Python's main thread, the only one that runs signal handlers. Elsewhere the
/// waits do not look for signals at all: it would be a no-op, and a background thread (a
/// prefetch) must not take the GIL every 100 ms, least of all while the interpreter shuts down.
fn on_main_thread(py: Python<'_>) -> PyResult<bool> {
    if let Some(known) = MAIN_THREAD.get() {
        return Ok(known);
    }
    let threading = py.import("threading")?;
    let main = threading.call_method0("main_thread")?.getattr("ident")?;
    let main = main.eq(threading.call_method0("get_ident")?)?;
    MAIN_THREAD.set(Some(main));
    Ok(main)
}

/// `without_gil` for a call that may wait long: `work` runs on a helper thread while this one,
/// GIL released, checks for signals every `SIGNAL_POLL`. On one (Ctrl-C), `work`'s cancel flag
/// is set, the helper is joined (the core's waits watch the flag and drop their requests within
/// milliseconds: no thread goes on downloading), and the signal's exception is raised.
/// `cancel` may also be set from elsewhere (another thread's `cancel()`).
pub fn without_gil_interruptible<T, F>(py: Python<'_>, site: &'static str, cancel: &AtomicBool, work: F) -> PyResult<T>
where
    F: Send + FnOnce(&AtomicBool) -> snapload_core::Result<T>,
    T: Send,
{
    let signals = on_main_thread(py)?;
    let outcome: PyResult<snapload_core::Result<T>> = py.detach(|| {
        count(site);
        std::thread::scope(|s| {
            let (done, result) = mpsc::channel();
            let helper = std::thread::Builder::new()
                .name("snapload-call".into())
                .spawn_scoped(s, move || {
                    let _ = done.send(work(cancel));
                })
                .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("cannot start a thread for {site}: {e}")))?;
            let outcome = loop {
                match result.recv_timeout(SIGNAL_POLL) {
                    Ok(r) => break Ok(r),
                    Err(RecvTimeoutError::Timeout) if signals => {
                        if let Err(signal) = check_signals() {
                            cancel.store(true, Ordering::Relaxed); // prompt: every wait in the core watches it
                            break Err(signal);
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break Ok(Err(snapload_core::Error::InvalidArgument(format!("{site}: worker thread panicked")))),
                }
            };
            // Joined here rather than by the scope, which only waits for the closure to end:
            // once this returns the thread is gone, not merely done (a panic is re-raised).
            if let Err(panic) = helper.join() {
                std::panic::resume_unwind(panic);
            }
            outcome
        })
    });
    outcome?.map_err(to_pyerr)
}

/// `without_gil` for a wait made of short steps (`step` blocks at most about `SIGNAL_POLL` and
/// returns `Pending` when nothing happened yet), with a signal check between steps. On a signal
/// its exception is raised at once; stopping the work behind the wait is the caller's (e.g. the
/// drive loop cancels its pipeline on any exception).
pub fn without_gil_polling<T, F>(py: Python<'_>, site: &'static str, mut step: F) -> PyResult<T>
where
    F: Send + FnMut() -> snapload_core::Result<Poll<T>>,
    T: Send,
{
    let signals = on_main_thread(py)?;
    py.detach(|| {
        count(site);
        loop {
            match step().map_err(to_pyerr)? {
                Poll::Ready(v) => return Ok(v),
                Poll::Pending if signals => check_signals()?,
                Poll::Pending => {}
            }
        }
    })
}

/// How many times each site ran with the GIL released, since the module was loaded.
#[pyfunction]
pub fn _gil_releases() -> BTreeMap<&'static str, u64> {
    RELEASES.lock().unwrap_or_else(|e| e.into_inner()).clone()
}
