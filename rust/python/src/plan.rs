//! `plan_simulate` / `plan_simulate_detail`: the keep-warm simulation of `snapload plan`. Arrays
//! arrive as float64 buffers (numpy), are copied once (8 bytes a request), and the simulation runs
//! with the GIL released, policies spread over threads.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use snapload_core::plan::{self, Outcome, Policy, Workload};

use crate::gil::without_gil;

/// (idle_timeout, min_instances, keep_warm_interval, max_instances)
type PolicyRow = (f64, u32, Option<f64>, Option<u32>);

/// One policy's results; latencies in seconds.
#[pyclass(name = "PlanOutcome", module = "snapload._native", frozen, get_all)]
pub struct PyOutcome {
    requests: u64,
    cold: u64,
    queued: u64,
    launches: u64,
    ping_launches: u64,
    peak_instances: u32,
    instance_seconds: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

impl From<&Outcome> for PyOutcome {
    fn from(o: &Outcome) -> Self {
        PyOutcome {
            requests: o.requests,
            cold: o.cold,
            queued: o.queued,
            launches: o.launches,
            ping_launches: o.ping_launches,
            peak_instances: o.peak_instances,
            instance_seconds: o.instance_seconds,
            p50: o.latency.p50,
            p95: o.latency.p95,
            p99: o.latency.p99,
            max: o.latency.max,
            mean: o.latency.mean,
        }
    }
}

fn floats(py: Python<'_>, obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<f64>> {
    let buf = PyBuffer::<f64>::get(obj).map_err(|e| PyValueError::new_err(format!("{what}: expected a float64 array ({e})")))?;
    buf.to_vec(py)
}

fn policy((idle_timeout, min_instances, keep_warm_interval, max_instances): PolicyRow) -> Policy {
    Policy { idle_timeout, min_instances, keep_warm_interval, max_instances }
}

/// Summaries of every policy, simulated on `threads` threads (0: one per core).
#[pyfunction]
#[pyo3(signature = (arrivals, service, cold_start, concurrency, start, end, policies, threads=0))]
#[allow(clippy::too_many_arguments)] // mirrors the Workload fields one to one
pub fn plan_simulate(
    py: Python<'_>,
    arrivals: &Bound<'_, PyAny>,
    service: &Bound<'_, PyAny>,
    cold_start: f64,
    concurrency: u32,
    start: f64,
    end: f64,
    policies: Vec<PolicyRow>,
    threads: usize,
) -> PyResult<Vec<PyOutcome>> {
    let arrivals = floats(py, arrivals, "arrivals")?;
    let service = floats(py, service, "service")?;
    let policies: Vec<Policy> = policies.into_iter().map(policy).collect();
    let w = Workload { arrivals: &arrivals, service: &service, cold_start, concurrency, start, end };
    let outcomes = without_gil(py, "plan_simulate", || plan::simulate_many(&w, &policies, threads))?;
    Ok(outcomes.iter().map(PyOutcome::from).collect())
}

/// One policy with its per-request results: (summary, added latencies as float64 bytes, how each
/// request started as uint8 bytes: 0 warm, 1 cold, 2 joined a starting instance, 3 queued).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn plan_simulate_detail<'py>(
    py: Python<'py>,
    arrivals: &Bound<'py, PyAny>,
    service: &Bound<'py, PyAny>,
    cold_start: f64,
    concurrency: u32,
    start: f64,
    end: f64,
    policy_row: PolicyRow,
) -> PyResult<(PyOutcome, Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
    let arrivals = floats(py, arrivals, "arrivals")?;
    let service = floats(py, service, "service")?;
    let p = policy(policy_row);
    let w = Workload { arrivals: &arrivals, service: &service, cold_start, concurrency, start, end };
    let o = without_gil(py, "plan_simulate_detail", || plan::simulate(&w, &p))?;
    let added: Vec<u8> = o.added.iter().flat_map(|a| a.to_ne_bytes()).collect();
    let starts: Vec<u8> = o.start.iter().map(|s| *s as u8).collect();
    Ok((PyOutcome::from(&o), PyBytes::new(py, &added), PyBytes::new(py, &starts)))
}
