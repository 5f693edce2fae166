//! `snapload plan`: a discrete-event simulation of serverless instances serving a request trace,
//! to weigh keep-warm policies (idle timeout, minimum instances, keep-warm pings, an instance cap)
//! against cold starts. Pure computation, no I/O: the Python package (`snapload._plan`) reads
//! traces, samples service times and reports. docs/planning.md states the model in prose; the
//! rules are repeated on the types below, where the code enforces them.
//!
//! The event loop is here rather than in Python because a per-event Python loop runs about a
//! million events per second at best, and a plan compares tens of policies over traces of
//! millions of requests; it is not vectorisable in general (an instance's state depends on every
//! earlier request routed to it).

mod sim;
mod stats;

pub use sim::{simulate, simulate_many, Outcome, Start};
pub use stats::{percentile, Summary};

/// One policy to simulate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// Seconds an on-demand instance stays alive with no request in flight before it is reclaimed.
    /// An instance idle since `u` is gone at `u + idle_timeout`, before a request arriving at that
    /// same instant, so 0 means an instance is never reused.
    pub idle_timeout: f64,
    /// Instances warm from the start of the window to its end, never reclaimed (provisioned
    /// concurrency). Requests prefer them.
    pub min_instances: u32,
    /// A ping at `start`, `start + k`, `start + 2k`, ... before `end`. A ping is a zero-length request
    /// no user sees: it goes where a request would go, resetting that idle instance's timer; if no
    /// instance exists it starts one (a cold start no user waits for); if every instance is busy
    /// or starting it does nothing.
    pub keep_warm_interval: Option<f64>,
    /// At most this many instances at once (permanent ones included). A request that finds every
    /// slot taken and the cap reached waits in one FIFO queue for the first slot to free.
    pub max_instances: Option<u32>,
}

/// The requests and the fleet's fixed properties, shared by every policy of a plan.
#[derive(Clone, Copy, Debug)]
pub struct Workload<'a> {
    /// Arrival times in seconds, sorted ascending.
    pub arrivals: &'a [f64],
    /// Each request's service time in seconds (same length as `arrivals`).
    pub service: &'a [f64],
    /// Seconds from an instance's launch until it can serve.
    pub cold_start: f64,
    /// Requests one instance serves at once; each takes its own service time regardless of the
    /// others (the model has no slowdown under load).
    pub concurrency: u32,
    /// The window the plan covers: permanent instances are paid from `start` to `end` (or to the
    /// last completion, if a queue runs past `end`) and pings run in it. On-demand instances are
    /// paid from launch until reclaimed, even past `end`.
    pub start: f64,
    pub end: f64,
}
