//! Latency percentiles without sorting a million values per policy: `select_nth_unstable` finds
//! each order statistic in linear time.

/// Added-latency distribution of one simulated policy, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// Reorders `values` (it is scratch space). Empty input gives all zeros.
    pub fn of(values: &mut [f64]) -> Summary {
        if values.is_empty() {
            return Summary::default();
        }
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        // Ascending quantiles, so each selection can work on the part above the previous one.
        let [p50, p95, p99, max] = percentiles(values, [0.50, 0.95, 0.99, 1.0]);
        Summary { p50, p95, p99, max, mean }
    }
}

/// The `q` quantile (0..=1) with linear interpolation between order statistics, numpy's default
/// ("linear", type 7), so the Python tests can compare against `numpy.percentile`.
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    percentiles(values, [q])[0]
}

/// Several quantiles, given ascending. Reorders `values`.
fn percentiles<const N: usize>(values: &mut [f64], qs: [f64; N]) -> [f64; N] {
    let mut out = [f64::NAN; N];
    let n = values.len();
    if n == 0 {
        return out;
    }
    // Everything at index >= `done` is >= everything before it (the previous selection's split).
    let mut done = 0;
    for (slot, &q) in out.iter_mut().zip(qs.iter()) {
        debug_assert!((0.0..=1.0).contains(&q));
        let pos = q * (n - 1) as f64;
        let lo = (pos.floor() as usize).min(n - 1);
        let frac = pos - lo as f64;
        assert!(lo >= done, "quantiles must be given in ascending order");
        let (_, &mut at_lo, _) = values[done..].select_nth_unstable_by(lo - done, f64::total_cmp);
        done = lo;
        *slot = if frac > 0.0 && lo + 1 < n {
            let above = values[lo + 1..].iter().copied().fold(f64::INFINITY, f64::min);
            at_lo + (above - at_lo) * frac
        } else {
            at_lo
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_linear_interpolation() {
        // numpy.percentile([1, 2, 3, 4], [50, 95, 99, 100]) = [2.5, 3.85, 3.97, 4.0]
        let mut v = vec![4.0, 1.0, 3.0, 2.0];
        let s = Summary::of(&mut v);
        assert_eq!(s.p50, 2.5);
        assert!((s.p95 - 3.85).abs() < 1e-12);
        assert!((s.p99 - 3.97).abs() < 1e-12);
        assert_eq!(s.max, 4.0);
        assert_eq!(s.mean, 2.5);
    }

    #[test]
    fn single_value_and_empty() {
        assert_eq!(Summary::of(&mut [7.0]), Summary { p50: 7.0, p95: 7.0, p99: 7.0, max: 7.0, mean: 7.0 });
        assert_eq!(Summary::of(&mut []), Summary::default());
    }

    #[test]
    fn agrees_with_a_full_sort() {
        let mut seed = 12345u64;
        for n in [2usize, 3, 10, 101, 1000] {
            let values: Vec<f64> = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((seed >> 33) % 50) as f64 // many ties, as real latencies have (zeros)
                })
                .collect();
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            for q in [0.0, 0.5, 0.95, 0.99, 1.0] {
                let pos = q * (n - 1) as f64;
                let lo = pos.floor() as usize;
                let hi = (lo + 1).min(n - 1);
                let want = sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64);
                let mut scratch = values.clone();
                assert!((percentile(&mut scratch, q) - want).abs() < 1e-9, "n={n} q={q}");
            }
            let mut scratch = values.clone();
            let s = Summary::of(&mut scratch);
            let p99 = {
                let pos = 0.99 * (n - 1) as f64;
                let lo = pos.floor() as usize;
                let hi = (lo + 1).min(n - 1);
                sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
            };
            assert!((s.p99 - p99).abs() < 1e-9);
            assert_eq!(s.max, sorted[n - 1]);
        }
    }
}
