//! Ferrostack's benchmarks.
//!
//! Criterion micro-benchmarks live in `benches/`; side-by-side comparisons (our component
//! and its reference driven by the same client in one run) use [`Summary`] to report
//! medians, tail latencies and ratios, because these shared machines are too noisy for
//! absolute numbers from different runs to mean anything.

use std::fmt;
use std::time::Duration;

/// Order statistics of one set of latency samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// 50th percentile.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl Summary {
    /// Summarises samples (sorted in place); `None` when there are none.
    pub fn of(samples: &mut [Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        Some(Summary {
            count: samples.len(),
            p50: percentile(samples, 50.0),
            p99: percentile(samples, 99.0),
            max: samples[samples.len() - 1],
        })
    }
}

/// Nearest-rank percentile of sorted, non-empty samples.
pub fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    assert!(!sorted.is_empty(), "percentile of no samples");
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `ours / reference` for a rate (higher is better), e.g. IOPS.
pub fn ratio(ours: f64, reference: f64) -> f64 {
    if reference == 0.0 {
        f64::INFINITY
    } else {
        ours / reference
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n={} p50={:.1}us p99={:.1}us max={:.1}us",
            self.count,
            self.p50.as_secs_f64() * 1e6,
            self.p99.as_secs_f64() * 1e6,
            self.max.as_secs_f64() * 1e6
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(v: u64) -> Duration {
        Duration::from_micros(v)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut s: Vec<Duration> = (1..=100).rev().map(us).collect();
        let sum = Summary::of(&mut s).unwrap();
        assert_eq!(sum.count, 100);
        assert_eq!(sum.p50, us(50));
        assert_eq!(sum.p99, us(99));
        assert_eq!(sum.max, us(100));
        assert_eq!(sum.to_string(), "n=100 p50=50.0us p99=99.0us max=100.0us");
    }

    #[test]
    fn small_and_empty_sets() {
        assert_eq!(Summary::of(&mut []), None);
        let one = Summary::of(&mut [us(7)]).unwrap();
        assert_eq!((one.p50, one.p99, one.max), (us(7), us(7), us(7)));
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(90.0, 100.0), 0.9);
        assert!(ratio(1.0, 0.0).is_infinite());
    }
}
