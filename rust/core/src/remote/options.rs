//! Tuning of remote reads. Defaults come from loopback and the docs/benchmarks.md runs; each
//! can be overridden with an environment variable so that deployments and tests need no code.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// Bytes per ranged GET.
    pub part_size: u64,
    /// Ranged GETs in flight at once for one whole-object fetch (and per pipeline read).
    pub concurrency: usize,
    /// Per-request timeout (headers and body of one range).
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Retries of one request (5xx, throttling, timeouts, resets), with exponential backoff.
    pub max_retries: usize,
    /// Give up retrying a request after this long.
    pub retry_timeout: Duration,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            part_size: 8 << 20,
            concurrency: 16,
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            max_retries: 5,
            retry_timeout: Duration::from_secs(120),
        }
    }
}

impl RemoteOptions {
    /// Defaults, overridden by `SNAPLOAD_REMOTE_PART_BYTES`, `SNAPLOAD_REMOTE_CONCURRENCY`,
    /// `SNAPLOAD_REMOTE_TIMEOUT` (seconds, may be fractional), `SNAPLOAD_REMOTE_CONNECT_TIMEOUT`,
    /// `SNAPLOAD_REMOTE_RETRIES` and `SNAPLOAD_REMOTE_RETRY_TIMEOUT`. Unparsable values are
    /// ignored rather than fatal: a typo must not stop a cold start.
    pub fn from_env() -> RemoteOptions {
        let d = RemoteOptions::default();
        let num = |k: &str| std::env::var(k).ok().and_then(|v| v.trim().parse::<u64>().ok()).filter(|&v| v > 0);
        let secs = |k: &str| {
            std::env::var(k).ok().and_then(|v| v.trim().parse::<f64>().ok()).filter(|v| v.is_finite() && *v > 0.0).map(Duration::from_secs_f64)
        };
        RemoteOptions {
            part_size: num("SNAPLOAD_REMOTE_PART_BYTES").map(|v| v.next_multiple_of(4096)).unwrap_or(d.part_size),
            concurrency: num("SNAPLOAD_REMOTE_CONCURRENCY").map(|v| v as usize).unwrap_or(d.concurrency),
            timeout: secs("SNAPLOAD_REMOTE_TIMEOUT").unwrap_or(d.timeout),
            connect_timeout: secs("SNAPLOAD_REMOTE_CONNECT_TIMEOUT").unwrap_or(d.connect_timeout),
            max_retries: std::env::var("SNAPLOAD_REMOTE_RETRIES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(d.max_retries),
            retry_timeout: secs("SNAPLOAD_REMOTE_RETRY_TIMEOUT").unwrap_or(d.retry_timeout),
        }
    }
}
