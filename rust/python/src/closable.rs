//! A core object that one Python method consumes (`finish`): other methods use it shared, under
//! a read lock, and after it is consumed they get a clear error instead of a use-after-move.

use std::sync::RwLock;

use pyo3::exceptions::PyRuntimeError;
use pyo3::PyResult;
use snapload_core::{Error, Result};

pub struct Closable<T> {
    inner: RwLock<Option<T>>,
    what: &'static str,
}

impl<T> Closable<T> {
    pub fn new(value: T, what: &'static str) -> Self {
        Closable { inner: RwLock::new(Some(value)), what }
    }

    /// Run `f` on the object, or fail if it was already consumed.
    pub fn with<R>(&self, f: impl FnOnce(&T) -> Result<R>) -> Result<R> {
        match self.inner.read().expect("lock poisoned").as_ref() {
            Some(v) => f(v),
            None => Err(Error::InvalidArgument(format!("{} is already finished", self.what))),
        }
    }

    /// Run `f` if the object is still there; a no-op afterwards (for cancel/abort paths).
    pub fn if_open(&self, f: impl FnOnce(&T)) {
        if let Some(v) = self.inner.read().expect("lock poisoned").as_ref() {
            f(v);
        }
    }

    /// Take the object out to consume it (waits for shared users to finish).
    pub fn take(&self) -> PyResult<T> {
        self.inner
            .write()
            .expect("lock poisoned")
            .take()
            .ok_or_else(|| PyRuntimeError::new_err(format!("{} is already finished", self.what)))
    }

    /// Drop the object now (abort).
    pub fn close(&self) {
        drop(self.inner.write().expect("lock poisoned").take());
    }
}
