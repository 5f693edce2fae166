//! The event loop. Routing, in order of preference, for a request arriving at `t`:
//!
//! 1. a permanent (min-instances) instance with a free slot, the busiest first;
//! 2. a ready on-demand instance that is busy but has a free slot, the busiest first (packing
//!    requests lets the others go idle and be reclaimed);
//! 3. the most recently idled on-demand instance (LIFO, so the oldest idle ones time out);
//! 4. the instance that is starting and still has a free slot (concurrency > 1, or one started by
//!    a ping): the request waits for the rest of its cold start;
//! 5. a new instance, if the cap allows: the request waits the whole cold start;
//! 6. otherwise the FIFO queue, served by the first slot to free.
//!
//! Events at the same instant run in this order: instance ready, request completion, reclaim,
//! ping, arrival. So a slot freed at `t` serves an arrival at `t`, and an idle timeout of 0 means
//! no instance is ever reused.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, BinaryHeap, VecDeque};

use super::stats::Summary;
use super::{Policy, Workload};
use crate::error::{Error, Result};

/// How a request got its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Start {
    /// A warm instance had a free slot: no added latency.
    Warm = 0,
    /// It launched an instance and waited for the whole cold start.
    Cold = 1,
    /// It joined an instance that was already starting and waited for the rest of its cold start.
    JoinedStart = 2,
    /// Every slot was taken and the cap reached: it waited in the queue.
    Queued = 3,
}

/// Everything one policy's simulation measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Per request: seconds from arrival until its service began (cold-start wait or queueing).
    pub added: Vec<f64>,
    /// Per request: how it got its slot.
    pub start: Vec<Start>,
    pub requests: u64,
    /// Requests that waited for a cold start (`Cold` or `JoinedStart`).
    pub cold: u64,
    pub queued: u64,
    /// Instances launched for requests, and for pings that found none.
    pub launches: u64,
    pub ping_launches: u64,
    /// Most instances alive at once (permanent, ready, starting).
    pub peak_instances: u32,
    /// Instance lifetimes summed: on-demand ones from launch to reclaim (cold start and idle time
    /// included), permanent ones over the whole window (and past its end while queued requests
    /// still run).
    pub instance_seconds: f64,
    pub latency: Summary,
}

impl Outcome {
    fn summarise(&mut self) {
        let mut scratch = self.added.clone();
        self.latency = Summary::of(&mut scratch);
    }
}

/// Simulate one policy, keeping the per-request results.
pub fn simulate(w: &Workload<'_>, p: &Policy) -> Result<Outcome> {
    validate_workload(w)?;
    validate_policy(w, p)?;
    let mut out = Sim::new(w, p).run();
    out.summarise();
    Ok(out)
}

/// Simulate many policies on `threads` threads (0: one per core), keeping only the summaries
/// (per-request vectors are dropped as each policy finishes, so memory does not grow with the
/// number of policies).
pub fn simulate_many(w: &Workload<'_>, policies: &[Policy], threads: usize) -> Result<Vec<Outcome>> {
    validate_workload(w)?;
    for p in policies {
        validate_policy(w, p)?;
    }
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .clamp(1, policies.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<Outcome>> = vec![None; policies.len()];
    let done = std::sync::Mutex::new(&mut results);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(p) = policies.get(i) else { break };
                let mut out = Sim::new(w, p).run();
                out.latency = Summary::of(&mut out.added);
                out.added = Vec::new();
                out.start = Vec::new();
                done.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(out);
            });
        }
    });
    Ok(results.into_iter().map(|o| o.expect("every policy simulated")).collect())
}

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

fn validate_workload(w: &Workload<'_>) -> Result<()> {
    if w.arrivals.len() != w.service.len() {
        return Err(invalid(format!("{} arrivals but {} service times", w.arrivals.len(), w.service.len())));
    }
    if let Some(i) = w.arrivals.iter().position(|t| !t.is_finite()) {
        return Err(invalid(format!("arrival {i} is not a finite number ({})", w.arrivals[i])));
    }
    if let Some(i) = w.arrivals.windows(2).position(|p| p[1] < p[0]) {
        return Err(invalid(format!("arrivals must be sorted: arrival {} ({}) is before arrival {i} ({})", i + 1, w.arrivals[i + 1], w.arrivals[i])));
    }
    if let Some(i) = w.service.iter().position(|s| !(s.is_finite() && *s >= 0.0)) {
        return Err(invalid(format!("service time {i} must be a finite number >= 0, got {}", w.service[i])));
    }
    if !(w.cold_start.is_finite() && w.cold_start >= 0.0) {
        return Err(invalid(format!("cold start must be a finite number of seconds >= 0, got {}", w.cold_start)));
    }
    if w.concurrency == 0 {
        return Err(invalid("concurrency must be at least 1".into()));
    }
    if !(w.start.is_finite() && w.end.is_finite() && w.end >= w.start) {
        return Err(invalid(format!("window must be finite with end >= start, got [{}, {}]", w.start, w.end)));
    }
    Ok(())
}

/// Pings per window above which a keep-warm interval is surely a mistake (and the loop would
/// spend its time on them).
const MAX_PINGS: f64 = 1e8;

fn validate_policy(w: &Workload<'_>, p: &Policy) -> Result<()> {
    if !(p.idle_timeout.is_finite() && p.idle_timeout >= 0.0) {
        return Err(invalid(format!("idle timeout must be a finite number of seconds >= 0, got {}", p.idle_timeout)));
    }
    if let Some(k) = p.keep_warm_interval {
        if !(k.is_finite() && k > 0.0) {
            return Err(invalid(format!("keep-warm interval must be a finite number of seconds > 0, got {k}")));
        }
        if (w.end - w.start) / k > MAX_PINGS {
            return Err(invalid(format!("keep-warm interval {k} s gives more than {MAX_PINGS:e} pings over the window")));
        }
    }
    if let Some(m) = p.max_instances {
        if m == 0 || m < p.min_instances {
            return Err(invalid(format!("max instances ({m}) must be at least 1 and at least min instances ({})", p.min_instances)));
        }
    }
    Ok(())
}

struct Instance {
    launched: f64,
    ready_at: f64,
    /// When its last request finished (or a ping refreshed it); meaningful while idle.
    idle_since: f64,
    active: u32,
    permanent: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Ready = 0, // before completions at the same instant: a zero-length request finishing at the
    Done = 1,  // instant its instance becomes ready must find it ready
}

struct Event {
    time: f64,
    kind: Kind,
    id: u32,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> Ordering {
        // Times are validated finite, so total_cmp is the numeric order.
        self.time.total_cmp(&other.time).then(self.kind.cmp(&other.kind)).then(self.id.cmp(&other.id))
    }
}

struct Sim<'a> {
    w: &'a Workload<'a>,
    p: &'a Policy,
    cap: u32,
    instances: Vec<Instance>,
    free_ids: Vec<u32>,
    alive: u32,
    events: BinaryHeap<Reverse<Event>>,
    /// Ready on-demand instances with no request, oldest idle first.
    idle: VecDeque<u32>,
    /// (active, id) of ready on-demand instances with 0 < active < concurrency.
    partial: BTreeSet<(u32, u32)>,
    /// (active, id) of permanent instances with a free slot.
    permanent_free: BTreeSet<(u32, u32)>,
    /// The starting instance that still has a free slot; there is at most one, because a new
    /// instance is launched only when no starting instance has room, and a ping launches one only
    /// when none exists.
    filling: Option<u32>,
    queue: VecDeque<usize>,
    /// When the last request finished.
    last_done: f64,
    out: Outcome,
}

impl<'a> Sim<'a> {
    fn new(w: &'a Workload<'a>, p: &'a Policy) -> Sim<'a> {
        let n = w.arrivals.len();
        let mut sim = Sim {
            w,
            p,
            cap: p.max_instances.unwrap_or(u32::MAX),
            instances: Vec::new(),
            free_ids: Vec::new(),
            alive: 0,
            events: BinaryHeap::new(),
            idle: VecDeque::new(),
            partial: BTreeSet::new(),
            permanent_free: BTreeSet::new(),
            filling: None,
            queue: VecDeque::new(),
            last_done: f64::NEG_INFINITY,
            out: Outcome { added: vec![0.0; n], start: vec![Start::Warm; n], requests: n as u64, ..Outcome::default() },
        };
        for _ in 0..p.min_instances {
            let id = sim.new_instance(w.start, w.start, true);
            sim.permanent_free.insert((0, id));
        }
        sim
    }

    fn run(mut self) -> Outcome {
        let arrivals = self.w.arrivals;
        let mut i = 0;
        let mut pings = 0u64;
        loop {
            let next_arrival = arrivals.get(i).copied().unwrap_or(f64::INFINITY);
            let next_ping = self.ping_time(pings);
            let now = next_arrival.min(next_ping);
            while let Some(Reverse(ev)) = self.events.peek() {
                if ev.time > now {
                    break;
                }
                let Reverse(ev) = self.events.pop().expect("peeked");
                match ev.kind {
                    Kind::Ready => self.ready(ev.id, ev.time),
                    Kind::Done => self.done(ev.id, ev.time),
                }
            }
            self.expire(now);
            if now == f64::INFINITY {
                break;
            }
            if next_ping <= next_arrival {
                self.ping(next_ping);
                pings += 1;
            } else {
                self.arrive(i, next_arrival);
                i += 1;
            }
        }
        debug_assert!(self.queue.is_empty() && self.partial.is_empty() && self.idle.is_empty());
        debug_assert_eq!(self.alive, self.p.min_instances);
        // Permanent instances are paid over the window, and past its end while a backlog of
        // queued requests still runs on them.
        let until = self.w.end.max(self.last_done);
        self.out.instance_seconds += f64::from(self.p.min_instances) * (until - self.w.start);
        self.out
    }

    fn ping_time(&self, k: u64) -> f64 {
        match self.p.keep_warm_interval {
            // start + k * interval rather than a running sum, so no rounding error accumulates.
            Some(interval) => {
                let t = self.w.start + k as f64 * interval;
                if t < self.w.end {
                    t
                } else {
                    f64::INFINITY
                }
            }
            None => f64::INFINITY,
        }
    }

    fn new_instance(&mut self, launched: f64, ready_at: f64, permanent: bool) -> u32 {
        let inst = Instance { launched, ready_at, idle_since: ready_at, active: 0, permanent };
        let id = match self.free_ids.pop() {
            Some(id) => {
                self.instances[id as usize] = inst;
                id
            }
            None => {
                self.instances.push(inst);
                (self.instances.len() - 1) as u32
            }
        };
        self.alive += 1;
        self.out.peak_instances = self.out.peak_instances.max(self.alive);
        id
    }

    /// Launch an instance that will hold `active` requests when it becomes ready.
    fn launch(&mut self, now: f64, active: u32) -> u32 {
        let id = self.new_instance(now, now + self.w.cold_start, false);
        self.instances[id as usize].active = active;
        if active < self.w.concurrency {
            self.events.push(Reverse(Event { time: now + self.w.cold_start, kind: Kind::Ready, id }));
        }
        // else: it stays full until a request finishes, after it is ready, so its Ready event would
        // do nothing. Skipping it matters: with concurrency 1 most launches are of this kind.
        id
    }

    /// Reclaim every idle on-demand instance whose timeout has passed by `now`, at the instant it
    /// passed.
    fn expire(&mut self, now: f64) {
        while let Some(&id) = self.idle.front() {
            let inst = &self.instances[id as usize];
            let gone = inst.idle_since + self.p.idle_timeout;
            if gone > now {
                break;
            }
            self.out.instance_seconds += gone - inst.launched;
            self.idle.pop_front();
            self.free_ids.push(id);
            self.alive -= 1;
        }
    }

    fn ready(&mut self, id: u32, now: f64) {
        if self.filling == Some(id) {
            self.filling = None;
        }
        let active = self.instances[id as usize].active;
        if active == 0 {
            self.instances[id as usize].idle_since = now;
            self.idle.push_back(id);
        } else if active < self.w.concurrency {
            self.partial.insert((active, id));
        }
    }

    fn done(&mut self, id: u32, now: f64) {
        self.last_done = now;
        // A queue exists only while every slot of every instance is taken, so the slot freed here
        // goes straight to the first waiting request and the instance stays full.
        if let Some(j) = self.queue.pop_front() {
            self.out.queued += 1;
            self.begin(j, id, now, now - self.w.arrivals[j], Start::Queued);
            return;
        }
        let c = self.w.concurrency;
        let inst = &mut self.instances[id as usize];
        let was = inst.active;
        inst.active -= 1;
        let set = if inst.permanent { &mut self.permanent_free } else { &mut self.partial };
        if was < c {
            set.remove(&(was, id));
        }
        if inst.active == 0 && !inst.permanent {
            inst.idle_since = now;
            self.idle.push_back(id);
        } else {
            set.insert((was - 1, id));
        }
    }

    /// Request `i` starts service on instance `id` at `begin`, `added` seconds after it arrived (its
    /// slot is already counted). `added` is passed rather than recomputed so that a full cold
    /// start adds exactly `cold_start`, not `(t + cold_start) - t` with its rounding error.
    fn begin(&mut self, i: usize, id: u32, begin: f64, added: f64, how: Start) {
        self.out.added[i] = added;
        self.out.start[i] = how;
        self.events.push(Reverse(Event { time: begin + self.w.service[i], kind: Kind::Done, id }));
    }

    /// Take the busiest instance with a free slot out of `set`, count the new request on it.
    fn take_busiest(&mut self, permanent: bool) -> Option<u32> {
        let c = self.w.concurrency;
        let set = if permanent { &mut self.permanent_free } else { &mut self.partial };
        let (active, id) = set.pop_last()?;
        if active + 1 < c {
            set.insert((active + 1, id));
        }
        self.instances[id as usize].active += 1;
        Some(id)
    }

    fn arrive(&mut self, i: usize, now: f64) {
        let c = self.w.concurrency;
        if let Some(id) = self.take_busiest(true).or_else(|| self.take_busiest(false)) {
            return self.begin(i, id, now, 0.0, Start::Warm);
        }
        if let Some(id) = self.idle.pop_back() {
            self.instances[id as usize].active = 1;
            if c > 1 {
                self.partial.insert((1, id));
            }
            return self.begin(i, id, now, 0.0, Start::Warm);
        }
        if let Some(id) = self.filling {
            let inst = &mut self.instances[id as usize];
            inst.active += 1;
            let ready_at = inst.ready_at;
            if inst.active == c {
                self.filling = None;
            }
            self.out.cold += 1;
            return self.begin(i, id, ready_at, ready_at - now, Start::JoinedStart);
        }
        if self.alive < self.cap {
            let id = self.launch(now, 1);
            self.out.launches += 1;
            self.out.cold += 1;
            if c > 1 {
                self.filling = Some(id);
            }
            return self.begin(i, id, now + self.w.cold_start, self.w.cold_start, Start::Cold);
        }
        self.queue.push_back(i);
    }

    /// A ping goes where a request would (see the module comment), costs nothing there, and
    /// matters only when that is an idle instance (its timer restarts) or nowhere at all.
    fn ping(&mut self, now: f64) {
        if !self.permanent_free.is_empty() || !self.partial.is_empty() {
            return; // a busy or permanent instance: nothing to keep alive
        }
        if let Some(&id) = self.idle.back() {
            // The idle deque stays ordered by idle_since: `now` is later than every entry.
            self.instances[id as usize].idle_since = now;
        } else if self.filling.is_none() && self.alive == 0 {
            // (With a starting instance that has room the ping joins it: nothing to do. With every
            // instance full, they are alive anyway.)
            let id = self.launch(now, 0);
            self.out.launches += 1;
            self.out.ping_launches += 1;
            self.filling = Some(id);
        }
    }
}
