//! Hand-made traces whose every number was worked out on paper (the derivations are in the
//! comments), plus invariants on random traces.

use snapload_core::plan::{simulate, simulate_many, Policy, Start, Workload};

const COLD: Start = Start::Cold;
const JOIN: Start = Start::JoinedStart;
const WARM: Start = Start::Warm;
const QUEUE: Start = Start::Queued;

fn workload<'a>(arrivals: &'a [f64], service: &'a [f64], cold: f64, c: u32, end: f64) -> Workload<'a> {
    Workload { arrivals, service, cold_start: cold, concurrency: c, start: 0.0, end }
}

fn policy(idle: f64) -> Policy {
    Policy { idle_timeout: idle, min_instances: 0, keep_warm_interval: None, max_instances: None }
}

const T5: [f64; 5] = [0.0, 1.0, 10.0, 10.5, 20.0];
const S5: [f64; 5] = [1.0; 5];

#[test]
fn idle_timeout_reuses_the_most_recently_idled_instance() {
    // A launched at 0, ready 2, done 3 (idle, gone at 11); B launched at 1, ready 3, done 4 (gone
    // at 12). 10 takes B (most recent), done 11, gone at 19; 10.5 takes A (gone at 11 > 10.5),
    // done 11.5, gone at 19.5. 20: both gone, C launched, ready 22, done 23, gone at 31.
    let o = simulate(&workload(&T5, &S5, 2.0, 1, 21.0), &policy(8.0)).unwrap();
    assert_eq!(o.added, vec![2.0, 2.0, 0.0, 0.0, 2.0]);
    assert_eq!(o.start, vec![COLD, COLD, WARM, WARM, COLD]);
    assert_eq!((o.cold, o.queued, o.launches, o.peak_instances), (3, 0, 3, 2));
    assert_eq!(o.instance_seconds, 19.5 + 18.0 + 11.0);
    assert_eq!(o.latency.max, 2.0);
    assert_eq!(o.latency.p50, 2.0);
}

#[test]
fn max_instances_queues_on_the_busy_instance() {
    // One instance: 0 launches it (ready 2, done 3); 1 queues, starts at 3, done 4; idle at 4,
    // gone at 12. 10 warm, done 11; 10.5 queues until 11, done 12; idle at 12, gone at 20, which
    // is before the arrival at 20: a new launch, done 23, gone at 31.
    let mut p = policy(8.0);
    p.max_instances = Some(1);
    let o = simulate(&workload(&T5, &S5, 2.0, 1, 21.0), &p).unwrap();
    assert_eq!(o.added, vec![2.0, 2.0, 0.0, 0.5, 2.0]);
    assert_eq!(o.start, vec![COLD, QUEUE, WARM, QUEUE, COLD]);
    assert_eq!((o.cold, o.queued, o.launches, o.peak_instances), (2, 2, 2, 1));
    assert_eq!(o.instance_seconds, 20.0 + 11.0);
}

#[test]
fn min_instances_are_preferred_and_paid_over_the_window() {
    // The permanent instance serves 0, 1 (freed at 1, same instant), 10 (busy until 11), 20; the
    // request at 10.5 launches one (ready 12.5, done 13.5, gone at 21.5).
    let mut p = policy(8.0);
    p.min_instances = 1;
    let o = simulate(&workload(&T5, &S5, 2.0, 1, 21.0), &p).unwrap();
    assert_eq!(o.added, vec![0.0, 0.0, 0.0, 2.0, 0.0]);
    assert_eq!((o.cold, o.launches, o.peak_instances), (1, 1, 2));
    assert_eq!(o.instance_seconds, 21.0 + (21.5 - 10.5));
}

#[test]
fn keep_warm_pings_keep_an_instance_alive() {
    // Pings every 2 s from 0 to before 11, timeout 3. The ping at 0 finds nothing and launches P
    // (ready 2); the request at 0 joins it (waits 2). P is done at 3; pings at 4, 6, 8, 10 each
    // reset its timer, so the request at 10 is warm; done 11, gone at 14.
    let arrivals = [0.0, 10.0];
    let service = [1.0, 1.0];
    let mut p = policy(3.0);
    p.keep_warm_interval = Some(2.0);
    let o = simulate(&workload(&arrivals, &service, 2.0, 1, 11.0), &p).unwrap();
    assert_eq!(o.added, vec![2.0, 0.0]);
    assert_eq!(o.start, vec![JOIN, WARM]);
    assert_eq!((o.cold, o.launches, o.ping_launches), (1, 1, 1));
    assert_eq!(o.instance_seconds, 14.0);
    // Without the pings the second request is cold: P would be gone at 6.
    let o = simulate(&workload(&arrivals, &service, 2.0, 1, 11.0), &policy(3.0)).unwrap();
    assert_eq!(o.start, vec![COLD, COLD]);
    assert_eq!(o.instance_seconds, 6.0 + 6.0);
}

#[test]
fn pings_that_find_nothing_pay_cold_starts_nobody_sees() {
    // Pings every 5 s, timeout 3, on T5: 0 launches P1 (request 0 joins it); 1 launches A; 5
    // refreshes A (idle since 4) to 5; 10 finds both gone (P1 at 6, A at 8) and launches B, which
    // request 10 joins; 10.5 launches C; 15 refreshes C (idle since 13.5); 20 finds B (gone 16)
    // and C (gone 18) gone, launches D, which request 20 joins (done 23, gone 26).
    let mut p = policy(3.0);
    p.keep_warm_interval = Some(5.0);
    let o = simulate(&workload(&T5, &S5, 2.0, 1, 21.0), &p).unwrap();
    assert_eq!(o.start, vec![JOIN, COLD, JOIN, COLD, JOIN]);
    assert_eq!(o.added, vec![2.0; 5]);
    assert_eq!((o.launches, o.ping_launches), (5, 3));
    assert_eq!(o.instance_seconds, 6.0 + 7.0 + 6.0 + 7.5 + 6.0);
}

#[test]
fn concurrency_joins_a_starting_instance_and_packs_requests() {
    // Two slots per instance, cold start 2, service 4, timeout 1. 0 launches A (ready 2); 1 joins
    // A (waits 1); 1.5 launches B (ready 3.5). A's two requests end at 6: idle, gone at 7, before
    // the arrival at 7, which takes B's free slot (B busy until 7.5); B's last ends 11, gone 12.
    let arrivals = [0.0, 1.0, 1.5, 7.0];
    let service = [4.0; 4];
    let o = simulate(&workload(&arrivals, &service, 2.0, 2, 11.0), &policy(1.0)).unwrap();
    assert_eq!(o.added, vec![2.0, 1.0, 2.0, 0.0]);
    assert_eq!(o.start, vec![COLD, JOIN, COLD, WARM]);
    assert_eq!((o.cold, o.launches, o.peak_instances), (3, 2, 2));
    assert_eq!(o.instance_seconds, 7.0 + 10.5);
}

#[test]
fn idle_timeout_zero_never_reuses_even_at_the_same_instant() {
    // Service 0 and cold start 0: each request finishes the instant it arrives, and the next one at
    // that same instant still finds no instance.
    let arrivals = [0.0, 0.0, 1.0];
    let service = [0.0; 3];
    let o = simulate(&workload(&arrivals, &service, 0.0, 1, 1.0), &policy(0.0)).unwrap();
    assert_eq!(o.start, vec![COLD; 3]);
    assert_eq!(o.instance_seconds, 0.0);
    // With any timeout, the second request reuses the first one's instance.
    let o = simulate(&workload(&arrivals, &service, 0.0, 1, 1.0), &policy(0.5)).unwrap();
    assert_eq!(o.start, vec![COLD, WARM, COLD]);
}

#[test]
fn bad_arguments_are_errors() {
    let s = [1.0, 1.0];
    let bad = |w: Workload<'_>, p: Policy| simulate(&w, &p).unwrap_err().to_string();
    assert!(bad(workload(&[1.0, 0.0], &s, 1.0, 1, 2.0), policy(1.0)).contains("sorted"));
    assert!(bad(workload(&[0.0, 1.0], &[1.0], 1.0, 1, 2.0), policy(1.0)).contains("service"));
    assert!(bad(workload(&[0.0, f64::NAN], &s, 1.0, 1, 2.0), policy(1.0)).contains("finite"));
    assert!(bad(workload(&[0.0, 1.0], &s, -1.0, 1, 2.0), policy(1.0)).contains("cold start"));
    assert!(bad(workload(&[0.0, 1.0], &s, 1.0, 0, 2.0), policy(1.0)).contains("concurrency"));
    assert!(bad(workload(&[0.0, 1.0], &s, 1.0, 1, 2.0), policy(-1.0)).contains("idle timeout"));
    let mut p = policy(1.0);
    p.keep_warm_interval = Some(0.0);
    assert!(bad(workload(&[0.0, 1.0], &s, 1.0, 1, 2.0), p).contains("keep-warm"));
    let mut p = policy(1.0);
    p.min_instances = 2;
    p.max_instances = Some(1);
    assert!(bad(workload(&[0.0, 1.0], &s, 1.0, 1, 2.0), p).contains("max instances"));
}

/// A small deterministic generator, so the invariant test needs no dependency.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn invariants_on_random_traces_and_many_agrees_with_one() {
    let mut rng = Lcg(7);
    for round in 0..40 {
        let n = 1 + (rng.next() * 300.0) as usize;
        let mut t = 0.0;
        let arrivals: Vec<f64> = (0..n)
            .map(|_| {
                t += (-rng.next().max(1e-12).ln()) * 0.5;
                (t * 4.0_f64).round() / 4.0 // quarter seconds: plenty of exact ties
            })
            .collect();
        let service: Vec<f64> = (0..n).map(|_| (rng.next() * 8.0).round() / 4.0).collect();
        let c = 1 + round % 3;
        let end = arrivals.last().unwrap() + 2.0;
        let w = workload(&arrivals, &service, 1.5, c, end);
        let mut policies = Vec::new();
        for idle in [0.0, 0.5, 3.0] {
            for min in [0, 1] {
                for kw in [None, Some(2.5)] {
                    for max in [None, Some(2)] {
                        policies.push(Policy { idle_timeout: idle, min_instances: min, keep_warm_interval: kw, max_instances: max });
                    }
                }
            }
        }
        let many = simulate_many(&w, &policies, 2).unwrap();
        for (p, m) in policies.iter().zip(&many) {
            let o = simulate(&w, p).unwrap();
            assert!(o.added.iter().all(|&a| a >= 0.0));
            let cold = o.start.iter().filter(|s| matches!(s, Start::Cold | Start::JoinedStart)).count() as u64;
            let queued = o.start.iter().filter(|s| **s == Start::Queued).count() as u64;
            assert_eq!((o.cold, o.queued), (cold, queued));
            for (a, s) in o.added.iter().zip(&o.start) {
                match s {
                    Start::Warm => assert_eq!(*a, 0.0),
                    Start::Cold => assert_eq!(*a, 1.5),
                    Start::JoinedStart => assert!(*a <= 1.5),
                    Start::Queued => {}
                }
            }
            if p.max_instances.is_none() {
                assert_eq!(o.queued, 0);
            } else {
                assert!(o.peak_instances <= 2);
            }
            // Every request's service is paid inside some instance's lifetime.
            let busy: f64 = service.iter().sum::<f64>() / f64::from(c);
            assert!(o.instance_seconds + 1e-9 >= busy, "{} < {busy} with {p:?}", o.instance_seconds);
            assert_eq!(m.latency, o.latency);
            assert_eq!((m.cold, m.queued, m.launches, m.instance_seconds), (o.cold, o.queued, o.launches, o.instance_seconds));
        }
    }
}
